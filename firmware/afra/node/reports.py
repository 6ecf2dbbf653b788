"""Report status: for the studies the hub asks about, whether a report exists (docs/medix.md).

A report is a DICOM Structured Report (any SR storage class) or an encapsulated PDF. For a
study the box holds, the answer comes from the index (and, for the time, from the report's
own Content Date/Time while its file is on the box). For a study the box never held, the
PACS is asked by C-FIND at series level: series of modality SR count as `SR`, DOC as `PDF`;
a study the PACS does not know either is `Source: unknown`.
"""

from __future__ import annotations

import logging
from datetime import datetime

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from afra.dicom.scu import PacsClient
from afra.dicom.spool import Spool
from afra.errors import AfraError, AssociationFailedError
from afra.store.index import Index, ReportInstance
from medix.models import ReportStatus, ReportStatusRequest, ReportStatusResponse

LOG = logging.getLogger("afra.reports")

PDF_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"
KIND_BY_MODALITY = {"SR": "SR", "DOC": "PDF"}
# At most this many studies are looked up on the PACS per request (each is one C-FIND).
PACS_LOOKUPS = 200


def _iso(date: str, time: str) -> str | None:
    date = date.strip()
    if len(date) != 8 or not date.isdigit():
        return None
    digits = "".join(c for c in time.split(".")[0] if c.isdigit())[:6].ljust(6, "0")
    try:
        return datetime.strptime(date + digits, "%Y%m%d%H%M%S").isoformat()
    except ValueError:
        return None


def _unknown(uid: str) -> ReportStatus:
    """Neither the box nor the PACS could say whether the study has reports."""
    return ReportStatus(StudyInstanceUID=uid, HasReport=False, Count=0, Source="unknown")


class ReportStatusService:
    def __init__(self, index: Index, spool: Spool, pacs: PacsClient | None) -> None:
        self.index = index
        self.spool = spool
        self.pacs = pacs

    def answer(self, request: ReportStatusRequest) -> ReportStatusResponse:
        out: list[ReportStatus] = []
        lookups = 0
        pacs_reachable = True  # this request's own: requests run side by side
        for uid in dict.fromkeys(request.StudyInstanceUIDs):
            if self.index.holding(uid).revisions:
                out.append(self._from_index(uid))
            elif self.pacs is not None and lookups < PACS_LOOKUPS and pacs_reachable:
                lookups += 1
                try:
                    out.append(self._from_pacs(uid))
                except AssociationFailedError as exc:
                    # One unreachable PACS is not asked again in this request: the rest
                    # answer "unknown" at once instead of each waiting out the timeout.
                    pacs_reachable = False
                    LOG.warning("report status of %s: the PACS did not answer (%s)", uid, exc)
                    out.append(_unknown(uid))
            else:
                out.append(_unknown(uid))
        return ReportStatusResponse(Studies=tuple(out))

    def _when(self, report: ReportInstance) -> str:
        if not report.purged:
            try:
                ds = dcmread(
                    self.spool.absolute(report.path),
                    stop_before_pixels=True,
                    specific_tags=["ContentDate", "ContentTime"],
                )
                made = _iso(str(ds.get("ContentDate", "")), str(ds.get("ContentTime", "")))
                if made:
                    return made
            except (InvalidDicomError, OSError, ValueError):
                pass
        return datetime.fromtimestamp(report.received_at).isoformat(timespec="seconds")

    def _from_index(self, uid: str) -> ReportStatus:
        reports = self.index.report_instances(uid)
        kinds = sorted({"PDF" if r.sop_class_uid == PDF_CLASS else "SR" for r in reports})
        latest = max((self._when(r) for r in reports), default=None)
        return ReportStatus(
            StudyInstanceUID=uid,
            HasReport=bool(reports),
            Count=len(reports),
            Kinds=tuple(kinds),
            LatestAt=latest,
            Source="node",
        )

    def _from_pacs(self, uid: str) -> ReportStatus:
        """The PACS's answer; AssociationFailedError when it cannot be reached at all."""
        assert self.pacs is not None
        try:
            series = self.pacs.find(
                "SERIES",
                {
                    "StudyInstanceUID": uid,
                    "Modality": "",
                    "SeriesDate": "",
                    "SeriesTime": "",
                    "NumberOfSeriesRelatedInstances": "",
                },
            )
        except AssociationFailedError:
            raise
        except (AfraError, OSError, ValueError) as exc:
            LOG.warning("report status of %s: the PACS did not answer (%s)", uid, exc)
            return _unknown(uid)
        if not series:
            return _unknown(uid)
        count, kinds, latest = 0, set(), None
        for match in series:
            kind = KIND_BY_MODALITY.get(str(match.get("Modality", "")).upper())
            if kind is None:
                continue
            kinds.add(kind)
            try:
                count += max(1, min(int(match.get("NumberOfSeriesRelatedInstances") or 1), 10000))
            except (TypeError, ValueError):
                count += 1
            made = _iso(str(match.get("SeriesDate", "")), str(match.get("SeriesTime", "")))
            if made and (latest is None or made > latest):
                latest = made
        return ReportStatus(
            StudyInstanceUID=uid,
            HasReport=count > 0,
            Count=count,
            Kinds=tuple(sorted(kinds)),
            LatestAt=latest,
            Source="pacs",
        )
