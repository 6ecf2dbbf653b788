"""The gettext catalogues' checks, shared by the box's (tests/web/test_catalogue.py) and the
hub's (tests/medix/test_hub_pages_i18n.py): extraction as `pybabel extract -F babel.cfg` does
it, then what a catalogue must be for every text to reach a Persian reader whole."""

from __future__ import annotations

import gettext
import io
import re
from pathlib import Path

from babel.messages.catalog import Catalog, Message
from babel.messages.extract import (
    DEFAULT_KEYWORDS,
    check_and_call_extract_file,
    extract_from_dir,
)
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.plurals import get_plural
from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parent.parent
BABEL_CFG = ROOT / "babel.cfg"
PLACEHOLDER = re.compile(r"{(\w+)}")


def extract(*sources: str) -> Catalog:
    """The messages in `sources` (folders or files, relative to the repository), found as
    `pybabel extract -F babel.cfg <sources>` run from the repository finds them."""
    with BABEL_CFG.open(encoding="utf-8") as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)
    catalog = Catalog()
    for source in sources:
        path = ROOT / source
        if path.is_file():
            found = check_and_call_extract_file(
                str(path),
                method_map,
                options_map,
                callback=None,
                keywords=DEFAULT_KEYWORDS,
                comment_tags=(),
                strip_comment_tags=False,
                dirpath=str(ROOT),
            )
            for _name, lineno, message, _comments, context in found:
                catalog.add(message, locations=[(source, lineno)], context=context)
        else:
            found_in_dir = extract_from_dir(
                str(path), method_map, options_map, keywords=DEFAULT_KEYWORDS
            )
            for name, lineno, message, _comments, context in found_in_dir:
                catalog.add(message, locations=[(f"{source}/{name}", lineno)], context=context)
    return catalog


def read(po: Path, locale: str) -> Catalog:
    with po.open("rb") as handle:
        return read_po(handle, locale=locale)


def _key(message: Message) -> tuple[str | None, str]:
    msgid = message.id if isinstance(message.id, str) else message.id[0]
    return message.context, msgid


def _forms(message: Message) -> list[str]:
    return list(message.string) if isinstance(message.string, tuple | list) else [message.string]


def untranslated(extracted: Catalog, catalogue: Catalog) -> list[str]:
    """Texts that would reach the reader in English: missing, empty (any plural form) or
    fuzzy; and singular/plural mismatches."""
    known = {_key(m): m for m in catalogue if m.id}
    out = []
    for message in extracted:
        if not message.id:
            continue
        entry = known.get(_key(message))
        label = repr(message.id) + (f" (context {message.context!r})" if message.context else "")
        if entry is None:
            out.append(f"not in the catalogue: {label}")
        elif entry.fuzzy or not all(_forms(entry)):
            out.append(f"not translated: {label}")
        elif isinstance(message.id, tuple) != isinstance(entry.id, tuple):
            out.append(f"plural in one and not the other: {label}")
    return out


def stale(extracted: Catalog, catalogue: Catalog) -> list[str]:
    """Catalogue entries no source shows any more (left from a text since changed)."""
    shown = {_key(m) for m in extracted if m.id}
    return [repr(m.id) for m in catalogue if m.id and _key(m) not in shown]


def lost_placeholders(catalogue: Catalog) -> list[str]:
    out = []
    for message in catalogue:
        if not message.id:
            continue
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        wanted = set().union(*(PLACEHOLDER.findall(i) for i in ids))
        for form in _forms(message):
            if set(PLACEHOLDER.findall(form)) != wanted:
                out.append(f"{message.id!r}: {form!r}")
    return out


def plural_header_problems(catalogue: Catalog, locale: str) -> list[str]:
    rule = get_plural(locale)
    expected = f"nplurals={rule.num_plurals}; plural={rule.plural_expr};"
    header = dict(catalogue.mime_headers).get("Plural-Forms", "")
    return [] if header == expected else [f"Plural-Forms is {header!r}, not {expected!r}"]


def mo_matches_po(po: Path, mo: Path, locale: str) -> bool:
    """The committed .mo says what its .po says (it was compiled after the last edit)."""
    compiled = io.BytesIO()
    write_mo(compiled, read(po, locale))
    compiled.seek(0)
    with mo.open("rb") as handle:
        shipped = gettext.GNUTranslations(handle)
    fresh = gettext.GNUTranslations(compiled)
    return fresh._catalog == shipped._catalog  # type: ignore[attr-defined]
