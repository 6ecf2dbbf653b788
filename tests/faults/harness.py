"""The kill harness: the box as a subprocess, SIGKILLed at random moments, restarted, checked.

A real reference hub runs in the test's process for the whole run (the box is what dies). Each
round starts `afra run`, picks a phase and kills the box with SIGKILL at a random moment in it:

- boot: between the spawn and a little after systemd would hear READY;
- receive: while a modality (pynetdicom, one association, the files' bytes as they are) sends
  a new study; every C-STORE answered 0x0000 is an acknowledgement the box owes;
- upload: after a study was acknowledged whole, while the box completes and uploads it.

After the last round the box runs once more until it has delivered everything, and the books
are checked: every acknowledged instance byte-exact at the hub (or still in the store), no SOP
instance in two committed uploads, no committed upload short of instances or with an object
whose bytes differ from what was acknowledged.

Readiness is systemd's own signal: the box is given a NOTIFY_SOCKET and says READY=1.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from afra.store.index import Index
from afra.uplink.client import enrol
from afra.uplink.identity import NodeIdentity
from medix.hub.server import HubServer
from tests.dicom.conftest import chunked_send
from tests.dicomgen import make_ct_series
from tests.peers import free_port

LOOPBACK = "127.0.0.1"
PHASES = ("boot", "receive", "upload")


def dataset_bytes(data: bytes) -> bytes:
    """A Part 10 file's data set: what travelled in the C-STORE, without preamble and meta."""
    if data[128:132] != b"DICM":
        raise ValueError("not a Part 10 file")
    # (0002,0000) UL, explicit VR: tag 4, VR 2, length 2, value 4 — the meta group's length.
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length :]


@dataclass
class Books:
    """What the box acknowledged, and what the run counted."""

    acked: dict[str, bytes] = field(default_factory=dict)  # SOP Instance UID -> data set
    study_of: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> study UID
    kills: int = 0
    by_phase: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))


@dataclass(frozen=True)
class Verdict:
    kills: int
    acked: int
    acked_lost: int
    hub_duplicates: int
    partial_uploads: int
    lost: tuple[str, ...]

    def lines(self) -> list[str]:
        return [
            f"faults_kills={self.kills} acked_lost={self.acked_lost} "
            f"hub_duplicates={self.hub_duplicates} partial_uploads={self.partial_uploads}"
        ]


def send_study(
    host: str,
    port: int,
    files: list[Path],
    books: Books,
    *,
    aet: str,
    timeout: float = 10,
    stop: threading.Event | None = None,
    acked_one: Callable[[str], None] | None = None,
) -> int:
    """A modality: `files` on one association, their own bytes on the wire; each C-STORE
    answered 0x0000 goes into `books` with its data set. Returns how many were acknowledged."""
    ae = AE(ae_title=aet)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    acked = 0
    assoc = ae.associate(host, port, ae_title="AFRA")
    if not assoc.is_established:
        return 0
    try:
        with chunked_send():
            for path in files:
                if stop is not None and stop.is_set():
                    break
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        status = assoc.send_c_store(path)
                    except RuntimeError as exc:
                        # The box was killed between two C-STOREs: pynetdicom saw the
                        # association end after the check above. Nothing more is answered.
                        if assoc.is_established or "must be established" not in str(exc):
                            raise
                        break
                if not assoc.is_established or "Status" not in status:
                    break
                if int(status.Status) == 0x0000:
                    ds = dcmread(path, stop_before_pixels=True)
                    uid = str(ds.SOPInstanceUID)
                    books.acked[uid] = dataset_bytes(path.read_bytes())
                    books.study_of[uid] = str(ds.StudyInstanceUID)
                    if acked_one is not None:
                        acked_one(uid)
                    acked += 1
        if assoc.is_established:
            assoc.release()
    finally:
        if not assoc.is_released and not assoc.is_aborted:
            assoc.abort()
    return acked


class Notify:
    """systemd's side of sd_notify: a datagram socket the box reports READY=1 to."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
        self.sock.settimeout(timeout)
        while True:
            try:
                message = self.sock.recv(4096)
            except TimeoutError:
                raise AssertionError(f"the box did not say READY=1 in {timeout} s") from None
            if b"READY=1" in message.split(b"\n"):
                return
            if proc.poll() is not None:
                raise AssertionError(f"the box exited with {proc.returncode} before READY")

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(4096)
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()


class KillHarness:
    def __init__(self, work: Path, hub: HubServer, *, seed: int, instances: int = 12) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.hub = hub
        self.rng = random.Random(seed)
        self.instances = instances
        self.data = work / "box"
        self.books = Books()
        self.port = free_port()
        self.config = work / "afra.toml"
        self.notify = Notify(work / "notify.sock")
        self.log = (work / "box.log").open("ab")
        self._studies = 0
        identity = NodeIdentity(self.data / "identity")
        enrol(
            identity,
            hub_url=hub.url,
            pairing_code=hub.new_pairing_code(),
            ca_file=Path(hub.ca_pem_path),
            node_name="afra-faults",
        )
        self.config.write_text(
            f'[box]\ndata_dir = "{self.data}"\nlog_level = "INFO"\n'
            f'[dicom]\nbind = "{LOOPBACK}"\nport = {self.port}\nallow_any_peer = true\n'
            "[storage]\nmin_free_mb = 0\n"
            "[study]\nstable_age = 0.5\nscan_interval = 0.2\n"
            "[hub]\nretry_base = 0.2\nretry_cap = 1.0\nrequest_timeout = 10\n"
            "[web]\nenabled = false\n[mdns]\nenabled = false\n"
            '[panel]\npin_factory = "mock"\n',
            encoding="utf-8",
        )

    # -- the box ------------------------------------------------------------------------------

    def spawn(self) -> subprocess.Popen[bytes]:
        self.notify.drain()
        afra = str(Path(sys.executable).parent / "afra")
        env = {**os.environ, "NOTIFY_SOCKET": self.notify.path}
        env.pop("WATCHDOG_USEC", None)
        return subprocess.Popen(
            [afra, "--config", str(self.config), "run"],
            env=env,
            stdout=self.log,
            stderr=self.log,
        )

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        self.books.kills += 1

    # -- a modality ---------------------------------------------------------------------------

    def new_study(self) -> list[Path]:
        self._studies += 1
        name = f"study-{self._studies:04d}"
        return make_ct_series(
            self.work / "sent" / name,
            n=self.instances,
            rows=48,
            cols=48,
            patient_id=name,
            seed=self._studies,
        )

    def send(self, files: list[Path], stop: threading.Event | None = None) -> int:
        """Send `files` on one association; record each acknowledgement. Returns how many."""
        return send_study(LOOPBACK, self.port, files, self.books, aet="FAULTSCU", stop=stop)

    # -- one round ------------------------------------------------------------------------------

    def round(self) -> str:
        phase = PHASES[sum(self.books.by_phase.values()) % len(PHASES)]  # each in turn
        proc = self.spawn()
        try:
            if phase == "boot":
                self._kill_after(proc, self.rng.uniform(0.0, 2.5))
            else:
                self.notify.wait_ready(proc)
                if phase == "receive":
                    self._kill_while_receiving(proc)
                else:
                    files = self.new_study()
                    self.send(files)
                    self._kill_after(proc, self.rng.uniform(0.0, 2.0))
        finally:
            if proc.poll() is None:
                self.kill(proc)
        self.books.by_phase[phase] += 1
        return phase

    def _kill_after(self, proc: subprocess.Popen[bytes], delay: float) -> None:
        done = threading.Event()
        done.wait(delay)  # a random moment: the point of the exercise, not synchronisation
        self.kill(proc)

    def _kill_while_receiving(self, proc: subprocess.Popen[bytes]) -> None:
        files = self.new_study()
        timer = threading.Timer(self.rng.uniform(0.0, 0.6), lambda: self.kill(proc))
        timer.start()
        try:
            self.send(files)
        finally:
            timer.join()

    # -- the end ----------------------------------------------------------------------------

    def settle(self, wait: Callable[[Callable[[], bool], float, str], None]) -> None:
        """Run the box once more until every acknowledged study is delivered, then stop it."""
        proc = self.spawn()
        try:
            self.notify.wait_ready(proc)
            wanted = set(self.books.study_of.values())
            wait(lambda: wanted <= self._delivered(), 300.0, "every acknowledged study delivered")
        finally:
            proc.terminate()
            proc.wait(timeout=60)

    def _delivered(self) -> set[str]:
        index = Index(self.data / "index.sqlite")
        try:
            return {s.study_uid for s in index.studies(limit=1_000_000) if s.state == "delivered"}
        finally:
            index.close()

    def verdict(self) -> Verdict:
        committed = [s for s in self.hub.studies() if s["state"] == "committed"]
        at_hub: dict[str, list[bytes]] = {}
        partial = 0
        for upload in committed:
            if upload["stored_instances"] != upload["instance_count"]:
                partial += 1
            for row in self.hub.hub.store.instances(upload["upload_id"]):
                data = self.hub.instance_bytes(upload["upload_id"], row.sop_instance_uid)
                at_hub.setdefault(row.sop_instance_uid, []).append(dataset_bytes(data))
        duplicates = sum(len(copies) - 1 for copies in at_hub.values() if len(copies) > 1)
        lost: list[str] = []
        for uid, sent in self.books.acked.items():
            copies = at_hub.get(uid)
            if copies:
                if any(copy != sent for copy in copies):
                    partial += 1
                continue
            if not self._in_store(uid, sent):
                lost.append(uid)
        return Verdict(
            kills=self.books.kills,
            acked=len(self.books.acked),
            acked_lost=len(lost),
            hub_duplicates=duplicates,
            partial_uploads=partial,
            lost=tuple(lost),
        )

    def _in_store(self, uid: str, sent: bytes) -> bool:
        index = Index(self.data / "index.sqlite")
        try:
            held = index.find_instance(uid)
        finally:
            index.close()
        if held is None:
            return False
        return dataset_bytes((self.data / held.path).read_bytes()) == sent

    def close(self) -> None:
        self.notify.close()
        self.log.close()
