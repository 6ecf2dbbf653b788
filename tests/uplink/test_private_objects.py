"""A vendor's private non-image object travels with its study to the hub, byte for byte."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from medix.hub.server import HubServer
from tests.dicomgen import make_ct_series, make_instance
from tests.fakes import FakeClock
from tests.peers import storescu
from tests.uplink.conftest import LOOPBACK, BoxFactory, assert_hub_holds, complete_and_deliver

CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"  # Siemens CSA Non-Image Storage


def test_a_private_object_reaches_the_hub_with_its_study(
    hub: HubServer, enrolled_box: BoxFactory, clock: FakeClock, tmp_path: Path
) -> None:
    box = enrolled_box(hub)
    images = make_ct_series(tmp_path / "ct", n=3, rows=32, cols=32, patient_id="CSA1")
    study_uid = str(dcmread(images[0], stop_before_pixels=True).StudyInstanceUID)
    private = make_instance(
        tmp_path / "csa.dcm",
        sop_class=CSA_NON_IMAGE,
        study_uid=study_uid,
        pixel_bytes=None,
        patient_id="CSA1",
        extra={"ImageType": ["DERIVED", "SECONDARY", "OTHER", "CSA REPORT"]},
    )
    storescu(LOOPBACK, box.dicom.port, images)
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CSA_NON_IMAGE, [ExplicitVRLittleEndian])
    assoc = ae.associate(LOOPBACK, box.dicom.port, ae_title="AFRA")
    try:
        assert assoc.send_c_store(private).Status == 0x0000
    finally:
        assoc.release()
    study = complete_and_deliver(box, clock, [*images, private])
    assert study.instance_count == 4  # type: ignore[attr-defined]
    assert_hub_holds(hub, box, study, [*images, private])
