"""English and Persian, through gettext catalogues (Babel).

The English text is the message id; `translations/fa/LC_MESSAGES/messages.po` holds its
Persian, compiled to the `.mo` beside it (both committed: the box is offline and installed
from a wheel, which ships the `.mo`). `babel.cfg` at the top of the repository says where the
texts are found; `afra_web.extract` finds the ones passed through tables and template
macros, and tests/web/test_catalogue.py fails on a text without Persian, a lost
{placeholder} or a `.mo` older than its `.po`. Messages use `str.format` placeholders
(`{n}`), filled after translation. To change a text:

    .venv/bin/pybabel extract -F babel.cfg -o /tmp/messages.pot \\
        web-setup/afra_web firmware/afra/medis/slip.py firmware/afra/health/model.py
    .venv/bin/pybabel update -i /tmp/messages.pot -d web-setup/afra_web/translations
    (translate the new entries in messages.po)
    .venv/bin/pybabel compile -d web-setup/afra_web/translations

A page is Persian when the operator chose it (kept in the session) or, before any choice,
when the browser prefers it. Numbers in Persian pages are in Persian digits (`medix.l10n`),
dates in the Solar Hijri calendar; a number and its unit are joined by a no-break space.
Technical values (addresses, AE titles, ports in their fields, codes, UIDs) stay in Latin
script and left to right.
"""

from __future__ import annotations

import gettext
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from babel.support import Translations
from flask import has_request_context, request, session

from afra_web.forms import Msg
from medix import l10n

LANGUAGES = ("en", "fa")
DOMAIN = "messages"
TRANSLATIONS = Path(__file__).parent / "translations"
NBSP = l10n.NBSP


def N_(text: str) -> str:
    """Marks a text for extraction where it is only data here (translated when shown)."""
    return text


def NC_(context: str, text: str) -> str:
    """N_ for a word whose translation depends on what it is about (`pgettext`)."""
    return text


# Words the templates translate that come from data rather than from a literal: marked here
# so that extraction puts them in the catalogue.
DATA_WORDS = (
    # health states and LED names and patterns (the health model and hardware/panel.toml)
    N_("healthy"),
    N_("degraded"),
    N_("failed"),
    N_("unclaimed"),
    N_("setup_open"),
    N_("booting"),
    N_("updating"),
    N_("locating"),
    N_("unknown"),
    N_("health"),
    N_("activity"),
    N_("uplink"),
    N_("steady"),
    N_("slow"),
    N_("fast"),
    N_("off"),
    N_("wink"),
    N_("double"),
    N_("dips"),
    N_("wig"),
    N_("wag"),
    N_("flicker"),
    N_("chase_1"),
    N_("chase_2"),
    N_("chase_3"),
    # study states and network modes
    N_("received"),
    N_("complete"),
    N_("queued"),
    N_("uploading"),
    N_("delivered"),
    N_("dhcp"),
    N_("static"),
    # download job states ("failed" is a failed job, not a box out of order)
    NC_("download job", "running"),
    NC_("download job", "saved"),
    NC_("download job", "failed"),
    # audit actions recorded through a variable, and the web app's own health reasons
    N_("claim"),
    N_("signed in"),
    N_("hub step skipped"),
    N_("hub step kept"),
    N_("disk at its floor: new studies are refused"),
    N_("hub unreachable"),
    N_("not enrolled with a hub"),
)


@cache
def catalogue(lang: str) -> gettext.NullTranslations:
    """The compiled catalogue of a language (English: none, the ids are English)."""
    if lang not in LANGUAGES or lang == "en":
        return gettext.NullTranslations()
    return Translations.load(str(TRANSLATIONS), [lang], DOMAIN)


def language() -> str:
    if not has_request_context():
        return "en"
    chosen = session.get("lang")
    if chosen in LANGUAGES:
        return str(chosen)
    best = request.accept_languages.best_match(LANGUAGES, default="en")
    return best or "en"


def _shown(value: Any, lang: str) -> Any:
    """A parameter as a reader of `lang` reads it: counts in the language's digits, messages
    translated; anything else (addresses, versions, reasons from elsewhere) as it is."""
    if isinstance(value, Msg):
        return translate(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return l10n.format_number(value, lang, group=False)
    return value


def translate(text: str | Msg, **params: Any) -> str:
    """`_` in the templates: the text in the page's language, its {placeholders} filled."""
    if isinstance(text, Msg):
        params = {**text.params, **params}
        text = text.text
    lang = language()
    shown = catalogue(lang).gettext(text) if text else text
    if not params:
        return shown
    return shown.format(**{k: _shown(v, lang) for k, v in params.items()})


def ntranslate(singular: str, plural: str, n: int, **params: Any) -> str:
    """`ngettext` in the templates: the form the language's plural rule picks for `n`, with
    {n} (and any other placeholder) filled."""
    lang = language()
    shown = catalogue(lang).ngettext(singular, plural, n)
    values = {k: _shown(v, lang) for k, v in params.items()}
    return shown.format(**values, n=l10n.format_number(n, lang))


def ptranslate(context: str, text: str, **params: Any) -> str:
    """`pgettext` in the templates: `translate` for a word that means something else
    elsewhere (a download job's "failed" is not the box's)."""
    lang = language()
    shown = catalogue(lang).pgettext(context, text) if text else text
    if not params:
        return shown
    return shown.format(**{k: _shown(v, lang) for k, v in params.items()})


def fmt_number(value: float | None, decimals: int | None = None) -> str:
    if value is None:
        return "—"
    return l10n.format_number(value, language(), decimals=decimals)


def _unit(text: str) -> str:
    """A short measure that must not break across lines (number and unit together)."""
    return NBSP.join(text.split())


def fmt_percent(value: float | None) -> str:
    return _unit(translate("{n}%", n=round(value or 0)))


def fmt_age(seconds: float | None) -> str:
    if seconds is None or seconds <= 0:
        return "—"
    seconds = int(seconds)
    if seconds < 60:
        return _unit(translate("{n} s", n=seconds))
    if seconds < 3600:
        return _unit(translate("{n} min", n=seconds // 60))
    if seconds < 86400:
        return _unit(translate("{h} h {m} min", h=seconds // 3600, m=seconds % 3600 // 60))
    return _unit(ntranslate("{n} day", "{n} days", seconds // 86400))


BYTE_UNITS = (N_("{n} B"), N_("{n} KB"), N_("{n} MB"), N_("{n} GB"), N_("{n} TB"))


def fmt_bytes(n: float | None) -> str:
    value = float(n or 0)
    for i, unit in enumerate(BYTE_UNITS):
        if value < 1000 or i == len(BYTE_UNITS) - 1:
            number = fmt_number(value, 0 if i == 0 else 1)
            return _unit(translate(unit).format(n=number))
        value /= 1000
    raise AssertionError("unreachable")


def fmt_time(at: float | None) -> str:
    """A moment in the box's own time zone (a clinic reads local time), the zone named:
    Gregorian in English, Solar Hijri in Persian."""
    if not at:
        return "—"
    moment = datetime.fromtimestamp(float(at), UTC).astimezone()
    return l10n.format_datetime(moment, language())


def fmt_date(dicom_date: str) -> str:
    """A DICOM date (YYYYMMDD) as a date in the reader's calendar; anything else as it is."""
    return l10n.dicom_date(dicom_date or "", language())


def person_name(value: str) -> str:
    """A DICOM person name (Family^Given) as people write it (Given Family)."""
    return l10n.person_name(value or "")


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


def template_helpers() -> dict[str, Any]:
    """What the templates use to put texts, numbers, dates and names."""
    return {
        "_": translate,
        "ngettext": ntranslate,
        "pgettext": ptranslate,
        "fmt_number": fmt_number,
        "fmt_percent": fmt_percent,
        "fmt_age": fmt_age,
        "fmt_bytes": fmt_bytes,
        "fmt_time": fmt_time,
        "fmt_date": fmt_date,
        "person_name": person_name,
        "take_notices": take_notices,
    }
