"""What the index is given about an instance: the shape, not the parser.

The DICOM package reads headers (`afra.dicom.header.InstanceHeader`) and hands them here;
the index needs only these fields, so it depends on this shape and the DICOM package on the
store, never the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Demographics:
    """What the index keeps about a study's patient and order, read once per study."""

    patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_phone: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_description: str = ""
    referring_physician: str = ""

    def other_patient(self, patient_id: str) -> bool:
        """Whether these name another patient than a study row whose Patient ID is
        `patient_id`: both IDs given, and different. Only the ID is compared: names and birth
        dates vary between one patient's instances (case, carets, a date left out) and the
        row holds its first instance's (a review found a check on them refusing the very
        bytes acknowledged)."""
        mine, theirs = self.patient_id.strip(), patient_id.strip()
        return bool(mine and theirs and mine != theirs)


class Header(Protocol):
    """The identifying tags of one instance, as the index records them."""

    @property
    def sop_class_uid(self) -> str: ...
    @property
    def sop_instance_uid(self) -> str: ...
    @property
    def study_uid(self) -> str: ...
    @property
    def series_uid(self) -> str: ...
    @property
    def transfer_syntax(self) -> str: ...
    @property
    def modality(self) -> str: ...

    def demographics(self) -> Demographics:
        """Patient and order, converted only when the index asks (once per study)."""
        ...
