"""The fault suite's figures: each part adds its lines; the run ends with them.

`make test` runs reduced counts; `make test-faults` the full ones (AFRA_FAULTS=full)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.figures import FIGURES
from tests.uplink.conftest import enrolled_box  # a box enrolled with the reference hub

FULL = os.environ.get("AFRA_FAULTS") == "full"
__all__ = ["FIGURES", "FULL", "count", "enrolled_box"]


def count(reduced: int, full: int) -> int:
    """How many rounds a part runs: a few in `make test`, the issue's count in test-faults."""
    return full if FULL else reduced


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/faults is the suite (`make test-faults` picks it, and the
    attacks that live beside what they attack, by marker)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.faults)
