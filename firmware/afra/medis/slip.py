"""The printable patient slip: one self-contained HTML page with the Medis code and its QR link.

Every text field comes from DICOM headers or configuration and is escaped. The page loads
nothing from the network, fits an A6 sheet or an 80 mm receipt roll, and never shows the birth
date: the code and the birth date together open the study, so the slip carries only one of them.
"""

from __future__ import annotations

import html
from urllib.parse import urlsplit

import segno

from afra.medis.codes import format_code, parse_code

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
.label { font-size: 8pt; margin: 2mm 0 0; text-transform: uppercase; letter-spacing: 0.05em; }
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


def patient_link(hub_patient_url: str, code: str) -> str:
    """The hub link the QR code carries: the patient page with the canonical code filled in."""
    parts = urlsplit(hub_patient_url)
    # The link is printed and scanned by phones: only a real web address may go into it.
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"hub_patient_url must be an http(s) URL, got {hub_patient_url!r}")
    separator = "&" if parts.query else "?"
    return f"{hub_patient_url}{separator}code={parse_code(code)}"


def _qr_svg(link: str) -> str:
    # make_qr, not make: a micro QR could be chosen for short links, and phones rarely read them.
    qr = segno.make_qr(link, error="m")
    return qr.svg_inline(scale=4, omitsize=True, title="QR code: open the hub patient page")


def render_slip(
    *,
    code: str,
    patient_name: str,
    study_date: str,
    study_description: str,
    center_name: str,
    hub_patient_url: str,
) -> str:
    """A complete HTML5 page for the reception printer; InvalidCodeError on a bad code."""
    link = patient_link(hub_patient_url, code)
    grouped = format_code(code)
    esc = html.escape
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Medis code</title>
<style>{_CSS}</style>
</head>
<body>
<main class="slip">
<h1 dir="auto">{esc(center_name)}</h1>
<p class="label">Patient</p>
<p class="name" dir="auto">{esc(patient_name)}</p>
<p class="study" dir="auto">{esc(study_date)} &middot; {esc(study_description)}</p>
<p class="label">Your Medis code</p>
<p class="code" dir="ltr">{esc(grouped)}</p>
<div class="qr">{_qr_svg(link)}</div>
<p class="url" dir="ltr"><a href="{esc(link)}">{esc(hub_patient_url)}</a></p>
<p class="note">To see your images, scan the QR code or open the address above and enter this
code together with your birth date. Keep this slip private.</p>
</main>
</body>
</html>
"""
