"""`afra selftest`: does the running box work? After an update, the verdict on the new system.

The checks, each against the real running box, from outside its process:

  service  the box reports itself started (its status file is fresh, not "booting"; under
           systemd also `systemctl is-active afra.service`)
  web      the setup page answers on loopback
  echo     C-ECHO to the box's own SCP (calling AE AFRA-SELFTEST from loopback, which the
           acceptor admits whatever its peer list says)
  store    a C-STORE round trip: a small generated Secondary Capture object goes into the
           box's spool through its SCP, is found in the index and on disk byte for byte, and
           is removed again (its UIDs carry SELFTEST_UID_PREFIX, which study completion skips,
           so it never gets a Medis code or reaches the hub)
  index    the index opens and answers a query
  hub      when the box is enrolled: a heartbeat to the hub over the node's mutual TLS

The verdict (`--decide`, run by afra-selftest.service at every boot) continues the update
record (afra.update.status): the first boot of a newly installed slot is its trial. Pass:
`rauc status mark-good`, the update is kept. Fail: `rauc status mark-bad` and a reboot into
the previous slot, the update is rolled back. A boot on the old slot while the record waits
for the new one means the new one never came up (U-Boot ran out of attempts): rolled back.
On every other boot a pass marks the slot good again; a failure is reported but the slot is
kept, since rebooting into the other slot would not mend what broke.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from afra.config import Config
from afra.dicom.acceptor import SELFTEST_AE
from afra.dicom.spool import Spool
from afra.health import STATUS_FILE, box_running, read_status
from afra.store.index import SELFTEST_UID_PREFIX, Index
from afra.system.release import Release
from afra.update.rauc import Rauc, UpdateError
from afra.update.status import UpdateRecord
from afra.uplink.identity import NodeIdentity

LOG = logging.getLogger("afra.update")

REPORT_FILE = "selftest.json"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    at: float = 0.0
    trial: bool = False

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "at": self.at,
            "trial": self.trial,
            "checks": [asdict(c) for c in self.checks],
        }


def unit_state(unit: str) -> str:
    """`systemctl is-active UNIT` ("active", "activating", "failed", ...)."""
    try:
        done = subprocess.run(
            ["systemctl", "is-active", unit], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return done.stdout.strip() or "unknown"


def _test_object(path: Path) -> tuple[str, str, int]:
    """A small Secondary Capture object under the self-test prefix; (study, instance, offset
    of the data set in the file)."""
    study = generate_uid(prefix=SELFTEST_UID_PREFIX)
    instance = generate_uid(prefix=SELFTEST_UID_PREFIX)
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = instance
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid(prefix=SELFTEST_UID_PREFIX)
    ds.PatientName = "AFRA^SELFTEST"
    ds.PatientID = "AFRA-SELFTEST"
    ds.StudyDescription = "AFRA self-test (removed at once)"
    ds.Modality = "OT"
    ds.ConversionType = "SYN"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 8
    ds.Columns = 8
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(64))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    group_length = int.from_bytes(raw[140:144], "little")  # (0002,0000) UL, explicit VR
    return study, instance, 144 + group_length


class SelfTest:
    def __init__(
        self,
        config: Config,
        *,
        units: tuple[str, ...] = ("afra.service",),
        unit_state: Callable[[str], str] = unit_state,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        dicom_port: int | None = None,
        web_port: int | None = None,
    ) -> None:
        self.config = config
        self.data_dir = config.box.data_dir
        self.units = units
        self.unit_state = unit_state
        self.monotonic = monotonic
        self.sleep = sleep
        self.dicom_port = dicom_port or config.dicom.port
        self.web_port = web_port or config.web.port

    # -- the checks ---------------------------------------------------------------------------

    def _wait(self, deadline: float, attempt: Callable[[], Check]) -> Check:
        """Try until the check passes or the deadline; the last answer."""
        while True:
            try:
                check = attempt()
            except Exception as exc:  # a check that raises has failed, with the reason
                LOG.debug("self-test attempt raised", exc_info=True)
                check = Check(getattr(attempt, "__name__", "check").lstrip("_"), False, str(exc))
            if check.ok or self.monotonic() >= deadline:
                return check
            self.sleep(2.0)

    def _service(self) -> Check:
        for unit in self.units:
            state = self.unit_state(unit)
            if state != "active":
                return Check("service", False, f"{unit} is {state}")
        doc = read_status(self.data_dir)
        if doc is None:
            return Check("service", False, f"no {STATUS_FILE} in {self.data_dir}")
        if not box_running(doc, time.time()):
            return Check("service", False, "the box's status file is stale")
        state = (doc.get("health") or {}).get("state", "")
        if state == "booting":
            return Check("service", False, "the box is still starting")
        return Check("service", True, f"running, health {state}")

    def _host(self, bind: str) -> str:
        return "127.0.0.1" if bind in ("0.0.0.0", "::", "") else bind  # noqa: S104

    def _web(self) -> Check:
        host = self._host(self.config.web.bind)
        url = f"http://{host}:{self.web_port}/"
        response = requests.get(url, timeout=10, allow_redirects=False)
        ok = response.status_code < 500
        return Check("web", ok, f"{url} answered {response.status_code}")

    def _association(self) -> Any:
        ae = AE(ae_title=SELFTEST_AE)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        ae.add_requested_context(Verification)
        ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
        host = self._host(self.config.dicom.bind)
        # A plain connect first: a port nobody listens on is told at once (and pynetdicom
        # would leave its refused socket to the garbage collector).
        with socket.create_connection((host, self.dicom_port), timeout=10):
            pass
        assoc = ae.associate(host, self.dicom_port, ae_title=self.config.dicom.ae_title)
        if not assoc.is_established:
            raise ConnectionError(f"no association with {host}:{self.dicom_port}")
        return assoc

    def _echo(self) -> Check:
        assoc = self._association()
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        code = getattr(status, "Status", None)
        return Check("echo", code == 0, f"C-ECHO status {code if code is None else hex(code)}")

    def _store(self) -> Check:
        spool = Spool(self.data_dir)
        index = Index(self.data_dir / "index.sqlite")
        try:
            with tempfile.TemporaryDirectory(prefix="afra-selftest-") as tmp:
                sent = Path(tmp) / "selftest.dcm"
                _study, instance, offset = _test_object(sent)
                assoc = self._association()
                try:
                    status = assoc.send_c_store(sent)
                finally:
                    assoc.release()
                code = getattr(status, "Status", None)
                if code != 0:
                    return Check("store", False, f"C-STORE status {code}")
                stored = index.find_instance(instance)
                if stored is None:
                    return Check("store", False, "stored, but not in the index")
                data = spool.absolute(stored.path).read_bytes()
                if not data.endswith(sent.read_bytes()[offset:]):
                    return Check("store", False, "the stored file differs from what was sent")
                return Check("store", True, f"stored and read back ({len(data)} bytes)")
        finally:
            self.remove_test_objects(index, spool)
            index.close()

    @staticmethod
    def remove_test_objects(index: Index, spool: Spool) -> int:
        """Remove every self-test object (this run's, and any a crash left behind)."""
        paths = index.remove_selftest()
        for rel in paths:
            path = spool.absolute(rel)
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # the study's folder, when now empty
                path.parent.rmdir()
        return len(paths)

    def _index(self) -> Check:
        index = Index(self.data_dir / "index.sqlite")
        try:
            rows = index.studies(1)
        finally:
            index.close()
        return Check("index", True, f"readable ({len(rows)} study row read)")

    def _hub(self) -> Check:
        from afra.uplink.client import HubClient
        from medix.models import Heartbeat, QueueStats

        identity = NodeIdentity(self.data_dir / "identity")
        client = HubClient(identity, timeout=20)
        doc = read_status(self.data_dir) or {}
        health = str((doc.get("health") or {}).get("state", "unknown"))[:32]
        try:
            client.heartbeat(
                Heartbeat(
                    software_version=_version(),
                    policy_version=0,
                    health=health,
                    queue=QueueStats(studies_waiting=0, oldest_waiting_s=0, bytes_waiting=0),
                )
            )
        finally:
            client.close()
        return Check("hub", True, f"{identity.hub_url} answered")

    def run(self, *, timeout: float, hub_wait: float, trial: bool = False) -> Report:
        """Every check; waiting (up to `timeout`) for the box to come up first."""
        report = Report(at=time.time(), trial=trial)
        deadline = self.monotonic() + timeout
        report.checks.append(self._wait(deadline, self._service))
        if self.config.web.enabled:
            report.checks.append(self._wait(deadline, self._web))
        report.checks.append(self._wait(deadline, self._echo))
        report.checks.append(self._wait(deadline, self._store))
        report.checks.append(self._wait(deadline, self._index))
        if NodeIdentity(self.data_dir / "identity").enrolled:
            hub_deadline = self.monotonic() + (hub_wait if trial else 0)
            report.checks.append(self._wait(hub_deadline, self._hub))
        for check in report.checks:
            (LOG.info if check.ok else LOG.error)("self-test %s: %s", check.name, check.detail)
        return report


def _version() -> str:
    from afra.system.release import running_release

    return running_release().version


def save_report(report: Report, directory: Path) -> None:
    from medix.hub.ca import write_public

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_public(directory / REPORT_FILE, json.dumps(report.as_dict(), indent=2).encode())


def read_report(directory: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((directory / REPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def is_trial(record: UpdateRecord, release: Release) -> bool:
    """Whether this boot is the first of a newly installed slot."""
    status = record.current
    return status.state in ("rebooting", "trial") and release.slot == status.slot


def decide(report: Report, *, record: UpdateRecord, rauc: Rauc, release: Release) -> str:
    """Keep or roll back after an update; mark the slot good on an ordinary boot."""
    status = record.current
    if release.slot is None:
        return "pass" if report.ok else "fail"  # not an A/B image: nothing to mark
    if status.state in ("rebooting", "trial") and release.slot != status.slot:
        record.move(
            "rolled_back",
            message=(
                f"the updated system (slot {status.slot}) did not start; "
                f"the box runs {release.version} from slot {release.slot}"
            ),
        )
        _mark(rauc, "good")
        return "rolled_back"
    if status.state in ("rebooting", "trial"):
        if status.state == "rebooting":
            record.move("trial")
        if report.ok:
            _mark(rauc, "good")
            record.move("kept", message=f"{release.version} passed its self-test")
            return "kept"
        why = "; ".join(f"{c.name}: {c.detail}" for c in report.failures)
        record.move(
            "rolled_back",
            message=(
                f"{release.version} failed its self-test ({why}); "
                f"returning to {status.from_version or 'the previous system'}"
            ),
        )
        _mark(rauc, "bad")
        rauc.reboot()
        return "rolled_back"
    _mark(rauc, "good")
    if not report.ok:
        LOG.error("the self-test failed on an ordinary boot; the system is kept (see above)")
        return "fail"
    return "pass"


def _mark(rauc: Rauc, verdict: str) -> None:
    try:
        rauc.mark(verdict)
    except UpdateError as exc:
        LOG.error("%s", exc)
