"""Where the web app's texts are, for `pybabel extract` (babel.cfg) and the catalogue test.

Babel's own extractors find `_("...")`, `ngettext(...)` and `N_("...")`; these add what the
app passes in other ways:

- Python: `Msg("...")`, `translate("...")`, audit actions (`web.record("...")`), the health
  model's `State(name, rank, "summary")` and `Condition(name, state, "text")`, the wizard's
  step titles (`TITLES`), and the network form's messages (`ERR_*` and
  `errors["field"] = "..."`);
- templates: the labels of the `field(name, "Label", ...)` macro and its `help="..."`.

Never imported by the running app. Babel applies a keyword's argument positions only for
the keywords it was given, so the messages found here are handed on as plain messages (and
plural ones as `ngettext`'s pair).
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import sys
from collections.abc import Collection, Iterator, Mapping
from typing import IO, Any

from babel.messages.extract import DEFAULT_KEYWORDS, extract

KEYWORDS: dict[str, Any] = {
    **DEFAULT_KEYWORDS,
    "Msg": None,
    "translate": None,
    "ntranslate": (1, 2),
    "ptranslate": ((1, "c"), 2),
    "NC_": ((1, "c"), 2),
    "record": None,
    "State": (3,),
    "Condition": (3,),
    "field": (2,),
}
# Names whose value is a text shown (or a table of them): step titles, form messages, the
# audit log's and the wizard's health reasons.
TABLES = ("TITLES", "ERR_IPV4", "ERR_RESERVED", "LOST", "SETUP_NOT_FINISHED")
HELP = re.compile(r'\bhelp="((?:[^"\\]|\\.)+)"')

Found = tuple[int, str | None, str | tuple[str, ...], list[str]]


def _relay(results: Iterator[tuple[int, Any, list[str], str | None]]) -> Iterator[Found]:
    """Messages as a keyword Babel always knows would give them (its defaults)."""
    for lineno, message, comments, context in results:
        plural = isinstance(message, tuple)
        if context is None:
            yield lineno, ("ngettext" if plural else None), message, comments
        else:
            texts = (context, *message) if plural else (context, message)
            yield lineno, ("npgettext" if plural else "pgettext"), texts, comments


def _constants(node: ast.Assign) -> Iterator[ast.Constant]:
    """The texts of `TITLES = {...: "text"}`, `ERR_X = "text"` and `errors[k] = "text"`."""
    value = node.value
    for target in node.targets:
        if isinstance(target, ast.Name) and target.id in TABLES:
            values = value.values if isinstance(value, ast.Dict) else [value]
            yield from (v for v in values if isinstance(v, ast.Constant))
        elif (
            isinstance(target, ast.Subscript)
            and isinstance(target.value, ast.Name)
            and target.value.id == "errors"
            and isinstance(value, ast.Constant)
        ):
            yield value


def python(
    fileobj: IO[bytes],
    keywords: Collection[str],
    comment_tags: Collection[str],
    options: Mapping[str, Any],
) -> Iterator[Found]:
    source = fileobj.read()
    tree = ast.parse(source)
    literals = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
    # Babel says so on stderr for every f-string among a keyword call's arguments; here they
    # are audit details (`record("action", detail=f"...")`), never a text to translate.
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        found = list(
            extract(
                "python", io.BytesIO(source), KEYWORDS, comment_tags=comment_tags, options=options
            )
        )
    for line in said.getvalue().splitlines(keepends=True):
        if "Skipping f-string" not in line:
            sys.stderr.write(line)
    for lineno, funcname, message, comments in _relay(iter(found)):
        # Babel's tokenizer joins every string of an argument: `record("a" if x else "b")`
        # gives "ab". Only a text that is one literal of the source is a text.
        if all(t in literals for t in (message if isinstance(message, tuple) else (message,))):
            yield lineno, funcname, message, comments
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for constant in _constants(node):
                if isinstance(constant.value, str) and constant.value:
                    yield constant.lineno, None, constant.value, []


def templates(
    fileobj: IO[bytes],
    keywords: Collection[str],
    comment_tags: Collection[str],
    options: Mapping[str, Any],
) -> Iterator[Found]:
    source = fileobj.read()
    found = extract(
        "jinja2.ext:babel_extract",
        io.BytesIO(source),
        KEYWORDS,
        comment_tags=comment_tags,
        options=options,
    )
    yield from _relay(found)
    text = source.decode(str(options.get("encoding", "utf-8")))
    for match in HELP.finditer(text):
        yield text.count("\n", 0, match.start()) + 1, None, match.group(1), []
