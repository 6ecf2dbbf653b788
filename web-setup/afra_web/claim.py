"""Claiming the box (setup code or the button's setup window), signing in and out, language.

Before a password exists, only the claim proves who may set the box up: the setup code from
the label or a press of the box's button (its setup window). Afterwards the admin password
signs in; the setup window still does, for a technician who lost the password, and takes them
to the password step. Guesses of the code and the password share one persisted lockout,
counted per client (state.Lockout); the button's setup window needs no guess.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from flask import Blueprint, g, jsonify, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from afra.medis.codes import InvalidCodeError, parse_code
from afra_web import security
from afra_web.context import current
from afra_web.forms import Errors, Msg
from afra_web.i18n import LANGUAGES, fmt_age
from afra_web.state import Guess
from afra_web.status import setup_window

bp = Blueprint("claim", __name__)

NAME_MAX = 80


def next_page() -> str:
    progress = current().state.progress()
    if progress.wizard_open:
        return url_for("wizard.step", name=progress.next_step)
    return url_for("dashboard.index")


def _sign_in(name: str, by: str, action: str) -> None:
    web = current()
    security.sign_in(name, by, web.now(), web.state.progress().epoch, web.state.sessions)
    web.record(action, actor=name, detail=f"by {by}")


def _name(errors: Errors) -> str:
    name = " ".join(request.form.get("name", "").split())[:NAME_MAX]
    if not name:
        errors["name"] = Msg("Enter your name: the audit log records who did what.")
    return name


def _guess(errors: Errors, field: str, check: Callable[[], bool], wrong: Msg) -> Guess:
    """Count and check one guess of the code or password from this client; the reason it
    failed goes into `errors`."""
    guess = current().state.lockout.guess(request.remote_addr or "", check)
    if guess.wait:
        errors[field] = Msg(
            "Too many wrong attempts. Try again in {t}.", {"t": fmt_age(guess.wait)}
        )
    elif not guess.right:
        errors[field] = wrong
    return guess


@bp.get("/")
def root() -> Response:
    if g.operator is not None:
        return redirect(next_page())
    if current().state.has_password:
        return redirect(url_for(".login"))
    return redirect(url_for(".claim"))


def _window_ready(errors: Errors, window: dict[str, Any]) -> bool:
    """Whether the button's setup window may be used now (else the reason is in `errors`)."""
    if not window["open"]:
        errors["window"] = Msg(
            "The setup window is not open. Hold the button on the box for about "
            "3 seconds until the light blinks, then press Continue again."
        )
        return False
    return not errors


@bp.route("/claim", methods=["GET", "POST"])
def claim() -> Any:
    web = current()
    if web.state.has_password:
        return redirect(url_for(".login"))
    if g.operator is not None:
        return redirect(next_page())
    errors: Errors = {}
    window = setup_window(web.appliance)
    if request.method == "POST":
        name = _name(errors)
        if request.form.get("action") == "window":
            if _window_ready(errors, window):
                _sign_in(name, "button", "claim")
                web.state.mark_claimed()
                return redirect(next_page())
        elif not errors:
            code = request.form.get("code", "")
            if not web.state.has_setup_code:
                errors["code"] = Msg("This box has no setup code. Use the button on the box.")
            else:
                try:
                    parse_code(code)  # a typo is explained and not counted as a guess
                except InvalidCodeError:
                    errors["code"] = Msg(
                        "This is not a setup code. Compare it with the label: 12 letters "
                        "and digits, such as ABCD-EFGH-JKMN."
                    )
                else:
                    check = partial(web.state.check_setup_code, code)
                    guess = _guess(errors, "code", check, Msg("This setup code is wrong."))
                    if guess.right:
                        _sign_in(name, "setup code", "claim")
                        web.state.mark_claimed()
                        return redirect(next_page())
                    if guess.checked:
                        web.record("claim refused", actor=name, detail="wrong setup code")
    return (
        render_template(
            "claim/claim.html",
            errors=errors,
            form=request.form,
            window=window,
            has_code=web.state.has_setup_code,
        ),
        400 if errors else 200,
    )


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    web = current()
    if not web.state.has_password:
        return redirect(url_for(".claim"))
    if g.operator is not None:
        return redirect(next_page())
    errors: Errors = {}
    window = setup_window(web.appliance)
    if request.method == "POST":
        name = _name(errors)
        if request.form.get("action") == "window":
            if _window_ready(errors, window):
                _sign_in(name, "button", "signed in")
                web.state.reopen()
                web.record("setup reopened", actor=name, detail="by the button")
                return redirect(url_for("wizard.step", name="password"))
        elif not errors:
            check = partial(web.state.check_password, request.form.get("password", ""))
            guess = _guess(errors, "password", check, Msg("This password is wrong."))
            if guess.right:
                _sign_in(name, "password", "signed in")
                return redirect(next_page())
            if guess.checked:
                web.record("sign-in refused", actor=name, detail="wrong password")
    return (
        render_template("claim/login.html", errors=errors, form=request.form, window=window),
        400 if errors else 200,
    )


@bp.get("/api/setup-window")
def window() -> Response:
    """Public: only whether the button's setup window is open (the claim page polls it)."""
    return jsonify(setup_window=setup_window(current().appliance))


@bp.post("/logout")
def logout() -> Response:
    if g.operator is not None:
        current().record("signed out")
    lang = session.get("lang")
    security.sign_out(current().state.sessions)
    if lang:
        session["lang"] = lang
    return redirect(url_for(".root"))


@bp.post("/lang")
def lang() -> Response:
    chosen = request.form.get("lang", "")
    if chosen in LANGUAGES:
        session["lang"] = chosen
    target = request.form.get("next", "/")
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        target = "/"
    return redirect(target)
