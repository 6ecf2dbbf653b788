"""Every English text the web app can show has its Persian translation."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import afra_web
from afra_web.catalogue import PERSIAN

PACKAGE = Path(afra_web.__file__).parent
# Words the templates translate that come from data rather than from a literal.
DATA_WORDS = (
    # health states and LED names and patterns (issue 5's model and panel)
    "healthy",
    "degraded",
    "failed",
    "unclaimed",
    "setup_open",
    "booting",
    "updating",
    "locating",
    "unknown",
    "health",
    "activity",
    "uplink",
    "steady",
    "slow",
    "fast",
    "off",
    "wink",
    "double",
    "dips",
    "wig",
    "wag",
    "flicker",
    "chase_1",
    "chase_2",
    "chase_3",
    # study states and network modes
    "received",
    "complete",
    "queued",
    "uploading",
    "delivered",
    "dhcp",
    "static",
    # job states
    "running",
    "saved",
    # audit actions recorded through a variable, and the web app's own health reasons
    "claim",
    "signed in",
    "hub step skipped",
    "hub step kept",
    "disk at its floor: new studies are refused",
    "hub unreachable",
    "not enrolled with a hub",
)


def _translated_call(func: ast.expr) -> bool:
    """Msg(...), translate(...), _(...) and the audit log's record("action", ...)."""
    if isinstance(func, ast.Name):
        return func.id in ("Msg", "translate", "_")
    return isinstance(func, ast.Attribute) and func.attr == "record"


def english_texts() -> set[str]:
    found: set[str] = set(DATA_WORDS)
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _translated_call(node.func):
                first = node.args[0] if node.args else None
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found.add(first.value)
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id in ("TITLES", "ERR_IPV4", "ERR_RESERVED")
                for t in node.targets
            ):
                for value in ast.walk(node.value):
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        found.add(value.value)
    for path in (PACKAGE / "templates").rglob("*.html"):
        body = path.read_text(encoding="utf-8")
        found.update(re.findall(r'_\("((?:[^"\\]|\\.)*)"', body))
        found.update(re.findall(r"_\('((?:[^'\\]|\\.)*)'", body))
        found.update(re.findall(r'field\("\w+", "([^"]+)"', body))
        found.update(re.findall(r'help="([^"]+)"', body))
    network = (PACKAGE / "network.py").read_text(encoding="utf-8")
    found.update(re.findall(r'errors\["\w+"\] = "([^"]+)"', network))
    found.update(health_texts())
    found.discard("")
    return found


def health_texts() -> set[str]:
    """The health model's state summaries and condition texts (issue 5)."""
    from afra import health

    texts = {s.summary for s in health.STATES.values()}
    texts.update(c.text for c in health.CONDITIONS.values())
    return texts


def test_every_text_has_a_persian_translation() -> None:
    missing = sorted(t for t in english_texts() if t not in PERSIAN)
    assert not missing, "no Persian for:\n" + "\n".join(missing)


def test_translations_keep_their_placeholders() -> None:
    for english, persian in PERSIAN.items():
        assert set(re.findall(r"{\w+}", english)) == set(re.findall(r"{\w+}", persian)), english
