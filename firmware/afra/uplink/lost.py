"""A study revision some of whose files are gone from the storage device (a failing card, a
hand in the folder): what the uplink can still do with it.

Where the hub already holds every part that needs a lost file, the revision completes
without it (nothing is read). Where it does not, the revision's stream can no longer be made
as the hub was told of it (its size at registration, each part's hash): the hub keys an
upload by study and revision, so the revision is given the study's next revision number and
registered afresh (`Index.register_afresh`), its instances hashed again. The upload under the
old number stays uncommitted at the hub; nothing of it was ever shown to anyone.

A lost file comes back with a copy sent again (the technician's remedy; health's
`files_need_review` says so). A copy that came while the revision was hashed for the hub and
differed from the lost bytes was kept in conflicts/ (afra.dicom.receive); once the revision
is unhashed, the latest such copy that is a whole instance of that UID in that study takes
the lost file's place here. A copy sent after that is taken by the receiver directly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from afra.dicom.header import read_header
from afra.dicom.spool import Spool
from afra.errors import InvalidInstanceError
from afra.store.index import Index, UploadInstance

LOG = logging.getLogger("afra.uplink")


class FilesLost(OSError):
    """Files of the revision being delivered are gone. `mended`: a copy took each one's place
    (the revision, perhaps renumbered, can be tried again at once)."""

    def __init__(self, message: str, *, mended: bool) -> None:
        super().__init__(message)
        self.mended = mended


def missing(spool: Spool, instances: Sequence[UploadInstance]) -> list[UploadInstance]:
    """The instances whose file is not on the device."""
    return [i for i in instances if not spool.absolute(i.path).exists()]


def adopt_conflict(
    index: Index, spool: Spool, study_uid: str, lost: UploadInstance, now: float
) -> bool:
    """Put the latest whole copy of `lost` kept in conflicts/ in its file's place (the same
    order as the receiver's restore: under the study folder's flock, the row first, then the
    name). True when the file is there on return."""
    for kept in index.conflicts_of(lost.sop_instance_uid):
        path = spool.absolute(kept.path)
        try:
            header = read_header(path)
            size = path.stat().st_size
        except (InvalidInstanceError, OSError) as exc:
            LOG.debug("conflict copy %s not taken: %s", kept.path, exc)
            continue
        if header.sop_instance_uid != lost.sop_instance_uid or header.study_uid != study_uid:
            continue  # kept under this UID's hash, but not this study's instance
        with spool.folder_locked(lost.path):
            if spool.absolute(lost.path).exists():
                return True  # a copy sent again restored it meanwhile
            # False: its row is hashed again, or gone (the receiver's restore judges afresh).
            if not index.restore_instance(header, lost.path, size, now, kept.calling_ae, None):
                return False
            spool.commit(path, lost.path)  # flushed, linked, the folder flushed, then moved
        spool.flush_folder(kept.path)  # the conflicts/ name stays gone
        index.forget_conflict(kept.id)
        LOG.warning(
            "instance %s of study %s: the copy %s sent and kept in conflicts/ takes the place "
            "of its lost file",
            lost.sop_instance_uid,
            study_uid,
            kept.calling_ae or "?",
        )
        return True
    return False
