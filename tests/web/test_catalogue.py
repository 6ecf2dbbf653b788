"""Every text the box's pages and its patient slip can show has its Persian, whole.

The texts are extracted as `pybabel extract -F babel.cfg` extracts them (Babel's extractors
and afra_web.extract); the Persian is the committed gettext catalogue and the .mo compiled
from it, which is what the wheel ships."""

from __future__ import annotations

import fnmatch
import tomllib

import pytest
from babel.messages.catalog import Catalog

from afra import health
from afra.store.lifecycle import StudyState
from afra_web import i18n
from tests.catalogues import (
    ROOT,
    extract,
    lost_placeholders,
    mo_matches_po,
    plural_header_problems,
    read,
    stale,
    untranslated,
)

SOURCES = ("web-setup/afra_web", "firmware/afra/medis/slip.py", "firmware/afra/health/model.py")
PO = i18n.TRANSLATIONS / "fa" / "LC_MESSAGES" / "messages.po"
MO = PO.with_suffix(".mo")


@pytest.fixture(scope="module")
def extracted() -> Catalog:
    return extract(*SOURCES)


@pytest.fixture(scope="module")
def persian() -> Catalog:
    return read(PO, "fa")


def ids(catalog: Catalog) -> set[str]:
    return {m.id if isinstance(m.id, str) else m.id[0] for m in catalog if m.id}


def test_extraction_finds_the_texts_of_every_kind(extracted: Catalog) -> None:
    found = ids(extracted)
    for text in (
        "Set up this box",  # _() in a template
        "Your name",  # the field() macro's label
        "Kept in the audit log with what you do here.",  # its help=
        "This password is wrong.",  # Msg(...)
        "code revealed",  # an audit action: web.record(...)
        "Admin password",  # the wizard's TITLES
        "Enter an IPv4 address such as 192.168.1.50.",  # network.py's ERR_IPV4
        "The gateway must be in the same network as the address.",  # errors[...] = "..."
        "working normally",  # the health model's State(..., summary)
        "the PACS does not answer C-ECHO",  # and Condition(..., text)
        "Your Medis code",  # the patient slip
        "{n} study delivered",  # ngettext in a template
        "{n} day",  # ntranslate in Python
        "healthy",  # N_ data words
    ):
        assert text in found, text
    assert ("download job", "failed") in {(m.context, m.id) for m in extracted if m.context}
    # Babel joins every string of one argument; afra_web.extract keeps only real literals.
    assert "hub step skippedhub step kept" not in found
    assert "" not in found


def test_every_text_has_its_persian(extracted: Catalog, persian: Catalog) -> None:
    missing = untranslated(extracted, persian)
    assert not missing, "\n".join(missing)


def test_the_catalogue_holds_no_text_the_pages_no_longer_show(
    extracted: Catalog, persian: Catalog
) -> None:
    left = stale(extracted, persian)
    assert not left, "run pybabel update (see babel.cfg): " + ", ".join(left)


def test_translations_keep_their_placeholders(persian: Catalog) -> None:
    lost = lost_placeholders(persian)
    assert not lost, "\n".join(lost)


def test_persian_plurals_follow_babels_rule(persian: Catalog) -> None:
    assert not plural_header_problems(persian, "fa")
    assert persian.num_plurals == 2 and not persian.fuzzy
    assert persian.check() is not None  # Babel's own checks run
    assert not [(m.id, errors) for m, errors in persian.check()]


def test_the_shipped_mo_is_compiled_from_the_po() -> None:
    assert mo_matches_po(PO, MO, "fa"), (
        "compile it: .venv/bin/pybabel compile -d web-setup/afra_web/translations"
    )


def test_the_wheel_ships_the_compiled_catalogue() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["afra_web"]
    relative = MO.relative_to(ROOT / "web-setup" / "afra_web").as_posix()
    assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative
    source = PO.relative_to(ROOT / "web-setup" / "afra_web").as_posix()
    assert not any(fnmatch.fnmatch(source, p) for p in patterns)  # the .mo is enough


def test_data_words_cover_the_states_the_pages_show() -> None:
    """States shown through a variable: the study lifecycle, the health model."""
    marked = set(i18n.DATA_WORDS)
    assert {s.value for s in StudyState} <= marked
    assert set(health.STATES) <= marked
