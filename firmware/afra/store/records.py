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

    def same_patient(self, patient_id: str, patient_name: str, patient_birth_date: str) -> bool:
        """Whether these name the patient a study row names: its ID, name and birth date,
        compared as the row holds them (a field the row left empty is not compared)."""
        return all(
            not want or want == got
            for want, got in (
                (patient_id, self.patient_id),
                (patient_name, self.patient_name),
                (patient_birth_date, self.patient_birth_date),
            )
        )


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
