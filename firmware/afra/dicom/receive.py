"""What happens to one received object: check it, make it durable, index it, choose the status.

`Receiver.store` never raises: every outcome is a storage status (PS3.4 Annex B) and, for a
refusal, a quarantine entry and a log line that names the sender and the reason.

Refusals for space (the floor, a write that failed) are the receiver's to report, because only
it sees them: free space is checked once the object is written, so a disk can park just above
the floor, every instance refused and the periodic storage check seeing room. While it refuses,
the receiver holds health's `disk_floor` (the box shows failed), and it logs at a steady rate
(the first refusal at once, then one line a minute with the count), not once per instance.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from afra.clock import Clock
from afra.dicom.header import (
    DEFLATED,
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SOP_CLASS_MISMATCH,
    STATUS_SUCCESS,
    HeadParse,
    InstanceHeader,
    check_uid,
    header_from_head,
    parse_head,
    read_header,
    source_ae_title,
)
from afra.dicom.spool import AlreadyStored, Spool
from afra.errors import InvalidInstanceError, StorageError
from afra.store.index import AddedInstance, HeldCopy, StoredInstance

LOG = logging.getLogger("afra.receive")

_LOCK_STRIPES = 64
REFUSAL_LOG_EVERY_S = 60.0
# How long a store waits for another process that holds the instance's name to index it.
INDEXED_WAIT_S = 2.0


def file_sha256(path: Path) -> str:
    """A file's SHA-256, as the uplink hashes an instance for the hub (afra.uplink.stream)."""
    with path.open("rb") as fp:
        return hashlib.file_digest(fp, "sha256").hexdigest()


class HealthSink(Protocol):
    """Where the receiver raises and clears its condition (afra.health.Health)."""

    def set(self, condition: str, active: bool, detail: str = "", *, source: str = "") -> None: ...


class ReceiveIndex(Protocol):
    """What the receiver asks of the index (afra.store.index.Index, or a receiving worker
    process's stand-in that reads locally and has the main process write)."""

    def find_instance(self, sop_instance_uid: str) -> StoredInstance | None: ...

    def delivered_and_purged(self, sop_instance_uid: str) -> bool: ...

    def add_instance(
        self, header: InstanceHeader, rel_path: str, size: int, now: float, calling_ae: str
    ) -> AddedInstance: ...

    def held_copy(self, sop_instance_uid: str) -> HeldCopy | None: ...

    def restore_instance(
        self,
        header: InstanceHeader,
        rel_path: str,
        size: int,
        now: float,
        calling_ae: str,
        sha256: str | None,
    ) -> bool: ...

    def add_conflict(
        self, sop_instance_uid: str, rel_path: str, size: int, now: float, calling_ae: str
    ) -> None: ...

    def add_quarantine(
        self,
        rel_path: str,
        now: float,
        *,
        calling_ae: str,
        peer_address: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        status: int,
        reason: str,
    ) -> None: ...


class SpaceRefusals:
    """Whether the box is refusing instances for space, said to health and the log.

    `refused` for every instance answered out-of-resources for lack of space (or because the
    device failed a write: `why`); `stored` for every instance taken, with the free space then;
    `recheck` with the free space now (the storage check calls it). A refusal for space ends
    once there is room for the largest instance refused (a small instance that still fits
    does not end it: the large ones are still refused, and the report would flap); one for a
    failed write ends with the next instance stored. The log says the first refusal, then a
    count once a minute, also across episodes. Thread-safe."""

    SOURCE = "receive"

    def __init__(
        self,
        *,
        min_free_bytes: int,
        clock: Clock,
        health: HealthSink | None = None,
        log_every_s: float = REFUSAL_LOG_EVERY_S,
        source: str = SOURCE,
    ) -> None:
        self.source = source  # health's source: each receiving process speaks for its own
        self.min_free_bytes = min_free_bytes
        self.clock = clock
        self.health = health
        self.log_every_s = log_every_s
        self._lock = threading.Lock()
        self.active = False
        self.total = 0  # refused since the box started
        self._since_log = 0  # refused since the last log line
        self._senders: set[str] = set()
        self._logged_at = -math.inf
        self._need = 0  # the largest refused object: room for it ends the refusals
        self._device = False  # a write the device refused, not (only) the floor

    def refused(self, sender: str, free: int, size: int, why: str = "") -> None:
        now = self.clock.monotonic()
        floor_mb = self.min_free_bytes // 2**20
        reason = why or f"{free // 2**20} MB free, the floor is {floor_mb} MB"
        with self._lock:
            first = not self.active
            self.active = True
            self.total += 1
            self._since_log += 1
            self._need = max(self._need, size)
            self._device = self._device or bool(why)
            self._senders.add(sender)
            due = now - self._logged_at >= self.log_every_s
            if due:
                count, senders = self._since_log, sorted(self._senders)
                self._since_log, self._senders, self._logged_at = 0, set(), now
        if self.health is not None:
            self.health.set(
                "disk_floor", True, f"new instances refused: {reason}", source=self.source
            )
        if not due:
            return
        if first and count == 1:
            LOG.error(
                "refusing new instances with 0x%04X: %s (studies not yet delivered are kept; "
                "free space or lower storage.min_free_mb)",
                STATUS_OUT_OF_RESOURCES,
                reason,
            )
        else:
            LOG.error(
                "still refusing new instances: %d refused in the last %.0f s, from %s: %s",
                count,
                self.log_every_s,
                ", ".join(senders),
                reason,
            )

    def stored(self, free: int) -> None:
        with self._lock:
            room = self.active and (self._device or free >= self.min_free_bytes + self._need)
        if room:
            self._end("an instance was stored")

    def recheck(self, free: int) -> None:
        with self._lock:
            room = self.active and not self._device and free >= self.min_free_bytes + self._need
        if room:
            self._end(f"{free // 2**20} MB free")

    def _end(self, why: str) -> None:
        with self._lock:
            if not self.active:
                return
            self.active, count = False, self._since_log
            self._need, self._device = 0, False
        if self.health is not None:
            self.health.set("disk_floor", False, source=self.source)
        LOG.warning("taking new instances again (%s); %d refused since the last report", why, count)


@dataclass(frozen=True)
class StoreRequest:
    """What the C-STORE command and its association said about an object."""

    sop_class_uid: str
    sop_instance_uid: str
    context_abstract_syntax: str
    calling_ae: str
    peer_address: str
    # What the acceptor already holds: the data set's first bytes (read instead of the
    # file when they settle the header), the data set's size and transfer syntax.
    head: bytes = b""
    data_size: int = -1
    transfer_syntax: str = ""
    # A C-STORE sub-operation of a C-MOVE names the move's originator (PS3.7 9.3.1.1).
    move_originator_ae: str = ""
    move_originator_id: int = 0
    # The descriptor the acceptor wrote the object through, still open (else -1): fsync and
    # fstat go through it instead of opening the file again.
    fd: int = -1
    # `head` already being walked (Receiver.walk_head), started as soon as it was whole.
    head_walk: Future[HeadParse | None] | None = None


class StoreSink(Protocol):
    """Somewhere else a received object may go: a download job's own folder.

    `store` answers a storage status, or None when the object is not for it (it then takes
    the normal path into the spool and the index).
    """

    def store(self, tmp: Path, request: StoreRequest) -> int | None: ...


def _header(tmp: Path, request: StoreRequest) -> InstanceHeader:
    """The header from the bytes already in memory when they settle it, else from the file."""
    if request.head and request.data_size >= 0:
        if request.head_walk is not None:
            walked = request.head_walk.result()
        else:
            walked = parse_head(request.head, request.transfer_syntax)
        header = header_from_head(walked, request.data_size) if walked is not None else None
        if header is not None:
            return header
    return read_header(tmp)


class Receiver:
    """Turns received temp files into durable, indexed instances."""

    def __init__(
        self,
        spool: Spool,
        index: ReceiveIndex,
        *,
        min_free_bytes: int,
        clock: Clock,
        on_activity: Callable[[], None] | None = None,
        health: HealthSink | None = None,
        health_source: str = SpaceRefusals.SOURCE,
    ) -> None:
        self.spool = spool
        self.index = index
        self.min_free_bytes = min_free_bytes
        self.clock = clock
        self.refusals = SpaceRefusals(
            min_free_bytes=min_free_bytes, clock=clock, health=health, source=health_source
        )
        # The front panel's activity LED: one cheap call per received object.
        self.on_activity = on_activity
        # Two associations delivering the same SOP Instance UID at once must not race.
        self._uid_locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._parse_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="header")
        # C-MOVEs the box itself started for a download job, by (originator AE, message id).
        self._diverts: dict[tuple[str, int], StoreSink] = {}

    def divert(self, ae_title: str, message_id: int, sink: StoreSink | None) -> None:
        """Send the sub-operations of the box's own C-MOVE `message_id` to `sink` (None: stop)."""
        key = (ae_title.strip(), message_id)
        if sink is None:
            self._diverts.pop(key, None)
        else:
            self._diverts[key] = sink

    @property
    def diverting(self) -> bool:
        """Whether a download job's C-MOVE is being diverted (its objects must come here)."""
        return bool(self._diverts)

    def walk_head(self, head: bytes, transfer_syntax: str) -> Future[HeadParse | None]:
        """Start walking a data set's first bytes while the rest is still being received and
        written (give the result to `store` as StoreRequest.head_walk)."""
        return self._parse_pool.submit(parse_head, head, transfer_syntax)

    def has_room(self) -> bool:
        """Whether free space is above the floor (checked again when the object is stored)."""
        return self.spool.free_bytes() >= self.min_free_bytes

    def refuse_for_space(self, request: StoreRequest, why: str = "") -> int:
        """The answer to an object that could not be kept for lack of space (or a failed
        write, `why`): out-of-resources, reported once for the lot rather than per object."""
        self.refusals.refused(
            f"{request.calling_ae!r} ({request.peer_address})",
            self.spool.free_bytes(),
            max(request.data_size, 0),
            why,
        )
        return STATUS_OUT_OF_RESOURCES

    def store(self, tmp: Path, request: StoreRequest) -> int:
        if self.on_activity is not None:
            self.on_activity()
        sender = f"{request.calling_ae!r} ({request.peer_address})"
        if request.move_originator_id and self._diverts:
            sink = self._diverts.get((request.move_originator_ae, request.move_originator_id))
            if sink is not None:
                status = sink.store(tmp, request)
                if status is not None:
                    return status
        try:
            return self._store(tmp, request, sender)
        except InvalidInstanceError as exc:
            return self._refuse(tmp, request, sender, exc.status, str(exc))
        except (StorageError, OSError) as exc:  # a write, flush or rename the device refused
            return self.refuse_for_space(
                request, f"could not store it ({exc}); check the storage device"
            )
        except Exception:
            LOG.exception("unexpected error storing an instance from %s", sender)
            return STATUS_OUT_OF_RESOURCES

    def _store(self, tmp: Path, request: StoreRequest, sender: str) -> int:
        # The UID's stripe is held from the lookup to the index commit, so two associations
        # delivering one UID at once store it once.
        with self._uid_locks[hash(request.sop_instance_uid) % _LOCK_STRIPES]:
            fd = request.fd if request.fd >= 0 else None
            one_flush = self.spool.one_flush
            if one_flush:
                # A journaled ext4: the file's one fsync comes after its link (Spool.commit),
                # so there is no flush yet for the examination to overlap.
                found = self._examine(tmp, request)
            else:
                # What does not make the file durable (the free-space check, the UIDs, the
                # header, the lookup) runs on a worker while this thread waits in fsync,
                # which releases the GIL. Then link, fsync dir, index commit.
                examined = self._parse_pool.submit(self._examine, tmp, request)
                try:
                    self.spool.fsync_received(tmp, fd)
                finally:
                    found = examined.result()
            if found is None:
                return self.refuse_for_space(request)
            header, held = found
            sop_uid = header.sop_instance_uid
            now = self.clock.time()
            rel = self.spool.instance_path(header.study_uid, sop_uid)
            if held is not None:
                if held.path != rel:
                    return self._duplicate(tmp, request, sender, held.path, now)
                # Under this very name: judged only once no store holds the name's lock, or
                # a copy another process is restoring (its row there already) could be
                # answered for before that process has finished, or taken it away again.
                there = self._settled(rel)
                if there is None:
                    return self._not_now(sop_uid, sender, "another store is at it")
                if there or self.index.delivered_and_purged(sop_uid):
                    return self._duplicate(tmp, request, sender, rel, now)
            # The file is locked (flock) from before its link until this store has indexed it
            # or taken the name away (the descriptor's close, after the response): another
            # process that finds the name taken adopts it only once the lock is free.
            owner = fd if fd is not None else os.open(tmp, os.O_RDONLY)
            try:
                fcntl.flock(owner, fcntl.LOCK_EX)
                if held is not None:  # indexed here, its file gone from the device
                    return self._restore(tmp, request, sender, header, rel, now, fd)
                return self._commit_and_index(tmp, request, sender, header, rel, now, fd, one_flush)
            finally:
                if owner != fd:
                    os.close(owner)

    def _commit_and_index(
        self,
        tmp: Path,
        request: StoreRequest,
        sender: str,
        header: InstanceHeader,
        rel: str,
        now: float,
        fd: int | None,
        one_flush: bool,
    ) -> int:
        sop_uid = header.sop_instance_uid
        try:
            self.spool.commit(tmp, rel, synced=not one_flush, fd=fd)
        except AlreadyStored:
            # Another process (a C-GET from the CLI, another receiving process) is storing it
            # this moment. Its copy counts once the index has it: only then are its file and
            # name durable (its flush may yet fail, and take the name away).
            if not self._indexed_soon(sop_uid):
                return self._adopt(tmp, request, sender, header, rel, now, fd, one_flush)
            return self._duplicate(tmp, request, sender, rel, now)
        size = (os.fstat(fd) if fd is not None else self.spool.absolute(rel).stat()).st_size
        try:
            added = self.index.add_instance(header, rel, size, now, request.calling_ae)
        except Exception as exc:
            refused = isinstance(exc, sqlite3.Error)  # the database said no: no row was made
            status = self._not_indexed(request, sender, header, rel, now, refused=refused)
            if status is not None:
                return status
            if refused:  # the database's device, as a full disk is
                raise StorageError(f"the index could not record it ({exc})") from exc
            raise
        if self.refusals.active:  # one look at the free space, only while refusing
            self.refusals.stored(self.spool.free_bytes())
        if added.new_study_row:
            LOG.info(
                "receiving study %s (revision %d) from %s",
                header.study_uid,
                added.revision,
                sender,
            )
        return STATUS_SUCCESS

    def _settled(self, rel: str) -> bool | None:
        """Whether a file is under `rel` that no store holds the lock of (True), or no file
        is (False); None when a store still holds it after INDEXED_WAIT_S."""
        path = self.spool.absolute(rel)
        deadline = time.monotonic() + INDEXED_WAIT_S
        while True:
            try:
                named = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                return False
            try:
                try:
                    fcntl.flock(named, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass
                else:
                    try:
                        now_there = os.stat(path)
                    except FileNotFoundError:
                        return False
                    mine = os.fstat(named)
                    if (now_there.st_dev, now_there.st_ino) == (mine.st_dev, mine.st_ino):
                        return True
                    continue  # the name changed hands meanwhile: look at the new file
            finally:
                os.close(named)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.005)

    def _restore(
        self,
        tmp: Path,
        request: StoreRequest,
        sender: str,
        header: InstanceHeader,
        rel: str,
        now: float,
        fd: int | None,
    ) -> int:
        """This copy takes the place of the instance's missing file, in the same study: the
        technician's remedy, sending the study again from the PACS. Where the uplink has
        hashed the study for the hub, only the same bytes can (the hub was told of them);
        another copy is kept in conflicts/, and the uplink takes it from there if the hub
        turns out to lack that file's part (it registers the study afresh: uplink/lost.py).

        Restores of one study run one at a time, across processes (the study folder's flock).
        The file is durable before its name exists (POSIX's order on every filesystem: the
        row is there already), and the row takes the copy's size before the name exists, so
        the uplink hashing the study meanwhile fails on the missing file instead of pairing
        this copy with the lost one's size; the name stays locked (the caller's flock) until
        the response is sent, and a store that finds it waits for that lock."""
        uid = header.sop_instance_uid
        copy = self.index.held_copy(uid)
        if copy is None:  # its row went meanwhile
            return self._not_now(uid, sender, "its index row changed meanwhile")
        expected, first_sender = copy.sha256, copy.calling_ae
        same_bytes = expected is not None and file_sha256(tmp) == expected
        if not same_bytes and header.demographics().other_patient(copy.patient_id):
            # Put in the file's place, it would make the study name two patients (and, once
            # the hub has the study, give another patient's image to this one's account).
            LOG.warning(
                "instance %s from %s: its file had gone from the storage device, and this copy "
                "names another Patient ID than its study; kept for review (afra conflicts), "
                "the file is still missing",
                uid,
                sender,
            )
            return self._duplicate(tmp, request, sender, rel, now, logged=True)
        if expected is not None and not same_bytes:
            LOG.warning(
                "instance %s from %s: its file had gone from the storage device after its "
                "study was hashed for the hub, and this copy's bytes are not the ones the hub "
                "was told of (another sender than %r, another transfer syntax, or another "
                "firmware version: the box writes both into the file); kept in conflicts/: "
                "if the hub turns out to lack that file's part, the uplink registers the "
                "study afresh with this copy, else the study is delivered from what the hub "
                "holds and the file stays missing here",
                uid,
                sender,
                first_sender,
            )
            return self._duplicate(tmp, request, sender, rel, now, for_lost=True, logged=True)
        if self.spool.one_flush:
            self.spool.fsync_received(tmp, fd)  # the POSIX path flushed it already
        size = (os.fstat(fd) if fd is not None else tmp.stat()).st_size
        with self.spool.folder_locked(rel):
            if self.spool.absolute(rel).exists():  # another process restored it meanwhile
                if not self._settled(rel):
                    return self._not_now(uid, sender, "another store is at it")
                return self._duplicate(tmp, request, sender, rel, now)
            try:
                restored = self.index.restore_instance(
                    header, rel, size, now, request.calling_ae, expected
                )
            except Exception as exc:
                raise StorageError(f"the index could not record the copy ({exc})") from exc
            if not restored:  # its row changed meanwhile (its study purged): judged afresh
                return self._not_now(uid, sender, "its index row changed meanwhile")
            try:
                self.spool.commit(tmp, rel, synced=True)
            except AlreadyStored:  # nobody links an indexed name but a restore: not expected
                return self._not_now(uid, sender, "another copy took its name meanwhile")
            if self.index.delivered_and_purged(uid):
                # Retention purged the delivered study between the row and the link (it
                # found no file to remove): the hub has it, nothing is kept here.
                self.spool.withdraw(rel)
                return STATUS_SUCCESS
        LOG.warning(
            "instance %s from %s: its file had gone from the storage device; this copy "
            "takes its place in its study",
            uid,
            sender,
        )
        return STATUS_SUCCESS

    def _not_indexed(
        self,
        request: StoreRequest,
        sender: str,
        header: InstanceHeader,
        rel: str,
        now: float,
        *,
        refused: bool,
    ) -> int | None:
        """The index call for an instance already durable under its name failed. None: the
        caller answers 0xA700.

        - The row is there after all (a worker's call lost its answer): stored.
        - The UID was indexed under another study a moment before, by another process
          (receiving processes, the CLI's C-GET; their lookups both missed): judged as a copy
          sent again, as the examination would have (one copy, or conflicts/). Otherwise
          the file would stay unindexed, and the next start would meet a UID held twice.
        - No row, and the database refused it (`refused`): the name is taken away, or the
          next start would index (and upload) what its sender was told was refused.
        - No row yet, and no refusal (a worker that lost the main process, which may still
          commit it): the file stays, durable, for that commit or the next start to index;
          taking it away could leave a row over a missing file.
        """
        uid = header.sop_instance_uid
        try:
            held = self.index.find_instance(uid)
        except Exception:
            LOG.exception("cannot look up instance %s after its index row failed", uid)
            return None  # the row may be there: the file stays, for the next start to judge
        if held is not None and held.path == rel:
            return STATUS_SUCCESS
        if held is None:
            if refused:
                self.spool.withdraw(rel)
            return None
        path = self.spool.absolute(rel)
        try:
            return self._duplicate(path, request, sender, held.path, now)
        finally:
            self.spool.withdraw(rel)  # one copy (or the conflict's, moved): this name goes

    def _examine(
        self, tmp: Path, request: StoreRequest
    ) -> tuple[InstanceHeader, StoredInstance | None] | None:
        """Check the object and look its UID up; None when the disk is below the floor.

        In the order docs/conformance.md gives: the floor, the command's UIDs and SOP class,
        the data set. Raises InvalidInstanceError with the status to answer.
        """
        if self.spool.free_bytes() < self.min_free_bytes:
            return None
        sop_uid = check_uid(request.sop_instance_uid, "Affected SOP Instance UID")
        check_uid(request.sop_class_uid, "Affected SOP Class UID")
        if request.sop_class_uid != request.context_abstract_syntax:
            raise InvalidInstanceError(
                f"C-STORE names SOP class {request.sop_class_uid} on a presentation context "
                f"negotiated for {request.context_abstract_syntax}",
                status=STATUS_SOP_CLASS_MISMATCH,
            )
        if request.data_size >= 0 and request.data_size % 2 and request.transfer_syntax != DEFLATED:
            # PS3.5 7.1: every element has an even length, so a data set does. DCMTK aborts
            # on such a file; the box keeps it aside and says it is malformed. A deflated
            # data set is a compressed byte stream (DCMTK sends it unpadded): not checked.
            raise InvalidInstanceError(
                f"the data set has an odd length ({request.data_size} bytes): it is malformed",
                status=STATUS_CANNOT_UNDERSTAND,
            )
        header = _header(tmp, request)
        if header.sop_class_uid != request.sop_class_uid:
            raise InvalidInstanceError(
                f"data set SOP class {header.sop_class_uid} differs from the C-STORE command's "
                f"{request.sop_class_uid}",
                status=STATUS_SOP_CLASS_MISMATCH,
            )
        if header.sop_instance_uid != sop_uid:
            raise InvalidInstanceError(
                f"data set SOP Instance UID {header.sop_instance_uid} differs from the C-STORE "
                f"command's {sop_uid}",
                status=STATUS_SOP_CLASS_MISMATCH,
            )
        return header, self.index.find_instance(sop_uid)

    def _indexed_soon(self, sop_uid: str) -> bool:
        """Whether the index has the instance within INDEXED_WAIT_S (real time: how long
        another process's flush and commit may take, not a time of the box's clock)."""
        deadline = time.monotonic() + INDEXED_WAIT_S
        while self.index.find_instance(sop_uid) is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def _adopt(
        self,
        tmp: Path,
        request: StoreRequest,
        sender: str,
        header: InstanceHeader,
        rel: str,
        now: float,
        fd: int | None,
        one_flush: bool,
    ) -> int:
        """A name nobody indexed within INDEXED_WAIT_S. While the process that linked it still
        holds its lock, it is still at it: refused for now (0xA700). Once free (that process
        died between its link and its index commit, or is done, or start-up left the file
        unindexed), the same data set is made durable here and indexed, as the copy this
        store would have made; a different, readable copy of this instance is indexed as the
        first copy and this one judged as sent again; anything else there is moved to
        conflicts/ and this copy stored in its place; a name gone or taken meanwhile is
        refused for now."""
        uid = header.sop_instance_uid
        try:
            held = os.open(self.spool.absolute(rel), os.O_RDONLY)
        except FileNotFoundError:
            return self._not_now(uid, sender, "its name went meanwhile")
        try:
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if self.index.find_instance(uid) is not None:  # indexed just after the wait
                    return self._duplicate(tmp, request, sender, rel, now)
                return self._not_now(uid, sender, "another process is still storing it")
            if self.index.find_instance(uid) is not None:  # that process indexed it: done
                return self._duplicate(tmp, request, sender, rel, now)
            # The file locked must still be the one under the name: its owner may have taken
            # the name away, and a third store linked its own copy there (and holds its lock).
            try:
                named = os.stat(self.spool.absolute(rel))
            except FileNotFoundError:
                return self._not_now(uid, sender, "its name went meanwhile")
            mine = os.fstat(held)
            if (named.st_dev, named.st_ino) != (mine.st_dev, mine.st_ino):
                return self._not_now(uid, sender, "another copy took its name meanwhile")
            if not self.spool.same_content(tmp, rel):
                # No row, and nobody storing it (its lock is free). A whole instance that
                # belongs under this name may have been acknowledged (a power cut undid its
                # row, and start-up could not index it again): the first copy stays, as
                # start-up would have indexed it, and this one is a copy sent again. Anything
                # else there is nobody's copy: kept for review, and this one takes the name
                # (else a file start-up could not read blocked every copy sent again).
                theirs = self._belongs(rel, uid)
                if theirs is not None:
                    sent_by = source_ae_title(self.spool.absolute(rel))
                    self._index_held(theirs, rel, os.fstat(held).st_size, now, sent_by)
                    LOG.warning(
                        "instance %s: its name held a copy nobody had indexed (from %r); "
                        "indexed as the first copy",
                        uid,
                        sent_by,
                    )
                    return self._duplicate(tmp, request, sender, rel, now)
                self._set_aside(rel, uid, os.fstat(held).st_size, sender, now)
                return self._commit_and_index(tmp, request, sender, header, rel, now, fd, one_flush)
            self._index_held(header, rel, os.fstat(held).st_size, now, request.calling_ae)
        finally:
            os.close(held)
        LOG.warning(
            "instance %s from %s: its name was left unindexed by a process no longer storing "
            "it; the copy there is the same, made durable and indexed here",
            uid,
            sender,
        )
        return STATUS_SUCCESS

    def _belongs(self, rel: str, uid: str) -> InstanceHeader | None:
        """The header of the file under `rel` when it is a readable instance of `uid` whose
        path is `rel`; None for anything else (unreadable, another instance)."""
        try:
            theirs = read_header(self.spool.absolute(rel))
        except InvalidInstanceError:
            return None
        here = self.spool.instance_path(theirs.study_uid, theirs.sop_instance_uid)
        return theirs if theirs.sop_instance_uid == uid and here == rel else None

    def _index_held(
        self, header: InstanceHeader, rel: str, size: int, now: float, calling_ae: str
    ) -> None:
        """Make the unindexed file under `rel` durable (file and folder) and index it; a row
        that came meanwhile (its UID indexed by another process) is as good."""
        self.spool.make_durable(rel)
        try:
            self.index.add_instance(header, rel, size, now, calling_ae)
        except Exception:
            if self.index.find_instance(header.sop_instance_uid) is None:
                raise

    def _set_aside(self, rel: str, uid: str, size: int, sender: str, now: float) -> None:
        """Move an unindexed file nobody stores out of the instance's name, into conflicts/."""
        kept = self.spool.keep_conflict(self.spool.absolute(rel), uid)
        # Its old folder flushed: after a power cut the name stays gone. Only flushed: the name
        # is free now, and another process may already have stored its own copy there.
        self.spool.flush_folder(rel)
        try:
            held_from = source_ae_title(self.spool.absolute(kept))  # who sent that one
            self.index.add_conflict(uid, kept, size, now, held_from)
        except Exception:
            LOG.exception("moved %s to %s, but it could not be listed there", rel, kept)
        LOG.warning(
            "instance %s from %s: its name held a different data set, unindexed and stored by "
            "nobody; that file is kept as %s for review (afra conflicts), this copy stored",
            uid,
            sender,
            kept,
        )

    @staticmethod
    def _not_now(uid: str, sender: str, why: str) -> int:
        LOG.warning(
            "instance %s from %s: %s; refused for now (the sender may send it again)",
            uid,
            sender,
            why,
        )
        return STATUS_OUT_OF_RESOURCES

    def _duplicate(
        self,
        tmp: Path,
        request: StoreRequest,
        sender: str,
        held_path: str,
        now: float,
        *,
        for_lost: bool = False,
        logged: bool = False,
    ) -> int:
        uid = request.sop_instance_uid
        if self.index.delivered_and_purged(uid):
            LOG.info("instance %s from %s already reached the hub; nothing to keep", uid, sender)
            return STATUS_SUCCESS
        if self.spool.same_content(tmp, held_path):
            LOG.info("duplicate instance %s from %s: already held, kept one copy", uid, sender)
            return STATUS_SUCCESS
        rel = self.spool.keep_conflict(tmp, uid, for_lost=for_lost)
        size = self.spool.absolute(rel).stat().st_size
        self.index.add_conflict(uid, rel, size, now, request.calling_ae)
        if logged:
            return STATUS_SUCCESS  # the caller said why
        LOG.warning(
            "conflict: %s sent instance %s again with different content; the first copy stays "
            "in the study, the new one is kept as %s for review",
            sender,
            uid,
            rel,
        )
        return STATUS_SUCCESS

    def _refuse(
        self, tmp: Path, request: StoreRequest, sender: str, status: int, reason: str
    ) -> int:
        rel = ""
        try:
            if tmp.exists():
                rel = self.spool.quarantine(tmp)
            self.index.add_quarantine(
                rel,
                self.clock.time(),
                calling_ae=request.calling_ae,
                peer_address=request.peer_address,
                sop_class_uid=request.sop_class_uid[:80],
                sop_instance_uid=request.sop_instance_uid[:80],
                status=status,
                reason=reason,
            )
        except (StorageError, OSError) as exc:
            LOG.error("could not quarantine a refused object from %s: %s", sender, exc)
        LOG.warning(
            "refused an object from %s: %s; answered 0x%04X%s; ask the sender to check "
            "and resend it",
            sender,
            reason,
            status,
            f"; kept as {rel}" if rel else "",
        )
        return status if status else STATUS_CANNOT_UNDERSTAND
