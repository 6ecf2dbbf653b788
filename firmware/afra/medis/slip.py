"""The printable patient slip: one self-contained HTML page with the Medis code and its QR link.

Every text field comes from DICOM headers or configuration and is escaped. The page loads
nothing from the network, fits an A6 sheet or an 80 mm receipt roll, and never shows the birth
date: the code and the birth date together open the study, so the slip carries only one of them.

It is written in the language it is given (`SlipLanguage`: the web page's, whose catalogue
holds the slip's texts): right to left in Persian, the study date in the reader's calendar
(Solar Hijri in Persian) and the patient's name as people write it, both through
`medix.l10n`, as the hub's patient page shows them. The code and the link stay Latin and left
to right.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import segno

from afra.medis.codes import format_code, parse_code
from medix import l10n

# Content is 68 mm wide: inside an 80 mm roll's ~72 mm print width and centred on A6 (105 mm).
# No @page size: forcing A6 would make receipt drivers scale or cut the slip, and vice versa.
_CSS = """
@page { margin: 4mm; }
* { box-sizing: border-box; }
html { background: #fff; color: #000; }
body { margin: 0 auto; width: 68mm; padding: 2mm 0;
  font: 10pt/1.35 "DejaVu Sans", "Vazirmatn", Tahoma, Arial, sans-serif; }
h1 { font-size: 12pt; margin: 0 0 2mm; text-align: center; }
.name { font-size: 12pt; font-weight: bold; margin: 0; }
.study { margin: 0 0 3mm; }
.label { font-size: 8pt; margin: 2mm 0 0; }
/* Capitals and letter spacing are for Latin: spacing would break Persian letters apart. */
html[dir="ltr"] .label { text-transform: uppercase; letter-spacing: 0.05em; }
.code { font: bold 17pt/1.2 "DejaVu Sans Mono", "Liberation Mono", Consolas, monospace;
  letter-spacing: 0.04em; text-align: center; white-space: nowrap; margin: 1mm 0 2mm;
  padding: 1.5mm 0; border: 0.4mm solid #000; }
.qr { text-align: center; margin: 2mm 0; }
.qr svg { width: 36mm; height: 36mm; }
.url { font-size: 9pt; word-break: break-all; text-align: center; margin: 0 0 2mm; }
.url a { color: #000; text-decoration: none; }
.note { font-size: 9pt; border-top: 0.3mm dashed #000; padding-top: 2mm; margin: 0; }
@media print {
  body { padding: 0; }
  .slip { break-inside: avoid; page-break-inside: avoid; }
}
"""


def _same(text: str) -> str:
    return text


@dataclass(frozen=True)
class SlipLanguage:
    """The slip's language: its code ("en", "fa") and how its texts are translated (the
    English text in, the reader's out)."""

    code: str = "en"
    gettext: Callable[[str], str] = _same


ENGLISH = SlipLanguage()


def patient_link(hub_patient_url: str, code: str) -> str:
    """The hub link the QR code carries: the patient page with the canonical code filled in."""
    parts = urlsplit(hub_patient_url)
    # The link is printed and scanned by phones: only a real web address may go into it.
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"hub_patient_url must be an http(s) URL, got {hub_patient_url!r}")
    separator = "&" if parts.query else "?"
    return f"{hub_patient_url}{separator}code={parse_code(code)}"


def _qr_svg(link: str, title: str) -> str:
    # make_qr, not make: a micro QR could be chosen for short links, and phones rarely read them.
    qr = segno.make_qr(link, error="m")
    return qr.svg_inline(scale=4, omitsize=True, title=title)


def render_slip(
    *,
    code: str,
    patient_name: str,
    study_date: str,
    study_description: str,
    center_name: str,
    hub_patient_url: str,
    language: SlipLanguage = ENGLISH,
) -> str:
    """A complete HTML5 page for the reception printer; InvalidCodeError on a bad code.

    `patient_name` is a DICOM person name (Family^Given), shown Given Family; `study_date` a
    DICOM date (YYYYMMDD), shown in the reader's calendar (any other text as it is)."""
    link = patient_link(hub_patient_url, code)
    grouped = format_code(code)
    esc = html.escape
    _ = language.gettext
    lang = language.code
    study = " &middot; ".join(
        part
        for part in (
            f"<bdi>{esc(l10n.dicom_date(study_date, lang))}</bdi>" if study_date.strip() else "",
            f'<bdi dir="auto">{esc(study_description)}</bdi>' if study_description else "",
        )
        if part
    )
    # Translated here, not inside the page's f-string, where extraction cannot see them.
    title = _("Medis code")
    patient_label = _("Patient")
    code_label = _("Your Medis code")
    qr = _qr_svg(link, _("QR code: open the hub patient page"))
    note = _(
        "To see your images, scan the QR code or open the address above and enter this code "
        "together with your birth date. Keep this slip private."
    )
    return f"""<!DOCTYPE html>
<html lang="{esc(lang)}" dir="{l10n.direction(lang)}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<main class="slip">
<h1 dir="auto">{esc(center_name)}</h1>
<p class="label">{esc(patient_label)}</p>
<p class="name" dir="auto">{esc(l10n.person_name(patient_name))}</p>
<p class="study">{study}</p>
<p class="label">{esc(code_label)}</p>
<p class="code" dir="ltr">{esc(grouped)}</p>
<div class="qr">{qr}</div>
<p class="url" dir="ltr"><a href="{esc(link)}">{esc(hub_patient_url)}</a></p>
<p class="note">{esc(note)}</p>
</main>
</body>
</html>
"""
