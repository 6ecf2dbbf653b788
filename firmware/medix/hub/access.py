"""Patients and physicians reaching committed studies: the patient page (Medis code plus
birth date), the signed-in physician's inbox, signed download links and the study zip, and
the rate limits in front of every patient-facing page (medix.hub.throttle).

Wrong Medis code tries are counted per code and per address for CODE_ATTEMPT_WINDOW_S; a
code stops opening anything `code_expiry_days` (policy) after its first study was committed.
A download link is the code, an expiry and an HMAC under a key only the hub holds, valid
for DOWNLOAD_LINK_TTL_S.
"""

from __future__ import annotations

import hashlib
import hmac
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from medix.clock import Clock
from medix.hub.codes import format_code, normalise_code
from medix.hub.errors import HubError
from medix.hub.physicians import physician_key
from medix.hub.policy import Policies
from medix.hub.store import HubStore, UploadRow
from medix.hub.throttle import Throttle, retry_after
from medix.models import StudyRegistration

# Wrong Medis code tries count for a day: long enough to stop guessing, short enough that a
# patient who mistyped is not locked out for good.
CODE_ATTEMPT_WINDOW_S = 86400.0
DOWNLOAD_LINK_TTL_S = 3600.0
DAY_S = 86400.0


@dataclass(frozen=True)
class PatientStudy:
    """One committed upload as the patient and physician pages show it."""

    upload_id: str
    medis_code: str
    study_uid: str
    revision: int
    study_date: str
    study_description: str
    modalities: tuple[str, ...]
    instance_count: int
    patient_name: str
    referring_physician: str
    download_token: str


class StudyAccess:
    """Who may see which committed study, and the links and zips they download."""

    def __init__(
        self,
        store: HubStore,
        policies: Policies,
        throttle: Throttle,
        clock: Clock,
        *,
        link_key: bytes,
        tmp_dir: Path,
    ) -> None:
        self.store = store
        self.policies = policies
        self.throttle = throttle
        self.clock = clock
        self._link_key = link_key
        self._tmp_dir = tmp_dir

    def download_token(self, medis_code: str) -> str:
        expires = int(self.clock.time() + DOWNLOAD_LINK_TTL_S)
        payload = f"{medis_code}.{expires}"
        mac = hmac.new(self._link_key, payload.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{payload}.{mac}"

    def _token_code(self, token: str) -> str:
        code, _, rest = token.partition(".")
        expires, _, mac = rest.partition(".")
        payload = f"{code}.{expires}"
        good = hmac.new(self._link_key, payload.encode(), hashlib.sha256).hexdigest()[:32]
        if not expires.isdigit() or not hmac.compare_digest(mac, good):
            raise HubError(404, "No such download", "the link is not valid")
        if int(expires) < self.clock.time():
            raise HubError(410, "Link expired", "open the study page again for a fresh link")
        return code

    def _patient_studies(self, uploads: list[UploadRow]) -> list[PatientStudy]:
        studies = []
        for upload in uploads:
            reg = StudyRegistration.model_validate_json(upload.registration_json)
            studies.append(
                PatientStudy(
                    upload_id=upload.upload_id,
                    medis_code=upload.medis_code,
                    study_uid=reg.study_uid,
                    revision=reg.revision,
                    study_date=reg.study_date,
                    study_description=reg.study_description,
                    modalities=reg.modalities,
                    instance_count=len(self.store.instances(upload.upload_id)),
                    patient_name=reg.patient.name,
                    referring_physician=reg.referring_physician,
                    download_token=self.download_token(upload.medis_code),
                )
            )
        return studies

    def patient_access(self, code_text: str, birth_text: str, address: str) -> list[PatientStudy]:
        """The studies under a Medis code, when the birth date matches; tries are counted."""
        code = normalise_code(code_text)
        birth = "".join(c for c in birth_text if c.isdigit())
        if not code or not birth:
            raise HubError(400, "Code and birth date needed", "enter both, as printed")
        policy = self.policies.policy()
        now = self.clock.time()
        since = now - CODE_ATTEMPT_WINDOW_S
        limit = policy.code_max_attempts
        if (
            self.store.code_failures(code, since) >= limit
            or self.store.address_failures(address, since) >= limit
        ):
            raise HubError(
                429,
                "Too many wrong tries",
                f"after {limit} wrong tries this code (or this connection) is locked for "
                f"{int(CODE_ATTEMPT_WINDOW_S // 3600)} hours; ask your imaging center if you "
                "need help sooner",
                {"Retry-After": str(int(CODE_ATTEMPT_WINDOW_S))},
            )
        uploads = self.store.committed_by_code(code)
        # The code alone is never enough: a registration without a birth date never matches.
        matching = [
            u
            for u in uploads
            if StudyRegistration.model_validate_json(u.registration_json).patient.birth_date
            == birth
        ]
        if not matching:
            self.store.add_code_attempt(code, address, now, ok=False)
            left = max(
                0,
                limit
                - max(
                    self.store.code_failures(code, since),
                    self.store.address_failures(address, since),
                ),
            )
            raise HubError(
                403,
                "Code or birth date wrong",
                f"check the code on your slip and your birth date; {left} tries left",
            )
        self.store.add_code_attempt(code, address, now, ok=True)
        first = min(u.committed_at or u.created_at for u in matching)
        if now > first + policy.code_expiry_days * DAY_S:
            raise HubError(410, "Code expired", "ask your imaging center for the study")
        return self._patient_studies(matching)

    def physician_studies(self, physician: str) -> list[PatientStudy]:
        """The studies referred by `physician` (an account's name: only ever the signed-in
        physician's own, never a name taken from a request)."""
        key = physician_key(physician)
        if not key:
            return []
        return self._patient_studies(self.store.committed_by_physician(key))

    @contextmanager
    def guessing(self, client: str) -> Iterator[None]:
        """Around a lookup by something a client could guess (a Medis code, a download link,
        a file id): 429 while `client` has no wrong guesses left, and a 403 or 404 raised
        inside counts as one. Refused before the lookup, so a right guess is no answer."""
        wait = self.throttle.may_guess(client)
        if wait > 0:
            raise HubError(
                429,
                "Too many wrong tries",
                f"too many wrong codes or links from this connection; try again in "
                f"{max(1, round(wait / 60))} minutes",
                {"Retry-After": retry_after(wait)},
            )
        try:
            yield
        except HubError as error:
            if error.status in (403, 404):
                self.throttle.wrong_guess(client)
            raise

    def admit(self, client: str) -> None:
        """One request to a patient-facing page from `client` (429 when its bucket is empty)."""
        wait = self.throttle.request(client)
        if wait > 0:
            raise HubError(
                429,
                "Too many requests",
                "this connection is sending requests too fast; wait a moment",
                {"Retry-After": retry_after(wait)},
            )

    def study_zip(self, token: str) -> tuple[IO[bytes], str]:
        """A temporary file holding a zip of every instance under the token's code."""
        code = self._token_code(token)
        uploads = self.store.committed_by_code(code)
        if not uploads:
            raise HubError(404, "No such study", "nothing is stored under this code")
        handle = tempfile.TemporaryFile(dir=self._tmp_dir)  # noqa: SIM115 - handed to caller
        try:
            names: set[str] = set()
            # Stored: DICOM pixel data rarely shrinks, and the archive is built per request.
            with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED) as archive:
                for upload in uploads:
                    for row in self.store.instances(upload.upload_id):
                        study_uid = upload.study_uid
                        name = f"{study_uid}/{row.series_uid}/{row.sop_instance_uid}.dcm"
                        if name in names:
                            continue
                        names.add(name)
                        archive.write(self.store.data_dir / row.path, name)
            handle.seek(0)
        except BaseException:
            handle.close()
            raise
        return handle, f"study-{format_code(code)}.zip"
