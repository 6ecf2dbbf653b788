"""The acceptor's state table (afra.dicom.acceptor.TABLE), read as data."""

from __future__ import annotations

from afra.config import DicomSettings
from afra.dicom import acceptor
from afra.dicom.acceptor import TABLE, TIMEOUTS, State


def test_every_state_but_closed_has_its_moves_and_a_timeout() -> None:
    served = {state for state, _pdu in TABLE}
    assert served == {State.AWAITING_RQ, State.READY, State.IN_MESSAGE}
    assert set(TIMEOUTS) == {State.READY, State.IN_MESSAGE}
    for field in TIMEOUTS.values():
        assert field in DicomSettings.model_fields


def test_each_step_names_a_method_that_exists() -> None:
    for step in TABLE.values():
        assert callable(getattr(acceptor._Association, step.handler)), step


def test_what_the_table_lacks_is_an_unexpected_pdu() -> None:
    # PS3.8: an acceptor never receives A-ASSOCIATE-AC/RJ or A-RELEASE-RP, and a release in
    # the middle of a message is a protocol error: none of them is a move.
    for pdu in acceptor.PDU_NAMES.keys() - {0x01, 0x04, 0x05, 0x07}:
        assert not any(p == pdu for _s, p in TABLE), acceptor.PDU_NAMES[pdu]
    assert (State.IN_MESSAGE, acceptor.RELEASE_RQ) not in TABLE
    assert (State.AWAITING_RQ, acceptor.P_DATA) not in TABLE
