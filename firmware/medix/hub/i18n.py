"""The reference hub's patient and physician pages in English and Persian.

Its own gettext catalogue (domain "hub": `translations/fa/LC_MESSAGES/hub.po`, compiled to the
`.mo` beside it, both committed and shipped as package data), extracted from the hub's
templates and Python with the repository's `babel.cfg`. The English text is the message id;
`{placeholders}` are filled after translation, and a text is escaped before a placeholder
holding markup is put in it (so a template may pass `<code>` for a placeholder).

The language: the one chosen with the pages' switch (`?lang=fa`, then kept in a cookie), or
before any choice the browser's (Accept-Language), or English. Numbers, dates and names come
from `medix.l10n`, as the box's slip writes them: a patient reads the same name and date on
the slip and here. A Persian patient types the birth date in the Solar Hijri calendar.

The hub's refusals are written in English where they are raised (they are also the API's
problem details); `error_text` gives the pages a known refusal in the reader's language,
its numbers taken from the English detail, and any other as it is.
"""

from __future__ import annotations

import gettext as _gettext
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode

from babel.support import Translations
from flask import Flask, request
from markupsafe import Markup, escape
from werkzeug.wrappers import Response

from medix import l10n
from medix.hub.errors import HubError

LANGUAGES = ("en", "fa")
DOMAIN = "hub"
TRANSLATIONS = Path(__file__).parent / "translations"
LANG_COOKIE = "medix-lang"
LANG_COOKIE_AGE = 365 * 86400


def N_(text: str) -> str:
    """Marks a text for extraction where it is only data here (translated when shown)."""
    return text


@cache
def catalogue(lang: str) -> _gettext.NullTranslations:
    if lang not in LANGUAGES or lang == "en":
        return _gettext.NullTranslations()
    return Translations.load(str(TRANSLATIONS), [lang], DOMAIN)


def _cookie_name() -> str:
    return f"__Host-{LANG_COOKIE}" if request.is_secure else LANG_COOKIE


def chosen() -> str | None:
    """The language the reader chose with the switch (now or before), if any."""
    asked = request.args.get("lang")
    if asked in LANGUAGES:
        return asked
    kept = request.cookies.get(_cookie_name())
    return kept if kept in LANGUAGES else None


def language() -> str:
    return chosen() or request.accept_languages.best_match(LANGUAGES, default="en") or "en"


def _fill(text: str, params: Mapping[str, Any], lang: str) -> Markup:
    values = {
        k: l10n.format_number(v, lang, group=False)
        if isinstance(v, int | float) and not isinstance(v, bool)
        else v
        for k, v in params.items()
    }
    return escape(text).format(**values) if values else escape(text)


def gettext(text: str, **params: Any) -> Markup:
    """`_` in the templates: the text in the page's language, escaped, its placeholders
    filled (escaped too, unless Markup)."""
    lang = language()
    return _fill(catalogue(lang).gettext(text), params, lang)


def ngettext(singular: str, plural: str, n: int, **params: Any) -> Markup:
    lang = language()
    return _fill(catalogue(lang).ngettext(singular, plural, n), {**params, "n": n}, lang)


# -- numbers, dates and names ----------------------------------------------------------------


def number(value: float) -> str:
    return l10n.format_number(value, language())


def dicom_date(value: str) -> str:
    return l10n.dicom_date(value or "", language()) or "-"


def person_name(value: str) -> str:
    return l10n.person_name(value or "")


def birth_date(typed: str) -> str:
    """The birth date the form sent, as the hub compares it (YYYYMMDD): the date field's
    ISO date, or a date a Persian reader typed (Solar Hijri, any digits). Text that is no date
    is handed on as typed (its digits), to be refused as a wrong date."""
    day = l10n.read_date(typed, language())
    return day.strftime("%Y%m%d") if day is not None else l10n.ascii_digits(typed)


# -- the hub's refusals, as the pages show them ----------------------------------------------


class ErrorText(NamedTuple):
    title: str
    detail: str


# Titles of refusals the patient and physician pages show (raised in medix.hub.access,
# medix.hub.physicians, medix.hub.core; HTTP's own from werkzeug).
TITLES = (
    N_("Code and birth date needed"),
    N_("Too many wrong tries"),
    N_("Code or birth date wrong"),
    N_("Code expired"),
    N_("Too many requests"),
    N_("No such download"),
    N_("Link expired"),
    N_("No such study"),
    N_("Form expired"),
    N_("Too many wrong sign-ins"),
    N_("Sign-in refused"),
    N_("Internal error"),
    N_("Not Found"),
    N_("Method Not Allowed"),
)
# Details that are always the same words.
DETAILS = (
    N_("enter both, as printed"),
    N_("ask your imaging center for the study"),
    N_("this connection is sending requests too fast; wait a moment"),
    N_("the link is not valid"),
    N_("open the study page again for a fresh link"),
    N_("nothing is stored under this code"),
    N_("the sign-in form was not this hub's; try again"),
    N_("sign out from the inbox page"),
    N_("The login or the password is wrong."),
    N_("the hub logged the details"),
)


def _counted(detail: str) -> Markup | None:
    """A detail that carries a number, in the reader's language (None: not one of them)."""
    if m := re.fullmatch(
        r"check the code on your slip and your birth date; (\d+) tries left", detail
    ):
        return ngettext(
            "check the code on your slip and your birth date; {n} try left",
            "check the code on your slip and your birth date; {n} tries left",
            int(m[1]),
        )
    if m := re.fullmatch(
        r"after (\d+) wrong tries this code \(or this connection\) is locked for (\d+) hours; "
        r"ask your imaging center if you need help sooner",
        detail,
    ):
        return ngettext(
            "after {tries} wrong tries this code (or this connection) is locked for {n} hour; "
            "ask your imaging center if you need help sooner",
            "after {tries} wrong tries this code (or this connection) is locked for {n} hours; "
            "ask your imaging center if you need help sooner",
            int(m[2]),
            tries=int(m[1]),
        )
    if m := re.fullmatch(
        r"too many wrong codes or links from this connection; try again in (\d+) minutes", detail
    ):
        return ngettext(
            "too many wrong codes or links from this connection; try again in {n} minute",
            "too many wrong codes or links from this connection; try again in {n} minutes",
            int(m[1]),
        )
    if m := re.fullmatch(r"wait (\d+) minutes and try again", detail):
        return ngettext(
            "wait {n} minute and try again", "wait {n} minutes and try again", int(m[1])
        )
    return None


def error_text(error: HubError) -> ErrorText:
    """A refusal as the page shows it. English pages show the hub's own words."""
    lang = language()
    if lang == "en":
        return ErrorText(error.title, error.detail)
    words = catalogue(lang)
    title = words.gettext(error.title) if error.title in TITLES else error.title
    detail = error.detail
    shown = words.gettext(detail) if detail in DETAILS else _counted(detail) or detail
    return ErrorText(title, shown)


# -- the application -------------------------------------------------------------------------


def _switch() -> dict[str, str]:
    """Where each language's link of the switch goes: this page, in that language."""
    code = {"code": request.args["code"]} if "code" in request.args else {}
    return {lang: f"{request.path}?{urlencode({**code, 'lang': lang})}" for lang in LANGUAGES}


def install(app: Flask) -> None:
    """The pages' language: template helpers, and the switch's choice kept in a cookie."""
    app.jinja_env.globals.update(_=gettext, ngettext=ngettext, error_text=error_text)
    app.jinja_env.filters.update(dicom_date=dicom_date, person_name=person_name, number=number)

    @app.context_processor
    def _language() -> dict[str, Any]:
        lang = language()
        return {"lang": lang, "dir": l10n.direction(lang), "switch": _switch()}

    @app.after_request
    def _keep_choice(response: Response) -> Response:
        if response.mimetype != "text/html":
            return response
        asked = request.args.get("lang")
        if asked in LANGUAGES:
            response.set_cookie(
                _cookie_name(),
                asked,
                max_age=LANG_COOKIE_AGE,
                path="/",
                secure=request.is_secure,
                httponly=True,
                samesite="Lax",
            )
        response.headers["Content-Language"] = language()
        response.vary.update(("Accept-Language", "Cookie"))
        return response
