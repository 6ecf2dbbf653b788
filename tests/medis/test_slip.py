"""The patient slip: escaped fields, grouped code, inline QR, nothing fetched, no birth date."""

from __future__ import annotations

import inspect
import random
import re

import pytest
import segno

from afra.medis.codes import InvalidCodeError, format_code, new_code
from afra.medis.slip import patient_link, render_slip

HUB_URL = "https://hub.medix.example/patient"
BIRTH_DATE = "1980-02-29"


@pytest.fixture
def code() -> str:
    return new_code(random.Random(5).randrange)


def slip(code: str, **overrides: str) -> str:
    fields = {
        "code": code,
        "patient_name": "Jane Doe",
        "study_date": "2024-05-03",
        "study_description": "MR knee left",
        "center_name": "Day Imaging Center",
        "hub_patient_url": HUB_URL,
    }
    fields.update(overrides)
    return render_slip(**fields)


def test_is_a_complete_html5_document(code: str) -> None:
    page = slip(code)
    assert page.startswith("<!DOCTYPE html>")
    assert '<meta charset="utf-8">' in page
    assert page.rstrip().endswith("</html>")
    assert "@page" in page and "@media print" in page


def test_shows_fields_and_grouped_code(code: str) -> None:
    page = slip(code)
    for text in ("Jane Doe", "2024-05-03", "MR knee left", "Day Imaging Center", HUB_URL):
        assert text in page
    assert format_code(code) in page
    assert "birth date" in page  # the patient is told they need it


def test_accepts_the_code_as_typed(code: str) -> None:
    assert format_code(code) in slip(format_code(code).lower())


def test_qr_is_inline_svg_of_the_hub_link(code: str) -> None:
    page = slip(code)
    link = f"{HUB_URL}?code={code}"
    assert f'href="{link}"' in page
    assert page.count("<svg") == 1
    expected = segno.make_qr(link, error="m").svg_inline(
        scale=4, omitsize=True, title="QR code: open the hub patient page"
    )
    assert expected in page


def test_link_keeps_an_existing_query(code: str) -> None:
    assert patient_link(HUB_URL + "?lang=fa", code) == f"{HUB_URL}?lang=fa&code={code}"


def test_nothing_is_fetched_from_elsewhere(code: str) -> None:
    page = slip(code)
    assert re.findall(r"https?://[^\s\"'<>?]*", page) == [HUB_URL] * 2  # href and shown text
    assert "<script" not in page and "<link" not in page and "<img" not in page
    assert "url(" not in page and "@import" not in page and "src=" not in page


def test_hostile_fields_are_escaped(code: str) -> None:
    hostile = "<script>alert(1)</script>"
    page = slip(
        code,
        patient_name=hostile,
        study_description='" onload="x',
        center_name="A & B <b>",
        study_date="<i>",
    )
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot; onload=&quot;x" in page
    assert "A &amp; B &lt;b&gt;" in page
    assert "<i>" not in page


def test_hostile_url_cannot_break_out(code: str) -> None:
    page = slip(code, hub_patient_url='https://hub.example/p"><script>x</script>')
    assert "<script" not in page
    for bad in ("javascript:alert(1)", "hub.example/p", "data:text/html,x", ""):
        with pytest.raises(ValueError, match="http"):
            slip(code, hub_patient_url=bad)


def test_persian_name_renders_right_to_left(code: str) -> None:
    name = "زهرا محمدی"
    page = slip(code, patient_name=name)
    assert f'<p class="name" dir="auto">{name}</p>' in page


def test_invalid_code_is_refused() -> None:
    with pytest.raises(InvalidCodeError):
        slip("2222-2222-2223")


def test_birth_date_is_never_on_the_slip(code: str) -> None:
    assert not any("birth" in name for name in inspect.signature(render_slip).parameters)
    page = slip(code)
    assert BIRTH_DATE not in page and "1980" not in page
    assert not re.search(r"born|DOB|date of birth:", page, re.IGNORECASE)
