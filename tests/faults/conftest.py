"""The fault suite's figures: each part adds its lines; the run ends with them.

`make test` runs reduced counts; `make test-faults` the full ones (AFRA_FAULTS=full)."""

from __future__ import annotations

import os

import pytest

FULL = os.environ.get("AFRA_FAULTS") == "full"
FIGURES: dict[str, list[str]] = {}


def count(reduced: int, full: int) -> int:
    """How many rounds a part runs: a few in `make test`, the issue's count in test-faults."""
    return full if FULL else reduced


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("fault suite figures")
    for part in sorted(FIGURES):
        for line in FIGURES[part]:
            terminalreporter.write_line(line)
