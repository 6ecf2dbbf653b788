"""Real DICOM peers for the tests and the benchmarks: Orthanc and the DCMTK tools.

Plain functions and classes (no pytest). Everything listens on and talks to 127.0.0.1 only,
every process is started in its own session so that it and its children can be stopped as a
group, and every wait has a timeout.

- :class:`Orthanc`: ``/usr/sbin/Orthanc`` with a generated config, its own temp folders and
  free loopback ports; REST helpers (upload, instances, studies, store_to, ...).
- :class:`StoreSCP`: DCMTK ``storescp`` writing what it receives into a temp folder.
- :func:`storescu` / :func:`echoscu`: run the DCMTK SCUs once and return the completed process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psutil
import requests

__all__ = [
    "LOOPBACK",
    "ORTHANC_BINARY",
    "PROPOSE_OPTIONS",
    "Orthanc",
    "PeerError",
    "StoreSCP",
    "echoscu",
    "file_transfer_syntax",
    "free_port",
    "listening_ports",
    "open_server_connections",
    "propose_option",
    "scu_env",
    "stop_process_group",
    "storescu",
    "storescu_command",
    "wait_listening",
]

LOOPBACK = "127.0.0.1"
ORTHANC_BINARY = "/usr/sbin/Orthanc"

# DCMTK association options shared by the SCUs: fail fast on connect/ACSE, never hang forever.
_SCU_TIMEOUTS = ("-to", "10", "-ta", "30", "-ts", "60")


class PeerError(RuntimeError):
    """A peer failed to start, answer or finish."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def scu_env() -> dict[str, str]:
    """Environment for the DCMTK tools: Nagle off (TCP_NODELAY=1), no inherited proxies."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["TCP_NODELAY"] = "1"
    return env


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN state owned by ``pid`` or any of its descendants."""
    ports: set[int] = set()
    for proc in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr:
                    ports.add(conn.laddr.port)
    return ports


# /proc/net/tcp states of a connection its server side has not closed yet: SYN_RECV,
# ESTABLISHED, CLOSE_WAIT (the peer has closed, the server not).
_SERVER_OPEN_STATES = frozenset({"03", "01", "08"})


def open_server_connections(port: int) -> int:
    """Connections to ``port`` on this host that the server's side has not closed: those it
    holds and those still waiting in its accept queue, which no process owns yet (so psutil
    cannot see them; /proc/net/tcp lists every socket of the network namespace)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                count += local_port == port and fields[3] in _SERVER_OPEN_STATES
    return count


def wait_listening(
    proc: subprocess.Popen[Any],
    port: int,
    timeout: float = 30.0,
    *,
    log: Path | None = None,
    what: str = "process",
) -> None:
    """Wait until ``proc`` (or a descendant) has a listening socket on ``port``.

    A LISTEN socket means the kernel completes connections to it, so the port accepts
    connections; checking this way opens no association that the peer would log. Raises
    :class:`PeerError` (with the tail of ``log``) if the process exits or time runs out.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PeerError(
                f"{what} exited with {proc.returncode} before listening on {port}{_log_tail(log)}"
            )
        if port in listening_ports(proc.pid):
            return
        time.sleep(0.02)
    raise PeerError(
        f"{what} did not listen on {LOOPBACK}:{port} within {timeout:.0f}s{_log_tail(log)}"
    )


def _log_tail(log: Path | None, n: int = 40) -> str:
    if log is None or not log.exists():
        return ""
    lines = log.read_text(errors="replace").splitlines()[-n:]
    return f"\n--- last lines of {log} ---\n" + "\n".join(lines)


def stop_process_group(
    proc: subprocess.Popen[Any], timeout: float = 15.0, *, term_group: bool = True
) -> int | None:
    """Stop ``proc``, started with ``start_new_session=True`` so it leads its process group.

    SIGTERM goes to the whole group (or to ``proc`` alone with ``term_group=False``, letting
    it stop its own children); after ``timeout`` seconds the group gets SIGKILL. Whatever is
    left in the group afterwards is killed too. Returns ``proc``'s exit code.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if term_group:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    # Stragglers (e.g. forked storescp children) left in the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


def _run(
    cmd: Sequence[str], *, check: bool, timeout: float, what: str
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            env=scu_env(),
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise PeerError(f"{what} timed out after {timeout:.0f}s: {' '.join(cmd[:12])}") from exc
    if check and result.returncode != 0:
        raise PeerError(
            f"{what} failed with exit code {result.returncode}\n"
            f"command: {' '.join(cmd[:12])}{' ...' if len(cmd) > 12 else ''}\n"
            f"stderr:\n{result.stderr}\nstdout:\n{result.stdout}"
        )
    return result


# storescu's proposal option per transfer syntax of the files to send (DCMTK 3.6.7).
PROPOSE_OPTIONS: dict[str, str] = {
    "1.2.840.10008.1.2": "-xi",  # implicit VR little endian
    "1.2.840.10008.1.2.1": "-xe",  # explicit VR little endian
    "1.2.840.10008.1.2.2": "-xb",  # explicit VR big endian
    "1.2.840.10008.1.2.1.99": "-xd",  # deflated explicit VR little endian
    "1.2.840.10008.1.2.5": "-xr",  # RLE lossless
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG baseline (8 bit)
    "1.2.840.10008.1.2.4.51": "-xx",  # JPEG extended (12 bit)
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "-xu",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.4.100": "-xm",  # MPEG2 MP@ML
    "1.2.840.10008.1.2.4.101": "-xh",  # MPEG2 MP@HL
    "1.2.840.10008.1.2.4.102": "-xn",  # MPEG-4 AVC/H.264 HP@4.1
    "1.2.840.10008.1.2.4.103": "-xl",  # MPEG-4 AVC/H.264 BD-compatible
    "1.2.840.10008.1.2.4.104": "-x2",  # MPEG-4 AVC/H.264 HP@4.2 2D
    "1.2.840.10008.1.2.4.105": "-x3",  # MPEG-4 AVC/H.264 HP@4.2 3D
    "1.2.840.10008.1.2.4.106": "-xo",  # MPEG-4 AVC/H.264 stereo HP@4.2
    "1.2.840.10008.1.2.4.107": "-x4",  # HEVC/H.265 Main
    "1.2.840.10008.1.2.4.108": "-x5",  # HEVC/H.265 Main 10
}
_UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


def file_transfer_syntax(path: Path) -> str | None:
    """(0002,0010) TransferSyntaxUID of a DICOM file, read from its file meta without pydicom;
    None if the file has no preamble/``DICM`` or no such element."""
    with Path(path).open("rb") as fh:
        if fh.read(132)[128:132] != b"DICM":
            return None
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return None
            group, elem = struct.unpack("<HH", head[:4])
            if group != 0x0002:
                return None
            if head[4:6] in _LONG_VRS:
                (length,) = struct.unpack("<I", fh.read(4))
            else:
                (length,) = struct.unpack("<H", head[6:8])
            value = fh.read(length)
            if elem == 0x0010:
                return value.rstrip(b"\0 ").decode("ascii", errors="replace")


def propose_option(files: Iterable[Path]) -> str:
    """The storescu ``-x..`` option that lets every file go in its own transfer syntax.

    All files in one uncompressed syntax: that syntax only (``-xe``/``-xi``/``-xb``). Mixed
    uncompressed: ``-xe`` (storescu converts losslessly to explicit VR LE where needed). One
    compressed syntax (with or without uncompressed files): its option, which proposes it plus
    the uncompressed ones. Two different compressed syntaxes cannot share one association:
    :class:`ValueError` (send them in separate calls).
    """
    syntaxes = {file_transfer_syntax(f) or "1.2.840.10008.1.2.1" for f in files}
    compressed = syntaxes.difference(_UNCOMPRESSED)
    if len(compressed) > 1:
        raise ValueError(
            f"storescu cannot propose several compressed syntaxes at once: "
            f"{sorted(compressed)}; send them separately"
        )
    if compressed:
        (ts,) = compressed
        if ts not in PROPOSE_OPTIONS:
            raise ValueError(f"no storescu proposal option for transfer syntax {ts}")
        return PROPOSE_OPTIONS[ts]
    if len(syntaxes) == 1:
        return PROPOSE_OPTIONS[next(iter(syntaxes))]
    return "-xe"


def storescu_command(
    host: str,
    port: int,
    files: Sequence[Path] | Path,
    *,
    aet: str = "STORESCU",
    aec: str = "AFRA",
    extra: Sequence[str] = (),
    dimse_timeout: int = 120,
    propose: str | None = None,
) -> list[str]:
    """The DCMTK ``storescu`` command line used by :func:`storescu` (one association).

    ``-R`` proposes presentation contexts only for the SOP classes found in the files (not
    storescu's 100+ default ones); ``propose`` is the transfer syntax option: by default
    :func:`propose_option` of the files (``-xe`` for a directory), so each file goes in its own
    transfer syntax: an explicit VR LE series is proposed explicit VR LE first, and sent as
    it is. A directory is scanned recursively (``+sd +r``). ``-to``/``-ta``/``-ts`` bound the
    connection, association and socket waits, ``-td`` each wait for a C-STORE response.
    """
    if isinstance(files, Path):
        paths = [files]
        scan = files.is_dir()
    else:
        paths = list(files)
        scan = False
        if not paths:
            raise ValueError("storescu needs at least one file")
    if propose is None:
        propose = "-xe" if scan else propose_option(paths)
    cmd = ["storescu", "-aet", aet, "-aec", aec, "-R", propose, *_SCU_TIMEOUTS]
    cmd += ["-td", str(dimse_timeout), *extra, host, str(port)]
    if scan:
        cmd[1:1] = ["+sd", "+r"]
    cmd.extend(str(p) for p in paths)
    return cmd


def storescu(
    host: str,
    port: int,
    files: Sequence[Path] | Path,
    *,
    aet: str = "STORESCU",
    aec: str = "AFRA",
    extra: Sequence[str] = (),
    check: bool = True,
    timeout: float = 600.0,
    dimse_timeout: int = 120,
    propose: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` (a list of files, or one file or directory) over one association.

    Runs with TCP_NODELAY=1; options as in :func:`storescu_command`. Raises
    :class:`PeerError` showing stderr if storescu exits non-zero (unless ``check=False``) or
    runs longer than ``timeout`` seconds.
    """
    cmd = storescu_command(
        host,
        port,
        files,
        aet=aet,
        aec=aec,
        extra=extra,
        dimse_timeout=dimse_timeout,
        propose=propose,
    )
    return _run(cmd, check=check, timeout=timeout, what="storescu")


def echoscu(
    host: str,
    port: int,
    aet: str = "ECHOSCU",
    aec: str = "AFRA",
    *,
    extra: Sequence[str] = (),
    check: bool = True,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """One C-ECHO from ``aet`` to ``aec`` at host:port (raises unless ``check=False``)."""
    cmd = [
        "echoscu",
        "-aet",
        aet,
        "-aec",
        aec,
        *_SCU_TIMEOUTS,
        "-td",
        "30",
        *extra,
        host,
        str(port),
    ]
    return _run(cmd, check=check, timeout=timeout, what="echoscu")


class StoreSCP:
    """DCMTK ``storescp`` on a free loopback port, writing into ``out_dir`` (a temp dir).

    Options: ``+xa`` accepts every transfer syntax DCMTK knows (preferring explicit VR LE),
    ``-pm`` (promiscuous) accepts unknown/private SOP classes too, ``-fe .dcm`` names files
    ``<modality>.<SOPInstanceUID>.dcm``, ``+uf`` makes names unique if an instance comes twice.
    ``bit_preserving=True`` (``+B``) writes each dataset exactly as received, so
    :func:`dicomgen.dataset_bytes_hash` of a received file equals that of the file sent;
    ``fork=True`` (``--fork``) serves concurrent associations, one child process each.
    Runs with TCP_NODELAY=1 in its environment (see :class:`Orthanc`). Temp folders go under
    ``tmp_root`` if given; received files under ``out_dir`` (default: inside the temp folder).
    """

    def __init__(
        self,
        aet: str = "STORESCP",
        *,
        port: int | None = None,
        out_dir: Path | None = None,
        bit_preserving: bool = True,
        fork: bool = True,
        extra: Sequence[str] = (),
        startup_timeout: float = 15.0,
        tmp_root: Path | None = None,
    ) -> None:
        self.aet = aet
        self.host = LOOPBACK
        self.port = port or free_port()
        self._tmp = Path(tempfile.mkdtemp(prefix="afra-storescp-", dir=tmp_root))
        self.out_dir = Path(out_dir) if out_dir is not None else self._tmp / "in"
        self.log_path = self._tmp / "storescp.log"
        self.bit_preserving = bit_preserving
        self.fork = fork
        self.extra = list(extra)
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def command(self) -> list[str]:
        cmd = [
            "storescp",
            "-aet",
            self.aet,
            "+xa",
            "-pm",
            "-od",
            str(self.out_dir),
            "-fe",
            ".dcm",
            "+uf",
            "-dhl",
            "-ta",
            "30",
            "-ts",
            "60",
        ]
        if self.bit_preserving:
            cmd.append("+B")
        if self.fork:
            cmd.append("--fork")
        return [*cmd, *self.extra, str(self.port)]

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise PeerError("storescp is not running")
        return self._proc.pid

    def start(self) -> Self:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=scu_env(),
            start_new_session=True,
        )
        try:
            wait_listening(
                self._proc, self.port, self.startup_timeout, log=self.log_path, what="storescp"
            )
        except BaseException:
            self.cleanup()  # the error message carries the log tail
            raise
        return self

    def files(self) -> list[Path]:
        """Received files, sorted by name (``<modality>.<unique id>.dcm``: read the UIDs from
        the files). A file whose association is still in progress may be incomplete."""
        return sorted(p for p in self.out_dir.rglob("*.dcm") if p.is_file())

    def stop(self) -> None:
        if self._proc is not None:
            stop_process_group(self._proc)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


class Orthanc:
    """``/usr/sbin/Orthanc`` with its own temp storage/index folders and a generated config.

    DICOM and HTTP ports are free loopback ports. ``modalities`` maps a name to (AET, host,
    port) so Orthanc can C-STORE / C-MOVE to it. See :meth:`config` for the keys set;
    ``extra_config`` overrides or adds keys. Orthanc 1.10 has no HTTP bind-address setting (it
    listens on every interface), so ``RemoteAccessAllowed: false`` is what keeps the REST API
    to loopback clients. Works as root. Use as a context manager, or start()/cleanup().

    Orthanc runs with ``TCP_NODELAY=1`` in its environment (``env`` defaults to
    :func:`scu_env`): Debian's DCMTK, which Orthanc uses for DICOM, leaves Nagle's algorithm on
    unless that variable is set, and then every C-STORE waits ~50 ms on delayed ACKs (a 300
    x 512 KiB series: ~16 s instead of ~3 s). Temp folders go under ``tmp_root`` if given.
    """

    def __init__(
        self,
        aet: str = "ORTHANC",
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        *,
        extra_config: Mapping[str, Any] | None = None,
        binary: str = ORTHANC_BINARY,
        startup_timeout: float = 60.0,
        verbose: bool = False,
        tmp_root: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.aet = aet
        self.env = dict(env) if env is not None else scu_env()
        self.host = LOOPBACK
        self.modalities = dict(modalities or {})
        self.extra_config = dict(extra_config or {})
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.verbose = verbose
        self.http_port = free_port()
        self.dicom_port = free_port()
        while self.dicom_port == self.http_port:
            self.dicom_port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="afra-orthanc-", dir=tmp_root))
        self.storage_dir = self.workdir / "storage"
        self.index_dir = self.workdir / "index"
        self.config_path = self.workdir / "orthanc.json"
        self.log_path = self.workdir / "orthanc.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: Any = None
        self._http = requests.Session()
        self._http.trust_env = False  # never send loopback requests through a proxy

    # ------------------------------------------------------------------ lifecycle
    def config(self) -> dict[str, Any]:
        """The JSON configuration written for Orthanc."""
        cfg: dict[str, Any] = {
            "Name": f"afra-test-{self.aet}",
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.index_dir),
            "Plugins": [],
            "LuaScripts": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowMove": True,
            "DicomAlwaysAllowGet": True,
            "DicomModalities": {
                name: [aet, host, port] for name, (aet, host, port) in self.modalities.items()
            },
            "SaveJobs": False,
        }
        cfg.update(self.extra_config)
        return cfg

    def start(self) -> Self:
        for d in (self.storage_dir, self.index_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        cmd = [self.binary, f"--logfile={self.log_path}", "--no-jobs"]
        if self.verbose:
            cmd.append("--verbose")
        cmd.append(str(self.config_path))
        self._out = (self.workdir / "orthanc.stdout").open("wb")
        self._proc = subprocess.Popen(
            cmd,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            env=self.env,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.cleanup()  # the error message carries the log tail
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PeerError(
                    f"Orthanc exited with {self._proc.returncode} during startup"
                    f"{_log_tail(self.log_path)}"
                )
            with contextlib.suppress(requests.RequestException):
                if self._http.get(f"{self.rest_url}/system", timeout=2).ok:
                    wait_listening(
                        self._proc,
                        self.dicom_port,
                        max(1.0, deadline - time.monotonic()),
                        log=self.log_path,
                        what="Orthanc",
                    )
                    return
            time.sleep(0.05)
        raise PeerError(
            f"Orthanc did not answer /system within {self.startup_timeout:.0f}s"
            f"{_log_tail(self.log_path)}"
        )

    def stop(self) -> None:
        if self._proc is not None:
            stop_process_group(self._proc, timeout=30.0)
            self._proc = None
        if self._out is not None:
            self._out.close()
            self._out = None

    def cleanup(self) -> None:
        self.stop()
        self._http.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # ------------------------------------------------------------------ properties
    @property
    def pid(self) -> int:
        if self._proc is None:
            raise PeerError("Orthanc is not running")
        return self._proc.pid

    @property
    def rest_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ------------------------------------------------------------------ REST
    def _check(self, resp: requests.Response) -> Any:
        if not resp.ok:
            raise PeerError(
                f"Orthanc {resp.request.method} {resp.url} -> {resp.status_code}: "
                f"{resp.text[:2000]}"
            )
        return resp.json() if resp.content else None

    def get(self, path: str, timeout: float = 30.0) -> Any:
        return self._check(self._http.get(f"{self.rest_url}{path}", timeout=timeout))

    def post(self, path: str, body: Any = None, timeout: float = 120.0) -> Any:
        return self._check(self._http.post(f"{self.rest_url}{path}", json=body, timeout=timeout))

    def delete(self, path: str, timeout: float = 30.0) -> Any:
        return self._check(self._http.delete(f"{self.rest_url}{path}", timeout=timeout))

    def upload(self, path: Path, timeout: float = 120.0) -> str:
        """POST one DICOM file to /instances; returns the Orthanc instance ID."""
        with Path(path).open("rb") as fh:
            resp = self._http.post(
                f"{self.rest_url}/instances",
                data=fh,
                timeout=timeout,
                headers={"Content-Type": "application/dicom"},
            )
        result = self._check(resp)
        if not isinstance(result, dict) or result.get("Status") not in ("Success", "AlreadyStored"):
            raise PeerError(f"Orthanc upload of {path} failed: {result}")
        return str(result["ID"])

    def upload_many(self, paths: Iterable[Path]) -> list[str]:
        return [self.upload(p) for p in paths]

    def instances(self) -> list[str]:
        return list(self.get("/instances"))

    def studies(self) -> list[str]:
        return list(self.get("/studies"))

    def statistics(self) -> dict[str, Any]:
        return dict(self.get("/statistics"))

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """``/instances/{id}/simplified-tags``: keyword -> value."""
        return dict(self.get(f"/instances/{instance_id}/simplified-tags"))

    def instance_file(self, instance_id: str, timeout: float = 120.0) -> bytes:
        """The stored DICOM file (as Orthanc keeps it)."""
        resp = self._http.get(f"{self.rest_url}/instances/{instance_id}/file", timeout=timeout)
        if not resp.ok:
            raise PeerError(f"Orthanc GET file {instance_id} -> {resp.status_code}")
        return resp.content

    def store_to(
        self, modality: str, resource_ids: Sequence[str] | str, timeout: float = 600.0
    ) -> dict[str, Any]:
        """C-STORE resources (instance/series/study/patient IDs) to ``modality``, synchronously.

        Raises :class:`PeerError` if Orthanc reports an error (e.g. the peer refused)."""
        ids = [resource_ids] if isinstance(resource_ids, str) else list(resource_ids)
        body = {"Resources": ids, "Synchronous": True, "Timeout": 60}
        return dict(self.post(f"/modalities/{modality}/store", body, timeout=timeout) or {})

    def echo_to(self, modality: str, timeout: float = 60.0) -> None:
        """C-ECHO from Orthanc to ``modality`` (raises on failure)."""
        self.post(f"/modalities/{modality}/echo", {}, timeout=timeout)


class Rsyslog:
    """A real audit repository: Debian's rsyslogd taking RFC 5425 syslog over TLS on loopback.

    GnuTLS with the given server certificate; clients are not asked for one (AuthMode anon) so
    the box's CA check is what the test exercises. Each message's raw text (without the
    octet-count frame) goes to one line of ``out``. Use as a context manager."""

    BINARY = "/usr/sbin/rsyslogd"

    def __init__(self, workdir: Path, *, ca: Path, cert: Path, key: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.out = workdir / "received.log"
        self.log = workdir / "rsyslogd.log"
        self.conf = workdir / "rsyslog.conf"
        (workdir / "spool").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f'global(workDirectory="{workdir / "spool"}" defaultNetstreamDriver="gtls"\n'
            f'       defaultNetstreamDriverCAFile="{ca}"\n'
            f'       defaultNetstreamDriverCertFile="{cert}"\n'
            f'       defaultNetstreamDriverKeyFile="{key}")\n'
            'module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1"\n'
            '       StreamDriver.AuthMode="anon")\n'
            f'input(type="imtcp" address="{LOOPBACK}" port="{self.port}")\n'
            'template(name="raw" type="string" string="%rawmsg%\\n")\n'
            f'*.* action(type="omfile" file="{self.out}" template="raw")\n',
            encoding="utf-8",
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Rsyslog:
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(
                [self.BINARY, "-n", "-iNONE", "-f", str(self.conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_listening(self._proc, self.port, log=self.log, what="rsyslogd")
        return self

    def messages(self) -> list[str]:
        if not self.out.exists():
            return []
        return [line for line in self.out.read_text("utf-8", "replace").splitlines() if line]

    def stop(self) -> None:
        if self._proc is not None:
            stop_process_group(self._proc)
            self._proc = None

    def __enter__(self) -> Rsyslog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
