"""Replies from the PACS are untrusted: invalid UIDs dropped, matches capped, counts bounded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from afra.config import DicomSettings, PacsSettings
from afra.dicom.scu import PacsClient
from afra.errors import PeerReplyError
from tests.dicomgen import no_write_validation
from tests.peers import free_port

LOOPBACK = "127.0.0.1"


def hostile_matches(event: Any) -> Iterator[tuple[int, Dataset | None]]:
    for i in range(40):
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = "../../evil" if i % 2 else f"1.2.3.{i + 1}"
        ds.NumberOfStudyRelatedInstances = "99999999999" if i == 0 else "3"
        yield 0xFF00, ds
    yield 0x0000, None


@pytest.fixture
def hostile_pacs() -> Iterator[int]:
    port = free_port()
    ae = AE(ae_title="EVIL")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    with no_write_validation():
        server = ae.start_server(
            (LOOPBACK, port), block=False, evt_handlers=[(evt.EVT_C_FIND, hostile_matches)]
        )
        try:
            yield port
        finally:
            server.shutdown()


def client(port: int, max_results: int = 10) -> PacsClient:
    return PacsClient(
        PacsSettings(ae_title="EVIL", host=LOOPBACK, port=port, max_results=max_results),
        DicomSettings(ae_title="AFRA"),
    )


def test_find_drops_invalid_uids_and_caps_matches(hostile_pacs: int) -> None:
    matches = client(hostile_pacs, max_results=5).find("STUDY", {})
    assert len(matches) == 5
    assert all(".." not in m.StudyInstanceUID for m in matches)


def test_absurd_instance_count_is_refused(hostile_pacs: int) -> None:
    with pytest.raises(PeerReplyError, match="out of range"):
        client(hostile_pacs).study_instance_count("1.2.3.1")
    assert client(hostile_pacs).study_instance_count("1.2.3.3") == 3


def test_query_keys_are_checked_before_sending() -> None:
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        client(1).find("STUDY", {"NoSuchKeyword": "x"})
    with pytest.raises(ValueError, match="needs StudyInstanceUID"):
        client(1).find("SERIES", {})
    with pytest.raises(ValueError, match="not a valid Study Instance UID"):
        client(1).move("1.2.3/../x")
