"""Shared parts of the benchmarks (bench/ingest.py, bench/memory.py).

- Receivers: one :class:`Receiver` interface over DCMTK storescp, Orthanc and the AFRA box,
  each started fresh (own temp storage under ``bench/out/tmp``) and stopped after use.
- Measurement: :func:`measure_send` runs one or more storescu processes at once against a
  receiver and returns wall time, the receiver process tree's CPU time and peak RSS.
- Data: :func:`ensure_ct_series` / :func:`ensure_large_object` generate the synthetic data once
  into ``bench/out`` (atomically: a half-written set is never reused).

Units: MB here means MiB (2**20 bytes), for throughput and for RSS alike.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import psutil

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "bench"
OUT_DIR = BENCH_DIR / "out"
TMP_ROOT = OUT_DIR / "tmp"
VENV_BIN = REPO / ".venv" / "bin"
AFRA_EXE = VENV_BIN / "afra"


def box_command(config_path: Path) -> list[str]:
    """How the box is started: ``.venv/bin/afra --config <toml> run``.

    ``--config`` is an option of ``afra`` itself (as in ``make run``), so it comes before the
    ``run`` subcommand; ``afra run --config X`` is refused by the CLI's argument parser.
    """
    return [str(AFRA_EXE), "--config", str(config_path), "run"]


MIB = 1024 * 1024
SAMPLE_INTERVAL_S = 0.05

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests import dicomgen, peers  # noqa: E402
from tests.peers import LOOPBACK, PeerError  # noqa: E402


class BenchError(RuntimeError):
    """A benchmark run failed (receiver did not start, sender failed, wrong stored count)."""


def log(msg: str) -> None:
    """Progress goes to stderr so that stdout carries only the result lines."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- process tree
def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of ``pid`` and its descendants, including reaped children
    (``children_user``/``children_system``), so before/after deltas count short-lived
    children such as storescp's forked association handlers."""
    total = 0.0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine, every CPU summed, from /proc/stat.

    Busy is user, nice, system, irq and softirq time: what the receiver, the senders and the
    kernel serving them used. Idle, iowait and steal (the hypervisor's) are the rest. Over a
    run, busy / all says how close the machine was to having no CPU left.
    """
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + t.irq + t.softirq
    return busy, busy + t.idle + t.iowait + t.steal


def tree_rss_bytes(pid: int) -> int:
    """Sum of RSS over ``pid`` and its descendants."""
    total = 0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_info().rss
    return total


class RssSampler:
    """Samples the RSS of a process tree every ``interval`` seconds in a thread; keeps the max."""

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL_S) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_bytes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.peak_bytes = max(self.peak_bytes, tree_rss_bytes(self.pid))
            self.samples += 1
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.peak_bytes = max(self.peak_bytes, tree_rss_bytes(self.pid))


# --------------------------------------------------------------------------- receivers
class Receiver(abc.ABC):
    """A DICOM storage SCP under test: start(), stop(), pid, host/port/aet, stored_count()."""

    name: str
    aet: str
    host: str = LOOPBACK

    @property
    @abc.abstractmethod
    def port(self) -> int: ...

    @property
    @abc.abstractmethod
    def pid(self) -> int: ...

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the process and remove its temp storage."""

    @abc.abstractmethod
    def stored_count(self) -> int:
        """How many instances the receiver holds now."""

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class StoreSCPReceiver(Receiver):
    """DCMTK storescp: ``+xa -pm --fork`` into a temp dir (default, not bit-preserving,
    write mode; no fsync). Forking so that concurrent senders are served concurrently."""

    name = "storescp"

    def __init__(self) -> None:
        self.aet = "STORESCP"
        self._scp = peers.StoreSCP(self.aet, fork=True, bit_preserving=False, tmp_root=TMP_ROOT)

    @property
    def port(self) -> int:
        return self._scp.port

    @property
    def pid(self) -> int:
        return self._scp.pid

    def start(self) -> None:
        self._scp.start()

    def stop(self) -> None:
        self._scp.cleanup()

    def stored_count(self) -> int:
        return len(self._scp.files())


class OrthancReceiver(Receiver):
    """Orthanc 1.10 with fresh storage, durable default (SyncStorageArea true), no plugins."""

    name = "orthanc"

    def __init__(self) -> None:
        self.aet = "ORTHANC"
        self._orthanc = peers.Orthanc(self.aet, tmp_root=TMP_ROOT)

    @property
    def port(self) -> int:
        return self._orthanc.dicom_port

    @property
    def pid(self) -> int:
        return self._orthanc.pid

    def start(self) -> None:
        self._orthanc.start()

    def stop(self) -> None:
        self._orthanc.cleanup()

    def stored_count(self) -> int:
        return int(self._orthanc.statistics()["CountInstances"])


class BoxReceiver(Receiver):
    """The AFRA box: :func:`box_command` (or ``command(config)``) with a fresh data_dir.

    Ready when its process tree listens on the DICOM port and then on the wizard's port: `afra
    run` opens the wizard last, so from then on the box is done starting and is measured in
    the same state as storescp and Orthanc, which are ready when they listen. (Measured
    from the DICOM port alone, the first 1-2 s of every run also timed the box loading its
    web page, compiling its sources where no bytecode is cached: 140-150 instances/s instead
    of 180-210 from one association.) Stopped with SIGTERM to the
    main process (it exits cleanly on SIGTERM), then SIGKILL to its group after 30 s. Stored
    instances are the ``*.dcm`` files under ``<data_dir>/objects`` (recursively).
    """

    name = "box"

    def __init__(
        self,
        command: Callable[[Path], list[str]] | None = None,
        startup_timeout: float = 90.0,
        receive_processes: int | None = None,
    ) -> None:
        self.aet = "AFRA"
        # dicom.receive_processes (None: the box's default)
        self.receive_processes = receive_processes
        self.command = command or box_command
        self.startup_timeout = startup_timeout
        TMP_ROOT.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="afra-box-", dir=TMP_ROOT))
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "afra.toml"
        self.log_path = self.workdir / "box.log"
        self._port = peers.free_port()
        self._web_port = peers.free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.exit_code: int | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BenchError("box is not running")
        return self._proc.pid

    def config_text(self) -> str:
        return (
            "[box]\n"
            f"data_dir = {json.dumps(str(self.data_dir))}\n"
            "[dicom]\n"
            f"ae_title = {json.dumps(self.aet)}\n"
            f"bind = {json.dumps(LOOPBACK)}\n"
            f"port = {self._port}\n"
            "allow_any_peer = true\n"
            + (
                f"receive_processes = {self.receive_processes}\n"
                if self.receive_processes is not None
                else ""
            )
            + "[web]\n"
            f"bind = {json.dumps(LOOPBACK)}\n"
            f"port = {self._web_port}\n"
        )

    def start(self) -> None:
        cmd = self.command(self.config_path)
        exe = cmd[0]
        if shutil.which(exe) is None:
            raise BenchError(
                f"box command not found: {exe} (is the firmware installed in the "
                f"venv? `pip install -e .`)"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        self._log = self.log_path.open("wb")
        env = peers.scu_env()  # same environment as the other receivers (TCP_NODELAY=1)
        self._proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            env=env,
            start_new_session=True,
        )
        try:
            for port in (self._port, self._web_port):
                peers.wait_listening(
                    self._proc, port, self.startup_timeout, log=self.log_path, what="box"
                )
        except PeerError as exc:
            raise BenchError(str(exc)) from exc

    def stop(self) -> None:
        if self._proc is not None:
            running = self._proc.poll() is None
            code = peers.stop_process_group(self._proc, timeout=30.0, term_group=False)
            self.exit_code = code
            if running and code not in (0, None):
                log(
                    f"warning: box exited with {code} on SIGTERM; log tail:\n"
                    + "\n".join(self.log_text().splitlines()[-20:])
                )
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stored_count(self) -> int:
        objects = self.data_dir / "objects"
        if not objects.is_dir():
            return 0
        return sum(1 for p in objects.rglob("*.dcm") if p.is_file())


RECEIVERS: dict[str, Callable[[], Receiver]] = {
    "storescp": StoreSCPReceiver,
    "orthanc": OrthancReceiver,
    "box": BoxReceiver,
}


# --------------------------------------------------------------------------- measurement
@dataclass(frozen=True)
class RunResult:
    """One measured send: ``senders`` storescu processes at once to one receiver."""

    receiver: str
    senders: int
    instances: int
    payload_bytes: int
    wall_s: float
    cpu_s: float
    peak_rss_bytes: int
    # The whole machine's busy share over the run (see machine_cpu_seconds), all CPUs.
    machine_busy: float = 0.0


@dataclass(frozen=True)
class Summary:
    """Median wall time / CPU over runs; peak RSS is the max over all runs."""

    receiver: str
    senders: int
    runs: int
    instances: int
    instances_per_s: float
    mb_per_s: float
    cpu_ms_per_instance: float
    peak_rss_mb: float
    machine_busy: float = 0.0

    def line(self, label: str | None = None) -> str:
        return (
            f"receiver={label or self.receiver} instances_per_s={self.instances_per_s:.1f} "
            f"mb_per_s={self.mb_per_s:.1f} cpu_ms_per_instance={self.cpu_ms_per_instance:.2f} "
            f"peak_rss_mb={self.peak_rss_mb:.1f} machine_busy={self.machine_busy:.2f}"
        )


def summarize(results: Sequence[RunResult]) -> Summary:
    if not results:
        raise ValueError("no results")
    wall = statistics.median(r.wall_s for r in results)
    cpu = statistics.median(r.cpu_s for r in results)
    first = results[0]
    return Summary(
        receiver=first.receiver,
        senders=first.senders,
        runs=len(results),
        instances=first.instances,
        instances_per_s=first.instances / wall,
        mb_per_s=first.payload_bytes / MIB / wall,
        cpu_ms_per_instance=cpu * 1000.0 / first.instances,
        peak_rss_mb=max(r.peak_rss_bytes for r in results) / MIB,
        machine_busy=statistics.median(r.machine_busy for r in results),
    )


def split(files: Sequence[Path], parts: int) -> list[list[Path]]:
    """``parts`` contiguous, near-equal slices of ``files`` (300 / 4 -> 4 x 75)."""
    n = len(files)
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [list(files[bounds[i] : bounds[i + 1]]) for i in range(parts)]


def _wait_stored(receiver: Receiver, expected: int, settle_s: float = 5.0) -> None:
    count = receiver.stored_count()
    if count == expected:
        return
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline and count != expected:
        time.sleep(0.1)
        count = receiver.stored_count()
    if count != expected:
        extra = ""
        if isinstance(receiver, BoxReceiver):
            extra = "\n--- box log tail ---\n" + "\n".join(receiver.log_text().splitlines()[-30:])
        raise BenchError(f"{receiver.name}: stored {count} instances, expected {expected}{extra}")
    log(
        f"warning: {receiver.name} reached {expected} stored instances only after the senders "
        f"had finished (stored count lagged the C-STORE responses)"
    )


def _kill_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _expire(procs: Sequence[subprocess.Popen[bytes]], late: threading.Event) -> None:
    """The senders' time is up: kill those still running (their waits then return)."""
    late.set()
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()


def measure_send(
    receiver: Receiver,
    batches: Sequence[Sequence[Path]],
    *,
    timeout: float = 900.0,
    dimse_timeout: int = 120,
    expected_stored: int | None = None,
) -> RunResult:
    """Send each batch with its own storescu (one association each), all at once.

    Wall time runs from just before the first storescu starts to the exit of the last one.
    CPU is the receiver tree's user+sys delta over that window; RSS is sampled every 50 ms;
    the machine's busy share is taken over the same window (senders and kernel included).
    Afterwards the receiver must hold ``expected_stored`` instances (default: all files sent).
    """
    files = [f for batch in batches for f in batch]
    payload = sum(f.stat().st_size for f in files)
    pid = receiver.pid
    cmds = [
        peers.storescu_command(
            receiver.host,
            receiver.port,
            list(batch),
            aec=receiver.aet,
            aet=f"BENCH{i}",
            dimse_timeout=dimse_timeout,
        )
        for i, batch in enumerate(batches)
    ]
    env = peers.scu_env()
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile()) for _ in cmds]
        stack.callback(_kill_all, procs)
        cpu0 = tree_cpu_seconds(pid)
        busy0, all0 = machine_cpu_seconds()
        with RssSampler(pid) as sampler:
            t0 = time.perf_counter()
            for cmd, out in zip(cmds, logs, strict=True):
                procs.append(
                    subprocess.Popen(
                        cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
                    )
                )
            # A blocking wait returns when the last sender exits; Popen.wait(timeout=...)
            # polls with sleeps of up to 50 ms, which rounded every run's wall time up by as
            # much (a fifth of a 0.25 s storescp run). The timeout is a timer instead.
            late = threading.Event()
            watchdog = threading.Timer(timeout, _expire, (procs, late))
            watchdog.start()
            try:
                for proc in procs:
                    proc.wait()
            finally:
                watchdog.cancel()
            wall = time.perf_counter() - t0
            busy1, all1 = machine_cpu_seconds()
            if late.is_set():
                raise BenchError(f"storescu to {receiver.name} still running after {timeout:.0f}s")
        cpu = tree_cpu_seconds(pid) - cpu0
        for i, (proc, out) in enumerate(zip(procs, logs, strict=True)):
            if proc.returncode != 0:
                out.seek(0)
                output = out.read().decode(errors="replace")[-4000:]
                raise BenchError(
                    f"storescu #{i} to {receiver.name} exited with {proc.returncode}:\n{output}"
                )
    _wait_stored(receiver, len(files) if expected_stored is None else expected_stored)
    return RunResult(
        receiver=receiver.name,
        senders=len(batches),
        instances=len(files),
        payload_bytes=payload,
        wall_s=wall,
        cpu_s=cpu,
        peak_rss_bytes=sampler.peak_bytes,
        machine_busy=(busy1 - busy0) / (all1 - all0) if all1 > all0 else 0.0,
    )


def run_fresh(
    factory: Callable[[], Receiver],
    batches: Sequence[Sequence[Path]],
    **kwargs: Any,
) -> RunResult:
    """Start a fresh receiver, measure one send, stop it (storage removed).

    The disk is quiesced first (see :func:`quiesce_disk`), outside the measured window.
    """
    quiesce_disk()
    with factory() as receiver:
        return measure_send(receiver, batches, **kwargs)


def quiesce_disk() -> None:
    """Write back every dirty page on the machine before a receiver starts.

    storescp never fsyncs: the 150 MB it took in are still dirty in the page cache when the
    next receiver starts, and the kernel writes them back during that receiver's measured
    window, so a receiver that does flush (Orthanc, the box) waited on the previous
    receiver's data (measured: the box took 118-144 instances/s after storescp, 174-196/s
    alone). sync(2) returns once the writeback is done; each run then starts on a quiet disk.
    """
    os.sync()


# --------------------------------------------------------------------------- data
def _ready_dir(path: Path, expected: int) -> list[Path] | None:
    if not path.is_dir():
        return None
    files = sorted(path.glob("*.dcm"))
    return files if len(files) == expected else None


def ensure_ct_series(
    path: Path, n: int, rows: int, cols: int, *, patient_id: str, seed: int
) -> list[Path]:
    """The synthetic CT series in ``path`` (generated once; reused when complete)."""
    files = _ready_dir(path, n)
    if files is not None:
        return files
    if path.exists():
        shutil.rmtree(path)
    part = path.with_name(path.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    log(f"generating {n} x {rows}x{cols} CT instances into {path}")
    t0 = time.perf_counter()
    dicomgen.make_ct_series(part, n=n, rows=rows, cols=cols, patient_id=patient_id, seed=seed)
    part.rename(path)
    log(f"generated in {time.perf_counter() - t0:.1f}s")
    files = _ready_dir(path, n)
    if files is None:
        raise BenchError(f"generation of {path} did not produce {n} files")
    return files


CT300_DIR = OUT_DIR / "ct300"


def ct300() -> list[Path]:
    """The 300-instance synthetic CT series (512x512, 16-bit) every benchmark sends: one set
    of parameters, so that whichever benchmark generates it first makes the same data."""
    return ensure_ct_series(CT300_DIR, 300, 512, 512, patient_id="SYN0001", seed=0)


@contextlib.contextmanager
def afra_process(
    data: Path, config_toml: str, *, startup_timeout: float = 90.0
) -> Iterator[subprocess.Popen[bytes]]:
    """`afra run` with `config_toml` (written to `data/afra.toml`), until it says it is
    listening; SIGTERM when the block ends."""
    data.mkdir(parents=True, exist_ok=True)
    config = data / "afra.toml"
    config.write_text(config_toml)
    log_path = data / "box.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(box_command(config), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + startup_timeout
        while b"listening" not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the box did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@contextlib.contextmanager
def reference_hub(work: Path) -> Iterator[tuple[str, Path, HubAdmin]]:
    """A `medix-hub` process on a free loopback port: its URL, CA file and admin client."""
    port = peers.free_port()
    log_path = work / "hub.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "medix-hub"), "--data-dir", str(work / "hub"), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while b"ca: " not in log_path.read_bytes():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise BenchError(f"the reference hub did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        found = re.search(rb"ca: (\S+)", log_path.read_bytes())
        assert found is not None
        url, ca = f"https://127.0.0.1:{port}", Path(found.group(1).decode())
        token = (work / "hub" / "admin-token").read_text().strip()
        yield url, ca, HubAdmin(url, ca, token)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


class HubAdmin:
    """The reference hub's admin API (bearer token, the hub's CA)."""

    def __init__(self, url: str, ca: Path, token: str) -> None:
        import requests

        self.url, self.ca = url, ca
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, body: Any = None) -> Any:
        answer = self.session.request(
            method, self.url + path, json=body, verify=str(self.ca), timeout=30
        )
        answer.raise_for_status()
        return answer.json()

    def pairing_code(self) -> str:
        return str(self.call("POST", "/admin/pairing-codes")["code"])


def ensure_large_object(path: Path, size_bytes: int) -> Path:
    """One ~``size_bytes`` instance at ``path`` (generated once, streamed to disk)."""
    if path.is_file() and path.stat().st_size >= size_bytes:
        return path
    log(f"generating a {size_bytes / MIB:.0f} MiB instance at {path}")
    t0 = time.perf_counter()
    dicomgen.make_large_object(path, size_bytes)
    log(f"generated in {time.perf_counter() - t0:.1f}s")
    return path


def warm_page_cache(files: Sequence[Path]) -> None:
    """Read the files once so that every receiver's first run sees them cached."""
    for f in files:
        with f.open("rb") as fh:
            while fh.read(MIB):
                pass


def prepare_tmp_root() -> None:
    """A clean ``bench/out/tmp`` (leftovers of an interrupted run are removed)."""
    shutil.rmtree(TMP_ROOT, ignore_errors=True)
    TMP_ROOT.mkdir(parents=True, exist_ok=True)
