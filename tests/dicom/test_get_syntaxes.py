"""C-GET brings objects back in the transfer syntax the PACS holds them in (docs/conformance.md
2.2.1.3.3): Orthanc holding JPEG 2000, JPEG, RLE, deflated and uncompressed objects made by
real tools (DCMTK, GDCM), each compared byte for byte with what was stored into Orthanc.

A PACS picks one transfer syntax in each presentation context the C-GET proposes; what it holds
in another syntax it must convert, or it fails the sub-operation. Offered one context per SOP
class holding every syntax (the box's first proposal), Orthanc 1.10 picks Explicit VR Little
Endian, converts the Implicit VR, deflated, JPEG and RLE objects to it and cannot convert JPEG
2000 at all ("C-GET SCP: Cannot transcode"): the second test shows that proposal fails here,
so the first one would notice that mistake.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom.presentation import PresentationContext, build_context

from afra.app import Appliance
from afra.config import STORABLE_TRANSFER_SYNTAXES, DicomSettings, PacsSettings
from afra.dicom import scu
from afra.dicom.scu import MAX_STORAGE_CONTEXTS, PacsClient, storage_contexts
from tests.conftest import BoxFactory
from tests.dicomgen import dataset_bytes_hash, make_ct_series, make_report
from tests.peers import LOOPBACK, Orthanc

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
RLE = "1.2.840.10008.1.2.5"

# How each CT slice is re-encoded before it goes into Orthanc: (the tool's command, the
# transfer syntax it writes). None: the slice stays as written (Explicit VR Little Endian).
CONVERSIONS: tuple[tuple[tuple[str, ...] | None, str], ...] = (
    (None, EXPLICIT),
    (("dcmconv", "+ti"), IMPLICIT),
    (("dcmconv", "+td"), DEFLATED),
    (("dcmcjpeg", "+eb"), JPEG_BASELINE),  # lossy, so a new SOP Instance UID
    (("dcmcjpeg", "+e1"), JPEG_LOSSLESS_SV1),
    (("gdcmconv", "--j2k"), JPEG2000_LOSSLESS),  # Debian's libgdcm-tools (make system-deps)
    (("dcmcrle",), RLE),
)


def convert(tool: tuple[str, ...], src: Path, dst: Path) -> None:
    assert shutil.which(tool[0]), f"{tool[0]} is missing: run `make system-deps`"
    subprocess.run([*tool, str(src), str(dst)], check=True, capture_output=True, timeout=60)
    if tool == ("dcmconv", "+td") and dst.stat().st_size % 2:
        # dcmconv writes the deflated stream as it ends, odd or not; on the network a data
        # set has an even length, and DCMTK (Orthanc) sends that stream with a NUL after
        # it. Stored that way here, what Orthanc holds is what it sends.
        with dst.open("ab") as fh:
            fh.write(b"\0")


def transfer_syntax(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def held_study(orthanc: Orthanc, out: Path) -> tuple[str, list[Path]]:
    """A study in Orthanc: CT slices in each syntax of CONVERSIONS and a deflated SR (a second
    SOP class), as the files that were uploaded."""
    slices = make_ct_series(out / "src", n=len(CONVERSIONS), rows=32, cols=32, patient_id=out.name)
    study_uid = str(dcmread(slices[0], stop_before_pixels=True).StudyInstanceUID)
    files: list[Path] = []
    for src, (tool, syntax) in zip(slices, CONVERSIONS, strict=True):
        dst = out / f"{src.stem}-{syntax}.dcm"
        if tool is None:
            shutil.copyfile(src, dst)
        else:
            convert(tool, src, dst)
        assert transfer_syntax(dst) == syntax, (tool, transfer_syntax(dst))
        files.append(dst)
    report = make_report(out / "src" / "SR.dcm", study_uid=study_uid, patient_id=out.name)
    convert(("dcmconv", "+td"), report, out / "SR-deflated.dcm")
    files.append(out / "SR-deflated.dcm")
    orthanc.upload_many(files)
    return study_uid, files


def kept_path(box: Appliance, sent: Path) -> Path:
    ds = dcmread(sent, stop_before_pixels=True)
    return box.spool.absolute(box.spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID))


def as_held(box: Appliance, sent: Path) -> bool:
    """Whether the box holds `sent` in its transfer syntax with the very data set bytes."""
    kept = kept_path(box, sent)
    return (
        kept.exists()
        and transfer_syntax(kept) == transfer_syntax(sent)
        and dataset_bytes_hash(kept) == dataset_bytes_hash(sent)
    )


@pytest.fixture
def get_box(make_box: BoxFactory, box_port: int, orthanc: Orthanc) -> Appliance:
    return make_box(
        dicom={"port": box_port},
        pacs={"ae_title": orthanc.aet, "host": LOOPBACK, "port": orthanc.dicom_port},
    )


def test_get_brings_every_object_back_as_the_pacs_holds_it(
    get_box: Appliance, orthanc: Orthanc, tmp_path: Path
) -> None:
    study_uid, files = held_study(orthanc, tmp_path / "SYNTAXES")
    assert get_box.pacs is not None
    logged = len(orthanc.log_text())
    result = get_box.pacs.get(study_uid)
    assert result.ok and result.completed == len(files), result
    for sent in files:
        assert as_held(get_box, sent), f"{sent.name} came back changed"
    assert "transcod" not in orthanc.log_text()[logged:].lower()


def one_context_per_class(
    classes: Sequence[str], syntaxes: Sequence[str], budget: int = MAX_STORAGE_CONTEXTS
) -> list[PresentationContext]:
    """The box's first proposal: every syntax in one context per SOP class."""
    return [build_context(uid, list(syntaxes)) for uid in list(dict.fromkeys(classes))[:budget]]


def test_one_context_per_class_does_not_bring_them_back_as_held(
    get_box: Appliance, orthanc: Orthanc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The oracle above can fail: with the old proposal Orthanc picks Explicit VR Little
    Endian for CT and cannot send the JPEG 2000 slice in it."""
    monkeypatch.setattr(scu, "storage_contexts", one_context_per_class)
    study_uid, files = held_study(orthanc, tmp_path / "ONECONTEXT")
    assert get_box.pacs is not None
    logged = len(orthanc.log_text())
    result = get_box.pacs.get(study_uid)
    assert not result.ok and result.failed >= 1, result
    assert not all(as_held(get_box, sent) for sent in files)
    assert "Cannot transcode" in orthanc.log_text()[logged:]


def test_a_pacs_that_does_not_list_the_classes_gets_127_contexts(
    get_box: Appliance, orthanc: Orthanc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without SOP Classes in Study the box offers pynetdicom's 120 usual classes, one or two
    contexts each (128 with the C-GET's own): the PACS accepts that, and sends what it holds
    (converted where a class has no context of its own for the object's syntax)."""
    find = PacsClient.find

    def find_without_classes(self: PacsClient, level: str, keys: dict[str, str]) -> list[Any]:
        matches = find(self, level, keys)
        for match in matches:
            if "SOPClassesInStudy" in match:
                del match.SOPClassesInStudy
        return matches

    monkeypatch.setattr(PacsClient, "find", find_without_classes)
    proposed: list[int] = []
    contexts = scu.storage_contexts

    def counted(*args: Any, **kwargs: Any) -> list[PresentationContext]:
        made = contexts(*args, **kwargs)
        proposed.append(len(made))
        return made

    monkeypatch.setattr(scu, "storage_contexts", counted)
    out = tmp_path / "NOCLASSES"
    slices = make_ct_series(out, n=2, rows=32, cols=32, patient_id=out.name)
    convert(("dcmconv", "+ti"), slices[1], out / "implicit.dcm")
    files = [slices[0], out / "implicit.dcm"]
    orthanc.upload_many(files)
    study_uid = str(dcmread(slices[0], stop_before_pixels=True).StudyInstanceUID)
    assert get_box.pacs is not None
    result = get_box.pacs.get(study_uid)
    assert proposed == [MAX_STORAGE_CONTEXTS]
    assert result.ok and result.completed == len(files), result
    assert as_held(get_box, slices[0])  # Explicit VR Little Endian: CT's shared context
    assert kept_path(get_box, files[1]).exists()


# -- the rule itself --------------------------------------------------------------------------

CT, MR, SR = (
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.88.11",
)
SYNTAXES = list(STORABLE_TRANSFER_SYNTAXES)


def pairs(contexts: list[PresentationContext]) -> list[tuple[str, tuple[str, ...]]]:
    return [(str(cx.abstract_syntax), tuple(map(str, cx.transfer_syntax))) for cx in contexts]


def test_few_classes_get_a_context_for_every_syntax() -> None:
    contexts = pairs(storage_contexts([CT, SR, CT, MR], SYNTAXES))  # duplicates count once
    assert len(SYNTAXES) * 3 <= MAX_STORAGE_CONTEXTS
    assert contexts == [(uid, (ts,)) for uid in (CT, SR, MR) for ts in SYNTAXES]


def test_many_classes_share_the_contexts_and_keep_every_syntax() -> None:
    for count in (4, 7, 11, 120, 127, 200):
        classes = [f"1.2.840.10008.5.1.4.1.1.{n}" for n in range(1, count + 1)]
        contexts = pairs(storage_contexts(classes, SYNTAXES))
        assert len(contexts) == MAX_STORAGE_CONTEXTS, count
        offered = classes[:MAX_STORAGE_CONTEXTS]
        assert list(dict.fromkeys(uid for uid, _ in contexts)) == offered
        share, extra = divmod(MAX_STORAGE_CONTEXTS, len(offered))
        for i, uid in enumerate(offered):
            own = [syntaxes for cls, syntaxes in contexts if cls == uid]
            assert len(own) == share + (i < extra)
            # Single syntaxes in the box's order, then one context with all the others.
            assert [ts for group in own for ts in group] == SYNTAXES
            assert all(len(group) == 1 for group in own[:-1])


def test_get_proposes_the_accepted_syntaxes_in_the_boxs_order() -> None:
    local = DicomSettings(accepted_transfer_syntaxes=(JPEG2000_LOSSLESS, EXPLICIT))
    client = PacsClient(PacsSettings(ae_title="PACS", host=LOOPBACK), local)
    assert client._storage_syntaxes() == [EXPLICIT, JPEG2000_LOSSLESS]
