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
record (afra.update.status). A boot is a trial when it is the first of a newly installed
slot, or of a slot other than the one the box last kept (`confirmed-slot`) while the kept one
can still start (an install RAUC finished after afra's process died). Pass: `rauc status
mark-active` (first in line, and good; a failure to mark raises, so the unit fails and the
shell trial guard rolls back), the update is kept. Fail: mark-bad and a reboot into the other
slot (when RAUC cannot mark, U-Boot's attempts counter rolls back all the same). A boot on the
old slot while the record waits for the new one means the new one never passed its first
start: rolled back. Every other boot (the kept slot, or the one U-Boot fell back to when the
kept one stopped starting) marks its slot active again, pass or fail: a failure is reported,
but rebooting into the other slot would not mend what broke.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
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
from afra.datadir import DataDir
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
OUT_OF_RESOURCES = 0xA700


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    final: bool = False  # a failure that waiting will not mend (a unit in a crash loop)


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


CRASH_LOOP = 3  # restarts after which a unit that is not up counts as failed at once


def unit_state(unit: str) -> str:
    """The unit's state as systemd has it: "active", "activating (start)", "activating
    (auto-restart, 3 restarts)", "failed (failed, 5 restarts)", ..."""
    try:
        done = subprocess.run(
            ["systemctl", "show", "-p", "ActiveState", "-p", "SubState", "-p", "NRestarts", unit],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return describe_unit(done.stdout)


def describe_unit(show: str) -> str:
    """`systemctl show`'s KEY=value lines (in systemd's own order, not the one asked for)."""
    props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
    active = props.get("ActiveState", "unknown") or "unknown"
    if active == "active":
        return "active"
    return f"{active} ({props.get('SubState', '?')}, {props.get('NRestarts', '0')} restarts)"


def _restarts(state: str) -> int:
    found = re.search(r"(\d+) restarts\)$", state)
    return int(found.group(1)) if found else 0


def _reason(exc: Exception) -> str:
    """An exception as a short reason (a refused connection is not worth a traceback)."""
    if isinstance(exc, ConnectionRefusedError | requests.ConnectionError):
        return "connection refused: nothing listens there"
    return f"{exc.__class__.__name__}: {exc}"[:200]


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
                name = getattr(attempt, "__name__", "check").lstrip("_")
                check = Check(name, False, _reason(exc))
            if check.ok or check.final or self.monotonic() >= deadline:
                return check
            self.sleep(2.0)

    def _service(self) -> Check:
        for unit in self.units:
            state = self.unit_state(unit)
            if state != "active":
                final = _restarts(state) >= CRASH_LOOP
                return Check("service", False, f"{unit} is {state}", final=final)
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
        index = Index(DataDir(self.data_dir).index)
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
                if code == OUT_OF_RESOURCES and self._below_floor():
                    # The box refuses studies at its storage floor and says so in its health:
                    # that is the disk's state, not a fault of this system.
                    return Check("store", True, "refused: the disk is at its floor (as it must)")
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

    def _below_floor(self) -> bool:
        floor = self.config.storage.min_free_mb * 2**20
        return floor > 0 and shutil.disk_usage(self.data_dir).free < floor

    @staticmethod
    def remove_test_objects(index: Index, spool: Spool) -> int:
        """Remove every self-test object (this run's, and any a crash left behind)."""
        paths = index.remove_selftest(SELFTEST_AE)
        for rel in paths:
            path = spool.absolute(rel)
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # the study's folder, when now empty
                path.parent.rmdir()
        return len(paths)

    def _index(self) -> Check:
        index = Index(DataDir(self.data_dir).index)
        try:
            rows = index.studies(1)
        finally:
            index.close()
        return Check("index", True, f"readable ({len(rows)} study row read)")

    def _hub(self) -> Check:
        from afra.uplink.client import HubClient
        from medix.models import Heartbeat, QueueStats

        identity = NodeIdentity(DataDir(self.data_dir).identity)
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
        if NodeIdentity(DataDir(self.data_dir).identity).enrolled:
            hub_deadline = self.monotonic() + (hub_wait if trial else 0)
            report.checks.append(self._wait(hub_deadline, self._hub))
        for check in report.checks:
            (LOG.info if check.ok else LOG.error)("self-test %s: %s", check.name, check.detail)
        return report


def _version() -> str:
    from afra.system.release import running_release

    return running_release().version


def save_report(report: Report, directory: Path) -> None:
    from medix.durable import write_public

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_public(directory / REPORT_FILE, json.dumps(report.as_dict(), indent=2).encode())


def read_report(directory: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((directory / REPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


CONFIRMED_FILE = "confirmed-slot"


def confirmed_slot(directory: Path) -> str | None:
    """The slot the box last kept (a passing self-test, or the boot it came with)."""
    try:
        slot = (directory / CONFIRMED_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return slot or None


def _confirm(directory: Path, slot: str) -> None:
    if confirmed_slot(directory) != slot:
        from medix.durable import write_public

        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_public(directory / CONFIRMED_FILE, f"{slot}\n".encode("ascii"))


def trial_reason(
    record: UpdateRecord, release: Release, directory: Path, rauc: Rauc | None = None
) -> str | None:
    """Why this boot must earn its slot, or None for an ordinary boot:

    "update"  the first boot of a newly installed slot (the record says so);
    "unkept"  a slot other than the one the box last kept, while that one can still start:
              an install RAUC finished after afra's process died. (When the kept slot has
              no attempts left, U-Boot fell back here because the kept one stopped working:
              this slot is then the one to keep, not one to mark bad.)"""
    if release.slot is None:
        return None
    status = record.current
    if status.state in ("rebooting", "trial") and release.slot == status.slot:
        return "update"
    kept = confirmed_slot(directory)
    if kept is None or kept == release.slot or rauc is None:
        return None
    try:
        kept_root = rauc.status().root(kept)
    except UpdateError as exc:
        LOG.error("cannot tell whether slot %s can still start (%s): an ordinary boot", kept, exc)
        return None
    return "unkept" if kept_root is not None and kept_root.boot_status == "good" else None


def decide(
    report: Report,
    *,
    record: UpdateRecord,
    rauc: Rauc,
    release: Release,
    directory: Path | None = None,
) -> str:
    """Keep or roll back a slot on trial; on an ordinary boot keep the slot as the one to
    start. A trial that passes is kept only once RAUC marked it (a failure raises: the unit
    fails and the trial guard rolls back); one that fails is marked bad and the box restarts
    (if RAUC cannot mark it, U-Boot's attempts counter rolls back all the same)."""
    status = record.current
    slot = release.slot
    if slot is None:
        return "pass" if report.ok else "fail"  # not an A/B image: nothing to mark
    directory = directory or record.path.parent
    came_back = status.state in ("rebooting", "trial") and slot != status.slot
    if came_back:
        record.move(
            "rolled_back",
            message=(
                f"the updated system (slot {status.slot}) did not pass its first start; "
                f"the box runs {release.version} from slot {slot}"
            ),
        )
    reason = trial_reason(record, release, directory, rauc)
    if reason is not None:
        if record.current.state == "rebooting":
            record.move("trial")
        if report.ok:
            rauc.mark("active")  # this slot first, with its attempts back; raises if not
            _confirm(directory, slot)
            if record.current.state == "trial":
                record.move("kept", message=f"{release.version} passed its self-test")
            return "kept"
        why = "; ".join(f"{c.name}: {c.detail}" for c in report.failures)
        _mark(rauc, "bad")
        if record.current.state == "trial":
            record.move(
                "rolled_back",
                message=(
                    f"{release.version} failed its self-test ({why}); "
                    f"returning to {status.from_version or 'the previous system'}"
                ),
            )
        else:
            LOG.error("slot %s, which the box had not kept, failed its self-test (%s)", slot, why)
        rauc.reboot()
        return "rolled_back"
    # An ordinary boot of the kept slot (or the card's first, or the one U-Boot fell back to):
    # it stays first in line. A failure is reported but the slot is kept; the other slot
    # would not mend it.
    _mark(rauc, "active")
    _confirm(directory, slot)
    if came_back:
        return "rolled_back"
    if not report.ok:
        LOG.error("the self-test failed on an ordinary boot; the system is kept (see above)")
        return "fail"
    return "pass"


def _mark(rauc: Rauc, verdict: str) -> None:
    try:
        rauc.mark(verdict)
    except UpdateError as exc:
        LOG.error("%s", exc)
