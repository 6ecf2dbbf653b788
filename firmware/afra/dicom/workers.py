"""Receiving processes: accepted associations served on every core (dicom.receive_processes).

The main process accepts every connection and negotiates every association (the peer
allow-list, the connection and association limits: one `Occupancy`, so the limits stay
global), then passes the socket of an accepted association to the least busy receiving
process (`socket.send_fds` over a Unix socket pair), counting itself as one of them. A worker
runs the same hot path (`_Association._serve`, its own `Receiver` on the shared spool) from
the first P-DATA on. It reads the index itself (the duplicate lookup on its own WAL reader)
but has the main process write it: each `add_instance` (and the rare conflict and quarantine
rows) is a call over the socket pair, committed in the main process's group commit, so the
index keeps one writer and one commit serves the instances of every process at once. The
order stays the file and its name made durable (in the worker: Spool.commit), index commit
(in the main process), and only then the C-STORE response (in the worker, once the call
returns).

What the main process shows of a worker's associations reaches it as messages: the
association's end (its occupancy released, its socket closed), echoes and stores for the
sightings (the first store of an association at once, then at most every quarter second and
at its end), the panel's activity (at most every 0.1 s), the worker's `disk_floor` condition
under a source of its own (`receive-<n>`), and the storage check's free space is passed on to
the workers' refusals. Associations stay in the main process while a download job diverts a
C-MOVE (the divert is registered there) and when no worker is ready. The protocol around
the hot path is the same code in a worker: per-PDU deadlines, Sta13 after the release (the
worker says "released" at once, so the association's place in the pool is free while the
connection waits for the peer to close), and the A-ABORT when the box stops, which the main
process asks of the worker ("abort") so that it goes out under the association's send lock
there, never between the bytes of a PDU the worker is sending. A worker that dies ends
its associations (nothing it had not answered was acknowledged) and is started again.
Started by `ReceiveWorkers` (WORKER_COMMAND, the socket's descriptor), never by hand.
A worker reads the free space of the real disk: `build_appliance(usage=...)`, the tests' disk
that fills, reaches the main process only (tests of the floor run with one process).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from afra.clock import SystemClock
from afra.dicom.acceptor import Acceptor, _Association
from afra.dicom.header import InstanceHeader
from afra.dicom.receive import HealthSink, Receiver
from afra.dicom.sightings import PeerSightings
from afra.dicom.spool import Spool
from afra.errors import StorageError
from afra.store.index import AddedInstance, HeldCopy, Index, StoredInstance

if TYPE_CHECKING:
    from afra.config import DicomSettings

LOG = logging.getLogger("afra.dicom")

# A worker needs none of pydicom's optional pixel and download support (numpy, Pillow,
# requests: 20 MiB of a worker's memory); it would not import them anyway but pydicom does.
WORKER_COMMAND = (
    "import sys\n"
    "for name in ('numpy', 'PIL', 'requests'):\n"
    "    sys.modules.setdefault(name, None)\n"
    "from afra.dicom.workers import worker_main\n"
    "sys.exit(worker_main(int(sys.argv[1])))\n"
)
MESSAGE_BYTES = 1 << 16
READY_TIMEOUT_S = 60.0
SIGHTING_EVERY_S = 0.25
ACTIVITY_EVERY_S = 0.1
MAX_AUTO_PROCESSES = 4
STOP_JOIN_S = 5.0  # how long a stopping worker waits for its aborted associations to end
# The index calls a worker may make (Receiver's writes), with the position of their `now`:
# the index's times are the main process's clock (the box's clock seam), set when it writes.
INDEX_CALLS = {"add_instance": 3, "restore_instance": 3, "add_conflict": 3, "add_quarantine": 1}


def process_count(setting: int) -> int:
    """dicom.receive_processes as a number of processes (0: one per core, at most 4)."""
    if setting:
        return setting
    return max(1, min(MAX_AUTO_PROCESSES, len(os.sched_getaffinity(0))))


def _send(sock: socket.socket, lock: threading.Lock, message: Any, fds: Sequence[int] = ()) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    with lock:
        if fds:
            socket.send_fds(sock, [data], fds)
        else:
            sock.send(data)


# --------------------------------------------------------------------------- main process
@dataclass
class _Worker:
    number: int
    sock: socket.socket
    proc: subprocess.Popen[bytes]
    lock: threading.Lock = field(default_factory=threading.Lock)
    ready: threading.Event = field(default_factory=threading.Event)
    failed: str = ""
    # Associations it serves, by id.
    serving: dict[int, _Handed] = field(default_factory=dict)


@dataclass
class _Handed:
    """An association a worker serves: its main-process side (counted in the occupancy,
    listed for stop()) and the event set when it has ended there."""

    association: _Association
    done: threading.Event = field(default_factory=threading.Event)


class ReceiveWorkers:
    """The main process's side: starts `count - 1` workers and hands associations to them."""

    def __init__(
        self,
        count: int,
        *,
        settings: DicomSettings,
        receiver: Receiver,
        index: Index,
        sightings: PeerSightings,
        health: HealthSink | None = None,
        on_activity: Callable[[], None] | None = None,
    ) -> None:
        self.count = count
        self.settings = settings
        self.receiver = receiver
        self.index = index
        self.sightings = sightings
        self.health = health
        self.on_activity = on_activity
        self._lock = threading.Lock()
        self._workers: dict[int, _Worker] = {}
        self._ids = itertools.count(1)
        self._stopping = threading.Event()
        self._in_process = 0  # associations the main process serves itself
        self.handed_off = 0  # associations passed to a worker since the start
        self.served_here = 0  # associations the main process served itself since the start
        # Whether the main process takes an association when it is no busier than the least
        # busy worker (it does: no hand-off for a lone association); tests turn it off so
        # that every association goes to a worker.
        self.main_takes_ties = True
        # Index writes asked by workers; as many at once as associations, so that they meet
        # in the index's group commit.
        self._calls = self._executor()

    def _executor(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(
            max_workers=max(2, self.settings.max_associations), thread_name_prefix="worker-index"
        )

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._stopping.is_set():  # started again after a stop (a reconfiguration failed)
            self._calls = self._executor()
        self._stopping.clear()
        for number in range(1, self.count):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", WORKER_COMMAND, str(child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        worker = _Worker(number, parent, proc)
        with self._lock:
            self._workers[number] = worker
        _send(
            parent,
            worker.lock,
            (
                "config",
                {
                    "number": number,
                    "settings": self.settings.model_dump(mode="json"),
                    "root": str(self.receiver.spool.root),
                    "index": str(self.index.path),
                    "min_free_bytes": self.receiver.min_free_bytes,
                    "direct_io": self.receiver.spool.direct_io,
                    "one_flush": self.receiver.spool.one_flush,
                    "log_level": logging.getLogger("afra").getEffectiveLevel(),
                },
            ),
        )
        threading.Thread(
            target=self._read, args=(worker,), name=f"receive-worker-{number}", daemon=True
        ).start()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> bool:
        """Wait until every worker is ready (or failed); whether all are ready."""
        deadline = time.monotonic() + timeout
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.ready.wait(max(0.0, deadline - time.monotonic()))
        return all(w.ready.is_set() and not w.failed for w in workers)

    @property
    def ready_workers(self) -> int:
        with self._lock:
            return sum(1 for w in self._workers.values() if w.ready.is_set() and not w.failed)

    @property
    def in_process(self) -> int:
        """Associations the main process serves itself now."""
        with self._lock:
            return self._in_process

    @property
    def pids(self) -> list[int]:
        """The workers' process ids, ready or not."""
        with self._lock:
            return [w.proc.pid for w in self._workers.values()]

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            with contextlib.suppress(OSError):
                _send(worker.sock, worker.lock, ("stop",))
        for worker in workers:
            try:
                worker.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait(timeout=10)
            with contextlib.suppress(OSError):
                worker.sock.close()
        self._calls.shutdown(wait=False)

    # -- hand-off (acceptor.HandOff) ----------------------------------------------------

    def serve(self, association: _Association) -> bool:
        """Serve `association` in the least busy process: in a worker (True, once it has
        ended there), or here (False: the caller serves it)."""
        # While a download job diverts a C-MOVE its objects must come here, to the job.
        diverting = self.receiver.diverting
        with self._lock:
            ready = [w for w in self._workers.values() if w.ready.is_set() and not w.failed]
            worker = min(ready, key=lambda w: len(w.serving), default=None)
            busier = worker is not None and (
                len(worker.serving) > self._in_process
                or (len(worker.serving) == self._in_process and self.main_takes_ties)
            )
            if worker is None or diverting or busier:
                self._in_process += 1
                self.served_here += 1
                worker = None
            else:
                ident = next(self._ids)
                handed = worker.serving[ident] = _Handed(association)
                self.handed_off += 1
        if worker is None:  # the main process serves it, on the caller's thread
            association.on_end.append(self._in_process_ended)
            return False
        # From now on the box's stop reaches it through the worker (its A-ABORT is sent there).
        association.abort_elsewhere = lambda: self._abort(worker, ident)
        try:
            _send(
                worker.sock,
                worker.lock,
                ("association", ident, association.handoff_state()),
                [association.sock.fileno()],
            )
        except OSError as exc:
            LOG.warning(
                "could not pass an association to receiving worker %d: %s", worker.number, exc
            )
            association.abort_elsewhere = None
            with self._lock:
                worker.serving.pop(ident, None)
                self._in_process += 1
                self.served_here += 1
            association.on_end.append(self._in_process_ended)
            return False
        handed.done.wait()
        return True

    def _abort(self, worker: _Worker, ident: int) -> None:
        """The box is stopping: the worker sends the association's A-ABORT and cuts it."""
        with contextlib.suppress(OSError):
            _send(worker.sock, worker.lock, ("abort", ident))

    def _in_process_ended(self) -> None:
        with self._lock:
            self._in_process -= 1

    def recheck(self, free: int) -> None:
        """The storage check's free space, for the workers' refusals."""
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            with contextlib.suppress(OSError):
                _send(worker.sock, worker.lock, ("recheck", free))

    # -- what workers say ---------------------------------------------------------------

    def _read(self, worker: _Worker) -> None:
        try:
            while True:
                try:
                    data = worker.sock.recv(MESSAGE_BYTES)
                except OSError:
                    break
                if not data:
                    break
                self._dispatch(worker, pickle.loads(data))  # noqa: S301 - our own child
        finally:
            self._lost(worker)

    def _dispatch(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "call":
            _, call_id, method, args, kwargs = message
            self._calls.submit(self._call, worker, call_id, method, args, kwargs)
        elif kind == "released":
            # Released there (Sta13 follows, the connection open until the peer closes it):
            # its place in the pool is free at once, as for one served here.
            with self._lock:
                handed = worker.serving.get(message[1])
            if handed is not None and handed.association.admitted:
                handed.association.admitted = False
                occupancy = handed.association.server.occupancy
                occupancy.dissociate(handed.association.address, handed.association.known)
        elif kind == "ended":
            with self._lock:
                handed = worker.serving.pop(message[1], None)
            if handed is not None:
                handed.done.set()
        elif kind == "echo":
            self.sightings.echo(message[1], message[2])
        elif kind == "stores":
            self.sightings.stores(message[1], message[2], message[3])
        elif kind == "activity":
            if self.on_activity is not None:
                self.on_activity()
        elif kind == "health":
            _, condition, active, detail, source = message
            if self.health is not None:
                self.health.set(condition, active, detail, source=source)
        elif kind == "ready":
            LOG.info("receiving worker %d ready (pid %d)", worker.number, worker.proc.pid)
            worker.ready.set()
        elif kind == "failed":
            worker.failed = str(message[1])
            LOG.error(
                "receiving worker %d cannot serve (%s); its share is served by the main process",
                worker.number,
                worker.failed,
            )
            worker.ready.set()

    def _call(
        self,
        worker: _Worker,
        call_id: int,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        try:
            if method not in INDEX_CALLS:
                raise StorageError(f"not an index call a worker may make: {method}")
            at = INDEX_CALLS[method]
            args = (*args[:at], self.receiver.clock.time(), *args[at + 1 :])
            reply: tuple[Any, ...] = (
                "result",
                call_id,
                True,
                getattr(self.index, method)(*args, **kwargs),
            )
        except Exception as exc:  # the worker's Receiver answers for it, as in-process
            reply = ("result", call_id, False, _portable(exc))
        with contextlib.suppress(OSError):
            _send(worker.sock, worker.lock, reply)

    def _lost(self, worker: _Worker) -> None:
        """The worker's socket closed: its associations have ended; start it again."""
        with self._lock:
            serving = list(worker.serving.values())
            worker.serving.clear()
            if self._workers.get(worker.number) is worker:
                del self._workers[worker.number]
        for handed in serving:
            handed.done.set()
        with contextlib.suppress(OSError):
            worker.sock.close()
        code = worker.proc.wait()
        if self._stopping.is_set():
            return
        LOG.error(
            "receiving worker %d ended (exit status %s) with %d association(s); starting it again",
            worker.number,
            code,
            len(serving),
        )
        if not worker.ready.is_set():
            LOG.error(
                "receiving worker %d never became ready; not starting it again", worker.number
            )
        elif not worker.failed:
            self._spawn(worker.number)


def make_acceptor(
    settings: DicomSettings,
    receiver: Receiver,
    index: Index,
    *,
    sightings: PeerSightings | None = None,
    health: HealthSink | None = None,
    on_activity: Callable[[], None] | None = None,
) -> Acceptor:
    """The acceptor, with receiving workers when dicom.receive_processes asks for them."""
    acceptor = Acceptor(settings, receiver, sightings=sightings)
    count = process_count(settings.receive_processes)
    if count > 1:
        acceptor.handoff = ReceiveWorkers(
            count,
            settings=settings,
            receiver=receiver,
            index=index,
            sightings=acceptor.sightings,
            health=health,
            on_activity=on_activity,
        )
    return acceptor


def _portable(exc: Exception) -> Exception:
    """The exception itself when it survives pickling, else a StorageError saying it."""
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301
    except Exception:
        return StorageError(f"{exc.__class__.__name__}: {exc}")
    return exc


# --------------------------------------------------------------------------- worker process
class _Parent:
    """The worker's line to the main process."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self._ids = itertools.count(1)
        self._calls: dict[int, Future[Any]] = {}
        self._calls_lock = threading.Lock()
        self._activity_at = -1.0

    def send(self, message: tuple[Any, ...]) -> None:
        _send(self.sock, self.lock, message)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        call_id = next(self._ids)
        future: Future[Any] = Future()
        with self._calls_lock:
            self._calls[call_id] = future
        try:
            self.send(("call", call_id, method, args, kwargs))
        except OSError as exc:
            with self._calls_lock:
                self._calls.pop(call_id, None)
            raise StorageError(f"the main process is gone: {exc}") from None
        return future.result()

    def answered(self, call_id: int, ok: bool, value: Any) -> None:
        with self._calls_lock:
            future = self._calls.pop(call_id, None)
        if future is None:
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def gone(self) -> None:
        with self._calls_lock:
            calls, self._calls = list(self._calls.values()), {}
        for future in calls:
            future.set_exception(StorageError("the main process is gone"))

    def activity(self) -> None:
        now = time.monotonic()
        if now - self._activity_at >= ACTIVITY_EVERY_S:
            self._activity_at = now
            with contextlib.suppress(OSError):
                self.send(("activity",))


class _WorkerIndex:
    """Reads on the worker's own connection (WAL: never behind a writer); writes by the main
    process (see the module docstring)."""

    def __init__(self, path: Path, parent: _Parent) -> None:
        # Never the exclusive mode: it would lock the main process out of its own index.
        self._index = Index(path, exclusive_fallback=False)
        self._parent = parent

    def find_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        return self._index.find_instance(sop_instance_uid)

    def delivered_and_purged(self, sop_instance_uid: str) -> bool:
        return self._index.delivered_and_purged(sop_instance_uid)

    def add_instance(
        self, header: InstanceHeader, rel_path: str, size: int, now: float, calling_ae: str
    ) -> AddedInstance:
        result: AddedInstance = self._parent.call(
            "add_instance", header, rel_path, size, now, calling_ae
        )
        return result

    def held_copy(self, sop_instance_uid: str) -> HeldCopy | None:
        return self._index.held_copy(sop_instance_uid)

    def restore_instance(
        self,
        header: InstanceHeader,
        rel_path: str,
        size: int,
        now: float,
        calling_ae: str,
        sha256: str | None,
    ) -> bool:
        restored: bool = self._parent.call(
            "restore_instance", header, rel_path, size, now, calling_ae, sha256
        )
        return restored

    def add_conflict(
        self, sop_instance_uid: str, rel_path: str, size: int, now: float, calling_ae: str
    ) -> None:
        self._parent.call("add_conflict", sop_instance_uid, rel_path, size, now, calling_ae)

    def add_quarantine(self, rel_path: str, now: float, **kwargs: Any) -> None:
        self._parent.call("add_quarantine", rel_path, now, **kwargs)

    def close(self) -> None:
        self._index.close()


class _Health:
    def __init__(self, parent: _Parent) -> None:
        self._parent = parent

    def set(self, condition: str, active: bool, detail: str = "", *, source: str = "") -> None:
        with contextlib.suppress(OSError):
            self._parent.send(("health", condition, active, detail, source))


class _Sightings:
    """Echoes and stores, told to the main process (which stamps them with its clock): an
    echo and an association's first store at once, further stores at most every
    SIGHTING_EVERY_S and at the association's end."""

    def __init__(self, parent: _Parent) -> None:
        self._parent = parent
        self._lock = threading.Lock()
        # (AE, address) -> [stores not yet told, when last told (monotonic)]
        self._pending: dict[tuple[str, str], list[float]] = {}

    def echo(self, ae_title: str, address: str) -> None:
        self._tell(("echo", ae_title, address))

    def store(self, ae_title: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            entry = self._pending.setdefault((ae_title, address), [0, -SIGHTING_EVERY_S])
            entry[0] += 1
            if now - entry[1] < SIGHTING_EVERY_S:
                return
            count, entry[:] = int(entry[0]), [0, now]
        self._tell(("stores", ae_title, address, count))

    def flush(self, ae_title: str, address: str) -> None:
        with self._lock:
            entry = self._pending.pop((ae_title, address), None)
        if entry is not None and entry[0]:
            self._tell(("stores", ae_title, address, int(entry[0])))

    def _tell(self, message: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError):
            self._parent.send(message)


class _NoOccupancy:
    """The main process counts the worker's associations; here there is nothing to count."""

    def dissociate(self, address: str, known: bool) -> None:
        return None


class _WorkerServer:
    """What `_Association` reads from its server, in a worker."""

    def __init__(self, settings: Any, receiver: Receiver, sightings: _Sightings) -> None:
        self.settings = settings
        self.receiver = receiver
        self.sightings = sightings
        self.occupancy = _NoOccupancy()
        self.handoff = None


def _serve_one(
    server: _WorkerServer,
    parent: _Parent,
    associations: dict[int, _Association],
    ident: int,
) -> None:
    association = associations[ident]
    try:
        association.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        association.run(established=True)
    finally:
        associations.pop(ident, None)
        server.sightings.flush(association.calling_ae, association.address)
        with contextlib.suppress(OSError):
            parent.send(("ended", ident))


def _released(parent: _Parent, ident: int) -> Callable[[], None]:
    def tell() -> None:
        with contextlib.suppress(OSError):
            parent.send(("released", ident))

    return tell


def worker_main(fd: int) -> int:
    # The main process stops it (or its socket closes when the main process ends): a SIGTERM
    # or SIGINT sent to the whole group (systemd, a terminal) is the main process's to handle.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    parent = _Parent(sock)
    data = sock.recv(MESSAGE_BYTES)
    if not data:
        return 0
    kind, config = pickle.loads(data)  # noqa: S301 - from the main process
    assert kind == "config"
    number = int(config["number"])
    logging.basicConfig(
        level=int(config["log_level"]),
        format=f"%(asctime)s %(levelname)s %(name)s[worker {number}]: %(message)s",
    )
    # The settings as plain values: the hot path reads a few; pydantic stays out of here.
    settings = SimpleNamespace(**config["settings"])
    try:
        spool = Spool(
            Path(config["root"]),
            direct_io=bool(config["direct_io"]),
            one_flush=bool(config["one_flush"]),
        )
        index = _WorkerIndex(Path(config["index"]), parent)
    except Exception as exc:  # e.g. the index in exclusive mode (a start on a full disk)
        parent.send(("failed", f"{exc.__class__.__name__}: {exc}"))
        return 1
    receiver = Receiver(
        spool,
        index,
        min_free_bytes=int(config["min_free_bytes"]),
        clock=SystemClock(),
        on_activity=parent.activity,
        health=_Health(parent),
        health_source=f"receive-{number}",
    )
    server = _WorkerServer(settings, receiver, _Sightings(parent))
    associations: dict[int, _Association] = {}
    threads: list[threading.Thread] = []
    parent.send(("ready",))
    try:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, MESSAGE_BYTES, 4)
            except OSError:
                break
            if not data:
                break
            message = pickle.loads(data)  # noqa: S301 - from the main process
            kind = message[0]
            if kind == "association" and fds:
                _, ident, state = message
                conn = socket.socket(fileno=fds.pop(0))
                association = _Association.established(server, conn, state)
                association.on_release.append(_released(parent, ident))
                associations[ident] = association
                thread = threading.Thread(
                    target=_serve_one,
                    args=(server, parent, associations, ident),
                    name=f"dicom-{state['address']}",
                    daemon=True,
                )
                threads = [t for t in threads if t.is_alive()]
                threads.append(thread)
                thread.start()
            elif kind == "abort":
                # The box is stopping (Acceptor.stop): A-ABORT under the association's own
                # send lock, then the transport cut, as in the main process.
                aborted = associations.get(message[1])
                if aborted is not None:
                    aborted.abort_for_stop()
            elif kind == "result":
                parent.answered(message[1], message[2], message[3])
            elif kind == "recheck":
                receiver.refusals.recheck(int(message[1]))
            elif kind == "stop":
                break
            for extra in fds:
                os.close(extra)
    finally:
        parent.gone()
        # Whatever still runs is aborted as the box stops; its threads get a moment to
        # drop what they had half received (tmp/ left clean) and to say they ended.
        for association in list(associations.values()):
            if not association.aborted_by_stop:
                association.abort_for_stop()
        deadline = time.monotonic() + STOP_JOIN_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    return 0
