# ruff: noqa: RUF002 - Persian digits and signs look like Latin to ruff
"""How numbers, dates and people's names are written for a reader of a given language.

Shared by everything a person reads: the box's setup pages (`afra_web.i18n`), the patient
slip (`afra.medis.slip`) and the reference hub's patient and physician pages
(`medix.hub.i18n`), so that a patient sees the same name and the same date on the slip and on
the hub. Texts are not here: each of those has its own gettext catalogue.

- Numbers: Babel's CLDR symbols for the language (Persian: `٬` groups, `٫` decimals), written
  in the language's own digits (Persian: ۰-۹). Babel gives the symbols but keeps Latin digits,
  so the digits are mapped here from the locale's default numbering system.
- Dates: Gregorian `YYYY-MM-DD` in English, Solar Hijri (`jdatetime`) `YYYY/M/D` in Persian,
  the calendar Iranian clinics and patients use. DICOM dates (DA, `YYYYMMDD`) and times (TM,
  `HHMMSS.FFFFFF`) are shown as dates and times, never raw.
- Names: DICOM person names (PN, `Family^Given^Middle^Prefix^Suffix`) in the order people
  write them: prefix, given, middle, family, suffix.
"""

from __future__ import annotations

import datetime as dt
from functools import cache

import jdatetime  # type: ignore[import-untyped]
from babel import Locale, UnknownLocaleError
from babel.numbers import format_decimal

__all__ = [
    "JALALI",
    "ascii_digits",
    "dicom_date",
    "dicom_time",
    "digits",
    "direction",
    "format_date",
    "format_datetime",
    "format_number",
    "person_name",
    "read_date",
]

# Languages whose readers count in the Solar Hijri calendar.
JALALI = frozenset({"fa"})
# CLDR numbering systems' digits (the ones our languages use).
_DIGITS = {
    "latn": "0123456789",
    "arab": "٠١٢٣٤٥٦٧٨٩",
    "arabext": "۰۱۲۳۴۵۶۷۸۹",
}
NBSP = "\u00a0"


@cache
def _locale(lang: str) -> Locale:
    try:
        return Locale.parse(lang or "en")
    except (ValueError, UnknownLocaleError):
        return Locale.parse("en")


@cache
def _digit_table(lang: str) -> dict[int, int]:
    system = _locale(lang).default_numbering_system
    return str.maketrans("0123456789", _DIGITS.get(system, _DIGITS["latn"]))


def digits(text: str, lang: str) -> str:
    """`text` with its Latin digits in the language's own (۰-۹ in Persian)."""
    return text.translate(_digit_table(lang))


def direction(lang: str) -> str:
    """ "rtl" or "ltr", as CLDR writes the language."""
    return "rtl" if _locale(lang).text_direction == "rtl" else "ltr"


def format_number(
    value: float, lang: str, *, decimals: int | None = None, group: bool = True
) -> str:
    """A count or a measure in the language's symbols and digits, in groups of thousands
    unless `group` is false (a number inside a sentence, which may be a port). `decimals`
    fixes the digits after the point (None: as many as the value has, at most three)."""
    pattern = None if decimals is None else "#,##0" + ("." + "0" * decimals if decimals else "")
    text = format_decimal(
        value,
        format=pattern,
        locale=_locale(lang),
        group_separator=group,
        numbering_system="default",
    )
    return digits(text, lang)


def _plain(value: int, lang: str, width: int = 0) -> str:
    """An integer with no grouping (a year, a day, an hour), optionally zero-padded."""
    return digits(str(value).rjust(width, "0"), lang)


def format_date(day: dt.date, lang: str) -> str:
    """2026-11-20 in English, ۱۴۰۵/۸/۲۹ (Solar Hijri) in Persian."""
    if lang in JALALI:
        j = jdatetime.date.fromgregorian(date=day)
        return "/".join(_plain(part, lang) for part in (j.year, j.month, j.day))
    return day.isoformat()


def format_datetime(moment: dt.datetime, lang: str, *, zone: bool = True) -> str:
    """The date (as `format_date`) and the time to the second, then the zone's name when
    `moment` has one and `zone` is true. The zone's name stays Latin (+0330, UTC)."""
    clock = ":".join(_plain(part, lang, 2) for part in (moment.hour, moment.minute, moment.second))
    text = f"{format_date(moment.date(), lang)} {clock}"
    name = moment.strftime("%Z") if zone and moment.tzinfo is not None else ""
    return f"{text} {name}" if name else text


def _dicom_day(value: str) -> dt.date | None:
    text = value.strip()
    if len(text) != 8 or not text.isascii() or not text.isdigit():
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def dicom_date(value: str, lang: str) -> str:
    """A DICOM date (DA, YYYYMMDD) as a date in the reader's calendar; a value already
    written as a date, or anything else, as it is (an empty one as "")."""
    day = _dicom_day(value)
    return value.strip() if day is None else format_date(day, lang)


def dicom_time(value: str, lang: str) -> str:
    """A DICOM time (TM, HHMMSS.FFFFFF, minutes and seconds optional) as HH:MM or HH:MM:SS;
    anything else as it is."""
    text = value.strip().split(".")[0]
    if not text.isascii() or not text.isdigit() or len(text) not in (2, 4, 6):
        return value.strip()
    parts = [int(text[i : i + 2]) for i in range(0, len(text), 2)]
    if parts[0] > 23 or any(p > 59 for p in parts[1:]):
        return value.strip()
    if len(parts) == 1:
        parts.append(0)
    return ":".join(_plain(p, lang, 2) for p in parts)


def ascii_digits(text: str) -> str:
    """`text` with every decimal digit (Persian, Arabic-Indic, ...) as its Latin one."""
    return "".join(str(int(c)) if c.isdecimal() and not c.isascii() else c for c in text)


def read_date(text: str, lang: str) -> dt.date | None:
    """A date as a person types it: year, month and day in that order, separated by anything
    but digits (or eight digits together), in any digits. A reader of a Solar Hijri language
    types a Solar Hijri date; a year above 1700 is taken as Gregorian whoever types it."""
    plain = ascii_digits(text).strip()
    if len(plain) == 8 and plain.isdigit():
        parts = [plain[:4], plain[4:6], plain[6:]]
    else:
        parts = [p for p in "".join(c if c.isdigit() else " " for c in plain).split()]
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    year, month, day = (int(p) for p in parts)
    try:
        if lang in JALALI and year < 1700:
            gregorian: dt.date = jdatetime.date(year, month, day).togregorian()
            return gregorian
        return dt.date(year, month, day)
    except ValueError:
        return None


def person_name(value: str) -> str:
    """A DICOM person name as people write it: "Doe^Jane^M^Dr" -> "Dr Jane M Doe".

    Only the first (alphabetic) component group counts; empty components are dropped; a
    name without `^` is taken as already written out."""
    group = value.split("=")[0]
    if "^" not in group:
        return " ".join(group.split())
    parts = [" ".join(p.split()) for p in group.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    return " ".join(p for p in (prefix, given, middle, family, suffix) if p)
