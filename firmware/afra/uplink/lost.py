"""A study revision some of whose files are gone from the storage device (a failing card, a
hand in the folder): what the uplink can still do with it.

Where the hub already holds every part that needs a lost file, the revision completes
without it (nothing is read). Where it does not, the revision's stream can no longer be made
as the hub was told of it (its size at registration, each part's hash): the hub keys an
upload by study and revision, so the revision is given the study's next revision number and
registered afresh (`Index.register_afresh`), its instances hashed again. The upload under the
old number stays uncommitted at the hub; nothing of it was ever shown to anyone.

A lost file comes back with a copy sent again (the technician's remedy; health's
`files_need_review` says so). A copy sent to replace the lost file while the revision was
hashed for the hub, and refused only because its bytes differ from the lost ones, was kept in
conflicts/ under a name that says so (`Spool.kept_for_lost`; afra.dicom.receive). Once the
revision is unhashed, the latest such copy that is a whole instance of that UID in that
study, not naming another Patient ID, takes the lost file's place here: the rule the
receiver's restore keeps for a copy sent after that (a copy naming another Patient ID is kept
for review there, unmarked). Other conflicts/ copies
(a second copy that differed while the first was there, a UID clash from another study) are
never taken: they were kept for a person to review. A copy sent after the revision is
unhashed is taken by the receiver directly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from afra.dicom.header import read_header
from afra.dicom.spool import Spool
from afra.errors import InvalidInstanceError
from afra.store.index import Index, UploadInstance, UploadStudy
from afra.uplink.stream import StreamPlan

LOG = logging.getLogger("afra.uplink")


class FilesLost(Exception):
    """Files of the revision being delivered are gone. `mended`: a copy took each one's place
    (the revision, perhaps renumbered, can be tried again at once)."""

    def __init__(self, message: str, *, mended: bool) -> None:
        super().__init__(message)
        self.mended = mended


def missing(spool: Spool, instances: Sequence[UploadInstance]) -> list[UploadInstance]:
    """The instances whose file is not on the device."""
    return [i for i in instances if not spool.absolute(i.path).exists()]


def adopt_conflict(
    index: Index, spool: Spool, study: UploadStudy, lost: UploadInstance, now: float
) -> str | None:
    """Put the latest whole copy of `lost` kept for it in conflicts/ in its file's place (the
    same order as the receiver's restore: under the study folder's flock, the row first, then
    the name). Who sent the copy taken ("" when the file was back already), or None."""
    for kept in index.conflicts_of(lost.sop_instance_uid):
        if not spool.kept_for_lost(kept.path):
            continue  # kept for review, not to replace a lost file
        path = spool.absolute(kept.path)
        try:
            header = read_header(path)
            size = path.stat().st_size
        except (InvalidInstanceError, OSError) as exc:
            LOG.debug("conflict copy %s not taken: %s", kept.path, exc)
            continue
        if header.sop_instance_uid != lost.sop_instance_uid or header.study_uid != study.study_uid:
            continue  # kept under this UID's hash, but not this study's instance
        if header.demographics().other_patient(study.patient_id):
            LOG.debug(
                "instance %s of study %s: the copy kept as %s names another Patient ID than the "
                "study; not taken",
                lost.sop_instance_uid,
                study.study_uid,
                kept.path,
            )
            continue
        with spool.folder_locked(lost.path):
            if spool.absolute(lost.path).exists():
                return ""  # a copy sent again restored it meanwhile
            # None: its row is hashed again, or gone (the receiver's restore judges afresh).
            if not index.restore_instance(header, lost.path, size, now, kept.calling_ae, None):
                return None
            spool.commit(path, lost.path)  # flushed, linked, the folder flushed, then moved
        spool.flush_folder(kept.path)  # the conflicts/ name stays gone
        index.forget_conflict(kept.id)
        LOG.warning(
            "instance %s of study %s: the copy %s sent and kept in conflicts/ takes the place "
            "of its lost file",
            lost.sop_instance_uid,
            study.study_uid,
            kept.calling_ae or "?",
        )
        return kept.calling_ae
    return None


def needs_lost_part(
    stream: StreamPlan, held: Sequence[int], gone: Sequence[UploadInstance]
) -> bool:
    """Whether a part the hub does not hold needs one of the `gone` files (else the revision
    can still be completed as registered, once the part being read is readable again)."""
    lost_uids = {i.sop_instance_uid for i in gone}
    have = set(held)
    for item in stream.placed:
        if item.instance.sop_instance_uid not in lost_uids or item.instance.size <= 0:
            continue
        first = item.offset // stream.part_size
        last = (item.offset + item.instance.size - 1) // stream.part_size
        if any(n not in have for n in range(first, last + 1)):
            return True
    return False
