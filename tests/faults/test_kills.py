"""SIGKILL at random moments during boot, receive and upload: nothing acknowledged is lost."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from medix.hub.server import HubServer
from tests.conftest import wait_for
from tests.faults.conftest import FIGURES, count
from tests.faults.harness import PHASES, KillHarness

# A modality whose box dies mid-association leaves pynetdicom's socket to the garbage collector,
# which closes it but warns, in whichever test runs then; only those warnings are ignored here.
pytestmark = [
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
    ),
]


@pytest.fixture(autouse=True)
def _collect_here() -> Iterator[None]:
    yield
    gc.collect()  # those sockets are closed now, under this module's filters, not in another's


@pytest.mark.timeout(3600)
def test_nothing_acknowledged_is_lost_through_random_kills(hub: HubServer, tmp_path: Path) -> None:
    seed = int(os.environ.get("AFRA_FAULT_SEED", "1515"))
    harness = KillHarness(tmp_path, hub, seed=seed)
    try:
        for _ in range(count(reduced=9, full=210)):
            harness.round()
        harness.settle(lambda cond, timeout, what: wait_for(cond, timeout=timeout, what=what))
        verdict = harness.verdict()
    finally:
        harness.close()
    FIGURES["kills"] = verdict.lines()
    books = harness.books
    assert all(books.by_phase[p] for p in PHASES), books.by_phase  # every phase was hit
    assert verdict.acked > 0  # the modality's studies were taken
    assert verdict.acked_lost == 0, f"lost after a kill (seed {seed}): {verdict.lost}"
    assert verdict.hub_duplicates == 0
    assert verdict.partial_uploads == 0


def test_the_books_catch_a_lost_or_altered_instance(hub: HubServer, tmp_path: Path) -> None:
    """The check itself can fail: an acknowledgement the box cannot show, bytes that differ."""
    harness = KillHarness(tmp_path, hub, seed=1, instances=3)
    try:
        proc = harness.spawn()
        harness.notify.wait_ready(proc)
        assert harness.send(harness.new_study()) == 3
        proc.terminate()
        proc.wait(timeout=60)
        harness.settle(lambda cond, timeout, what: wait_for(cond, timeout=timeout, what=what))
        assert harness.verdict().acked_lost == 0
        books = harness.books
        books.acked["1.2.826.0.1.3680043.8.498.1"] = b"never stored"
        books.study_of["1.2.826.0.1.3680043.8.498.1"] = next(iter(books.study_of.values()))
        first = next(iter(books.acked))
        books.acked[first] = books.acked[first][:-2] + b"\0\0"
        verdict = harness.verdict()
    finally:
        harness.close()
    assert (verdict.acked_lost, verdict.partial_uploads) == (1, 1)
