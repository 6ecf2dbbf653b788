"""The fault suite's figures, printed as the run's last lines (tests/conftest.py).

Each part of the suite puts its lines here; attacks are counted from the tests marked
`attack` (one test case each, wherever it lives): tried, and passed (the box let it through,
which is a failed test)."""

from __future__ import annotations

FIGURES: dict[str, list[str]] = {}
ATTACKS = {"tried": 0, "passed": 0}
ORDER = ("kills", "power", "fuzz", "attacks", "audit")


def lines() -> list[str]:
    out = {name: list(text) for name, text in FIGURES.items()}
    if ATTACKS["tried"]:
        out["attacks"] = [f"attacks_tried={ATTACKS['tried']} attacks_passed={ATTACKS['passed']}"]
    ordered = [n for n in ORDER if n in out] + sorted(set(out) - set(ORDER))
    return [line for name in ordered for line in out[name]]
