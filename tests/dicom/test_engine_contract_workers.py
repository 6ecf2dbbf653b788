"""The engine's contract (tests/dicom/test_engine_contract.py) again, every association served
by a receiving worker (dicom.receive_processes = 2): transfer syntax choice and SOP classes
stay the main process's negotiation; per-PDU deadlines, Sta13 after the release, the A-ABORT
when the box stops and what is stored are the worker's, and must be the same."""

from __future__ import annotations

from typing import Any

import pytest

from afra.app import Appliance
from afra.dicom.workers import ReceiveWorkers
from tests.conftest import BoxFactory
from tests.dicom.test_engine_contract import *  # noqa: F403 - the same tests, collected here


@pytest.fixture
def make_box(make_box: BoxFactory) -> Any:
    """Boxes with one receiving worker that takes every association (the main process
    negotiates and hands each one over); none may have been served by the main process."""
    boxes: list[Appliance] = []

    def factory(*args: Any, **sections: Any) -> Appliance:
        dicom = {"receive_processes": 2, **sections.pop("dicom", {})}
        box = make_box(*args, dicom=dicom, **sections)
        workers = box.dicom.handoff
        assert isinstance(workers, ReceiveWorkers) and workers.ready_workers == 1
        workers.main_takes_ties = False
        boxes.append(box)
        return box

    yield factory
    for box in boxes:
        workers = box.dicom.handoff
        assert isinstance(workers, ReceiveWorkers)
        assert workers.served_here == 0, "an association was served by the main process"
