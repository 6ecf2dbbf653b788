"""English and Persian. The English text is the key; `PERSIAN` holds its translation.

A page is Persian when the operator chose it (kept in the session) or, before any choice,
when the browser prefers it. Technical values (addresses, AE titles, codes, UIDs) stay in
Latin script and left-to-right inside Persian pages (`dir="ltr"` on their elements).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import request, session

from afra_web.catalogue import PERSIAN
from afra_web.forms import Msg

LANGUAGES = ("en", "fa")


def language() -> str:
    chosen = session.get("lang")
    if chosen in LANGUAGES:
        return str(chosen)
    best = request.accept_languages.best_match(LANGUAGES, default="en")
    return best or "en"


def translate(text: str | Msg, **params: Any) -> str:
    if isinstance(text, Msg):
        params = {**text.params, **params}
        text = text.text
    params = {k: translate(v) if isinstance(v, Msg) else v for k, v in params.items()}
    if language() == "fa":
        text = PERSIAN.get(text, text)
    return text.format(**params) if params else text


def fmt_age(seconds: float | int | None) -> str:
    if seconds is None or seconds <= 0:
        return "—"
    seconds = int(seconds)
    if seconds < 60:
        return translate("{n} s", n=seconds)
    if seconds < 3600:
        return translate("{n} min", n=seconds // 60)
    if seconds < 86400:
        return translate("{h} h {m} min", h=seconds // 3600, m=seconds % 3600 // 60)
    return translate("{n} days", n=seconds // 86400)


def fmt_bytes(n: int | float | None) -> str:
    value = float(n or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def fmt_time(at: float | None) -> str:
    if not at:
        return "—"
    # The box's own time zone (a clinic reads local time); the zone is named.
    return datetime.fromtimestamp(float(at), UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def notify(message: Msg) -> None:
    """A notice for the next page shown (kept in the session, translated when shown)."""
    notices = list(session.get("notices", []))[-4:]
    notices.append([message.text, dict(message.params)])
    session["notices"] = notices


def take_notices() -> list[str]:
    notices = session.pop("notices", [])
    out = []
    for item in notices if isinstance(notices, list) else []:
        try:
            text, params = item
            out.append(translate(Msg(str(text), dict(params))))
        except (TypeError, ValueError, KeyError):
            continue
    return out


def fmt_date(dicom_date: str) -> str:
    """A DICOM date (YYYYMMDD) as YYYY-MM-DD; anything else as it is."""
    d = dicom_date.strip()
    return f"{d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) == 8 and d.isdigit() else d
