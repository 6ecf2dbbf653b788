"""The box's DICOM acceptor: Verification and Storage SCP, one thread per association.

pynetdicom decodes and encodes the association PDUs (A-ASSOCIATE-RQ/AC/RJ, A-ABORT) and
negotiates presentation contexts. After acceptance, this module reads P-DATA itself: PDUs
are read, as many as have arrived, into one reusable buffer, command fragments are decoded by
afra.dicom.dimse, and data set fragments go from the buffer to the spool's temp file (through
an aligned buffer written with O_DIRECT where the filesystem takes it). The finished file goes
to the Receiver, whose status becomes the C-STORE response. Why not pynetdicom's own
DUL/DIMSE here: docs/ARCHITECTURE.md.

What the association does with each PDU in each of its states is the table `TABLE` below,
in the spirit of pynetdicom's `fsm.py` (PS3.8 9.2's state table, the acceptor's part): a
state with a PDU the table lacks is an unexpected PDU, answered with A-ABORT (AA-8).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import logging
import mmap
import os
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from afra.dicom import dimse
from afra.dicom.header import (
    STATUS_CANNOT_UNDERSTAND,
    HeadParse,
    is_valid_uid,
)
from afra.dicom.receive import Receiver, StoreRequest
from afra.dicom.sightings import PeerSightings
from afra.dicom.spool import DIRECT_ALIGN, O_DIRECT, start_writeback
from afra.errors import ServiceError

# pynetdicom (negotiation) and the settings' pydantic model are imported where they are used:
# a receiving worker (afra.dicom.workers) serves established associations without them, a
# smaller process (docs/ARCHITECTURE.md).
if TYPE_CHECKING:
    from pynetdicom.pdu_primitives import A_ASSOCIATE
    from pynetdicom.presentation import PresentationContext

    from afra.config import DicomSettings

LOG = logging.getLogger("afra.dicom")

VERIFICATION = "1.2.840.10008.1.1"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


@cache
def storage_sop_classes() -> frozenset[str]:
    from pynetdicom.presentation import AllStoragePresentationContexts

    return frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)


# The transfer syntaxes the box stores as they arrive are config.STORABLE_TRANSFER_SYNTAXES
# (not imported here: a receiving worker runs without pydantic); as an SCP it accepts what
# `dicom.accepted_transfer_syntaxes` allows, in the peer's order (docs/conformance.md).

# PDU types (PS3.8 9.3)
ASSOCIATE_RQ, P_DATA, RELEASE_RQ, ABORT = 0x01, 0x04, 0x05, 0x07
RELEASE_RP_PDU = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
MAX_ASSOCIATE_RQ = 1 << 20  # no honest A-ASSOCIATE-RQ is anywhere near this
# The header is read from the first bytes of a data set kept in memory (docs/ARCHITECTURE.md).
HEAD_BYTES = 64 * 1024
PRE_ASSOCIATION_BUFFER = 16 * 1024
# An association's aligned buffer for direct writes: data go to the file a STAGING_BYTES
# block at a time, the tail with the last fragment (its last partial block buffered). One
# write(2) holds a whole CT or MR image: on the bench's disk one direct write of 512 KiB
# took 0.21 ms, two of 256 KiB 0.27 ms.
STAGING_BYTES = 1024 * 1024
# Once established, PDUs are read through a buffer this much larger than the largest PDU, so
# one recv(2) usually brings the rest of a PDU and the start of the next (fewer system calls,
# fewer releases of the GIL per instance).
READ_AHEAD = 256 * 1024
# The pool (docs/conformance.md 2.2.1.2.2): connections beyond max_associations still negotiating
# or being refused, in all and for one address.
PENDING_CONNECTIONS = 16
PENDING_PER_ADDRESS = 2
ACCEPT_BACKOFF_S = 0.1  # after accept() fails (out of descriptors), before trying again

# The threads that create associations' next temp files (_Association.spare): one set per
# process, for every association and every acceptor it runs (a thread spends its time in
# the kernel, creating an inode).
_OPENER_THREADS = 2
_opener: ThreadPoolExecutor | None = None
_opener_lock = threading.Lock()


def temp_file_opener() -> ThreadPoolExecutor:
    global _opener
    with _opener_lock:
        if _opener is None:
            _opener = ThreadPoolExecutor(_OPENER_THREADS, thread_name_prefix="dicom-open")
        return _opener


# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
# The box's own self-test (afra.update.selftest) calls with this AE title from the box's own
# loopback address and is admitted whatever the peer list says: only a process on the box
# connects from there.
SELFTEST_AE = "AFRA-SELFTEST"
SELF_ADDRESSES = frozenset({ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")})
SELF_KEYS = frozenset(str(ip) for ip in SELF_ADDRESSES)
REJECT_UNKNOWN_PEER = (0x01, 0x01, 0x03)  # permanent, service-user, calling AE not recognized
REJECT_BUSY = (0x02, 0x03, 0x02)  # transient, service-provider (presentation), local limit
REJECT_BAD_CONTEXT_NAME = (0x01, 0x01, 0x02)  # application context name not supported
REJECT_PROTOCOL_VERSION = (0x01, 0x02, 0x02)  # permanent, service-provider (ACSE), version
REJECT_NO_REASON = (0x01, 0x01, 0x01)  # permanent, service-user, no reason given
# A PDV item's length field and its context id and control header, within a P-DATA-TF's
# variable field (what the peer's Maximum Length Received bounds)
PDV_OVERHEAD = 6

# A-ABORT provider reasons
ABORT_UNEXPECTED_PDU = 0x02
ABORT_UNRECOGNIZED_PDU = 0x01
ABORT_INVALID_PARAMETER = 0x06

PDU_NAMES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}


class State(Enum):
    """An association's states as the acceptor has them (PS3.8 9.2 numbers in brackets)."""

    AWAITING_RQ = "transport open, awaiting A-ASSOCIATE-RQ (Sta2; ARTIM: dicom.acse_timeout)"
    READY = "established, between messages (Sta6; idle up to dicom.network_timeout)"
    IN_MESSAGE = "established, a message part received (Sta6; dicom.dimse_timeout)"
    CLOSED = "released or aborted, transport closed (Sta1)"


@dataclass(frozen=True)
class Step:
    """What a PDU does in a state: PS3.8's action, and the method of _Association doing it."""

    action: str
    handler: str


# (state, PDU type received) -> what the acceptor does. AWAITING_RQ is served by
# `_establish` (the association's negotiation); the other states by `_serve`'s loop.
TABLE: dict[tuple[State, int], Step] = {
    (State.AWAITING_RQ, ASSOCIATE_RQ): Step(
        "AE-6: accept (AE-7, A-ASSOCIATE-AC) or reject (AE-8, A-ASSOCIATE-RJ)", "_establish"
    ),
    (State.AWAITING_RQ, ABORT): Step("AA-2: close the transport, nothing sent", "_establish"),
    (State.READY, P_DATA): Step("DT-2: a message begins (command, then data set)", "_p_data"),
    (State.IN_MESSAGE, P_DATA): Step("DT-2: the message goes on or ends", "_p_data"),
    (State.READY, RELEASE_RQ): Step(
        "AR-2, AR-4: A-RELEASE-RP; Sta13: wait for the peer to close (ARTIM)", "_release"
    ),
    (State.READY, ABORT): Step("AA-3: the peer aborted; close", "_peer_abort"),
    (State.IN_MESSAGE, ABORT): Step(
        "AA-3: the peer aborted; the partial message dropped", "_peer_abort"
    ),
}
# The timeout on the socket while in a state (DicomSettings' field).
TIMEOUTS = {State.READY: "network_timeout", State.IN_MESSAGE: "dimse_timeout"}


class HandOff(Protocol):
    """Somewhere else accepted associations may be served (afra.dicom.workers): `serve`
    returns False when it takes none now, else once the association has ended there."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def wait_ready(self, timeout: float) -> bool: ...

    def serve(self, association: _Association) -> bool: ...

    def recheck(self, free: int) -> None: ...


class PeerGone(ConnectionError):
    """The peer closed the connection or stopped sending."""


class ArtimExpired(TimeoutError):
    """No whole A-ASSOCIATE-RQ within the ARTIM time (dicom.acse_timeout)."""


class ProtocolViolation(ValueError):
    """The peer broke the upper layer protocol; the association is aborted."""

    def __init__(self, message: str, reason: int = ABORT_UNEXPECTED_PDU) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PeerPolicy:
    """Which (calling AE title, source address) pairs may open an association."""

    allow_any: bool
    peers: tuple[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network], ...]

    @classmethod
    def from_settings(cls, settings: DicomSettings) -> PeerPolicy:
        return cls(
            allow_any=settings.allow_any_peer,
            peers=tuple(
                (p.ae_title, ipaddress.ip_network(p.host, strict=False)) for p in settings.peers
            ),
        )

    def covers(self, address: str) -> bool:
        """Whether a peer entry covers this source address, or it is the box itself: such an
        address draws on the whole pool, any other on the unconfigured addresses' share."""
        ip = _ip(address)
        return ip is not None and (ip in SELF_ADDRESSES or any(ip in net for _, net in self.peers))

    def allows(self, ae_title: str, address: str) -> bool:
        if self.allow_any:
            return True
        ip = _ip(address)
        if ip is None:
            return False
        if ae_title == SELFTEST_AE and ip in SELF_ADDRESSES:
            return True
        return any(ae_title == title and ip in net for title, net in self.peers)


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # an IPv4 sender on a dual-stack ("::") listener
    return ip


def _address_key(address: str) -> str:
    """One key per sending host (an IPv4-mapped IPv6 address is its IPv4 address)."""
    ip = _ip(address)
    return address if ip is None else str(ip)


@dataclass(frozen=True)
class Limits:
    """How much of the acceptor one address, and the unconfigured addresses together, may hold.

    Derived from dicom.max_associations (docs/conformance.md 2.2.1.2.2): one address holds at
    most half the associations, so one sender cannot keep the others out; addresses no peer
    entry covers share half the pool, so the other half stays for the configured peers. When
    there is no peer entry (allow_any_peer alone) there is no one to keep room for. The box's
    own loopback address (the self-test, tools on the box) has no per-address limit.
    """

    associations: int
    per_address: int
    unknown: int
    connections: int
    connections_per_address: int
    unknown_connections: int

    @classmethod
    def for_pool(cls, max_associations: int, *, reserve: bool) -> Limits:
        half = max(1, max_associations // 2)
        connections = max_associations + PENDING_CONNECTIONS
        return cls(
            associations=max_associations,
            per_address=half,
            unknown=max_associations // 2 if reserve else max_associations,
            connections=connections,
            connections_per_address=half + PENDING_PER_ADDRESS,
            unknown_connections=connections // 2 if reserve else connections,
        )


class Occupancy:
    """Who holds the acceptor's connections and associations: each check and its count under
    one lock. `connect` and `associate` return None when admitted, else why not (for the log)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._connections: Counter[str] = Counter()
        self._associations: Counter[str] = Counter()
        self._unknown_connections = 0
        self._unknown_associations = 0

    @property
    def associations(self) -> int:
        with self._lock:
            return sum(self._associations.values())

    def connect(self, address: str, known: bool) -> str | None:
        key, limits = _address_key(address), self.limits
        with self._lock:
            total = sum(self._connections.values())
            if total >= limits.connections:
                return f"{total} connections already open"
            if self._connections[key] >= limits.connections_per_address and key not in SELF_KEYS:
                return f"{self._connections[key]} connections already open from this address"
            if not known and self._unknown_connections >= limits.unknown_connections:
                return (
                    f"{self._unknown_connections} connections already open from addresses "
                    "no peer entry covers"
                )
            self._connections[key] += 1
            self._unknown_connections += not known
            return None

    def disconnect(self, address: str, known: bool) -> None:
        key = _address_key(address)
        with self._lock:
            self._connections[key] -= 1
            if self._connections[key] <= 0:
                del self._connections[key]
            self._unknown_connections -= not known

    def associate(self, address: str, known: bool) -> str | None:
        key, limits = _address_key(address), self.limits
        with self._lock:
            total = sum(self._associations.values())
            if total >= limits.associations:
                return f"{total} associations already open (dicom.max_associations)"
            if self._associations[key] >= limits.per_address and key not in SELF_KEYS:
                return (
                    f"{self._associations[key]} associations already open from this address "
                    "(half of dicom.max_associations)"
                )
            if not known and self._unknown_associations >= limits.unknown:
                return (
                    f"{self._unknown_associations} associations already open from addresses "
                    "no peer entry covers (half of dicom.max_associations)"
                )
            self._associations[key] += 1
            self._unknown_associations += not known
            return None

    def dissociate(self, address: str, known: bool) -> None:
        key = _address_key(address)
        with self._lock:
            self._associations[key] -= 1
            if self._associations[key] <= 0:
                del self._associations[key]
            self._unknown_associations -= not known


def is_storage_class(uid: str, *, unknown: bool) -> bool:
    """A SOP class the box stores: a storage class pynetdicom knows, or (with `unknown`) one
    of no known service at all, such as a vendor's private non-image object. A SOP class of
    another service (query/retrieve, worklist, commitment, print) is never storage."""
    from pynetdicom.service_class import ServiceClass
    from pynetdicom.sop_class import uid_to_service_class

    if uid in storage_sop_classes():
        return True
    if not unknown or uid == VERIFICATION or not is_valid_uid(uid):
        return False
    return uid_to_service_class(uid) is ServiceClass  # pynetdicom: "no service known"


def supported_contexts(
    requested: Iterable[PresentationContext], settings: DicomSettings
) -> list[PresentationContext]:
    """The box's side of the negotiation, built for what the peer proposes.

    One context per abstract syntax, its transfer syntaxes the accepted ones in the order
    the peer proposed them (over all its contexts for that abstract syntax): pynetdicom's
    `negotiate_as_acceptor` walks the acceptor's list and takes the first the requested
    context holds, so each context gets the first syntax the peer proposed in it that the
    box accepts. A PACS that proposes [JPEG 2000, Explicit VR LE] keeps its JPEG 2000."""
    from pynetdicom.presentation import build_context

    accepted = set(settings.accepted_transfer_syntaxes)
    order: dict[str, dict[str, None]] = {}
    for cx in requested:
        uid = str(cx.abstract_syntax)
        if uid != VERIFICATION and not is_storage_class(
            uid, unknown=settings.accept_unknown_sop_classes
        ):
            continue
        syntaxes = order.setdefault(uid, {})
        for ts in cx.transfer_syntax:
            if str(ts) in accepted or uid == VERIFICATION:
                syntaxes.setdefault(str(ts), None)
    # An abstract syntax with none of its syntaxes accepted keeps the box's list, so the
    # peer hears "transfer syntaxes not supported" (4), not "abstract syntax" (3).
    fallback = list(settings.accepted_transfer_syntaxes)
    return [
        build_context(uid, list(syntaxes) or fallback) for uid, syntaxes in sorted(order.items())
    ]


def _pdu_header(data: memoryview, offset: int, limit: int) -> tuple[int, int]:
    """A PDU's type and length from its 6-byte header at `offset` (PS3.8 9.3.1), refused
    when the type is none of PS3.8's or the length is over `limit`."""
    pdu_type, _reserved, length = struct.unpack_from(">BBI", data, offset)
    if pdu_type not in PDU_NAMES:
        raise ProtocolViolation(
            f"unrecognised PDU type 0x{pdu_type:02X} (is this a DICOM peer?)",
            ABORT_UNRECOGNIZED_PDU,
        )
    if length > limit:
        raise ProtocolViolation(
            f"PDU of {length} bytes exceeds the {limit}-byte limit", ABORT_INVALID_PARAMETER
        )
    return pdu_type, length


def _rejected_context(requested: PresentationContext) -> PresentationContext:
    """The answer to a proposed context the box cannot negotiate: result 2 (no reason)."""
    from pydicom.uid import ImplicitVRLittleEndian
    from pynetdicom.presentation import PresentationContext

    answer = PresentationContext()
    answer.context_id = requested.context_id
    answer.abstract_syntax = requested.abstract_syntax
    answer.transfer_syntax = [ImplicitVRLittleEndian]  # a placeholder; PS3.8: ignored
    answer.result = 0x02
    return answer


@dataclass
class _Message:
    """A DIMSE message being received on one presentation context."""

    context_id: int
    command: bytearray = field(default_factory=bytearray)
    decoded: dimse.Command | None = None
    fd: int = -1
    path: Path | None = None
    # The temp file, still being created on another thread (the spare, see _Association);
    # fd and path are set from it by _Association._opened once a byte must be written.
    opening: Future[tuple[int, Path]] | None = None
    written: int = 0  # bytes of the file given to os.write (buffered) or staged (direct)
    # The data set's first HEAD_BYTES, growing (bytearray) until whole, then frozen (bytes):
    # walked and handed to the Receiver without another copy.
    head: bytearray | bytes = field(default_factory=bytearray)
    # The head being walked on another thread from the moment it is whole (Receiver.walk_head)
    head_walk: Future[HeadParse | None] | None = None
    data_size: int = 0
    # Why it cannot be kept (fd == -2; "" for a disk below the floor): Receiver.refuse_for_space
    failure: str = ""
    direct: bool = False  # fd was opened with O_DIRECT: writes go through the staging buffer


class _Association:
    """One accepted connection, served on its own thread."""

    def __init__(self, server: Acceptor, sock: socket.socket, address: str, known: bool) -> None:
        self.server = server
        self.sock = sock
        self.address = address
        self.known = known  # a peer entry covers the address (Limits)
        self.settings = server.settings
        self.calling_ae = ""
        self.contexts: dict[int, tuple[str, str]] = {}
        self.peer_max_pdu = 0
        # Small until the association is accepted: an unknown peer costs almost nothing.
        self.buffer = bytearray(PRE_ASSOCIATION_BUFFER)
        self.view = memoryview(self.buffer)
        self.deadline: float | None = None
        self.late: type[TimeoutError] = ArtimExpired  # what a missed deadline raises
        # Every PDU the box sends goes out whole under this lock: stop() may send an A-ABORT
        # from another thread while this one answers.
        self.send_lock = threading.Lock()
        self.aborted_by_stop = False
        self.message: _Message | None = None
        self.stored = 0
        # The next instance's temp file, created on another thread from our response on (the
        # creation of a fresh inode costs 0.1-1 ms): the association goes straight on
        # reading the next C-STORE and waits for the file only when it first writes to it.
        self.spare: Future[tuple[int, Path]] | None = None
        # After establishment: PDUs are read through this buffer (see READ_AHEAD); bytes
        # inbox[start:end] are received and not yet taken.
        self.inbox: memoryview | None = None
        self.in_start = 0
        self.in_end = 0
        self.on_end: list[Callable[[], None]] = []  # called once the association has ended
        # Called once it is released (its place in the pool free), in the process serving it.
        self.on_release: list[Callable[[], None]] = []
        # Set while a receiving worker serves it (afra.dicom.workers): the A-ABORT on stop is
        # the worker's to send, under its own send lock, never interleaved with its PDUs.
        self.abort_elsewhere: Callable[[], None] | None = None
        # Direct I/O (the spool says whether its filesystem takes it): the aligned buffer
        # (an anonymous mapping, so page-aligned) and how much of it holds unwritten data.
        self.direct = False
        self.staging: mmap.mmap | None = None
        self.stage_view: memoryview | None = None
        self.staged = 0

    # -- socket primitives ---------------------------------------------------------------

    def _recv_exact(self, view: memoryview) -> None:
        got, want = 0, len(view)
        while got < want:
            if self.deadline is not None:
                # A whole PDU within its timeout, not a byte per timeout: the A-ASSOCIATE-RQ
                # within acse_timeout (ARTIM), each later PDU within the state's timeout.
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise self.late("the peer did not send a whole PDU in time")
                self.sock.settimeout(left)
            n = self.sock.recv_into(view[got:], want - got)
            if n == 0:
                raise PeerGone("peer closed the connection")
            got += n

    def _send(self, data: bytes | bytearray, *, patience: float | None = None) -> None:
        """Send one PDU whole, under the send lock. Established, the socket is non-blocking:
        the PDU goes within `patience` seconds (default the DIMSE timeout; 0: one attempt)."""
        with self.send_lock:
            if self.inbox is None:  # still negotiating: the socket's timeout bounds sendall
                self.sock.sendall(data)
                return
            left = self.settings.dimse_timeout if patience is None else patience
            deadline = time.monotonic() + left
            view = memoryview(data)
            while view:
                try:
                    view = view[self.sock.send(view) :]
                except BlockingIOError:
                    if not self._await(select.POLLOUT, deadline):
                        raise TimeoutError("the peer took no data in time") from None

    def _await(self, event: int, deadline: float) -> bool:
        """Wait until the non-blocking socket is ready for `event` (POLLIN, POLLOUT) or the
        deadline passes; False if it had already passed."""
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        poller = select.poll()
        poller.register(self.sock, event)
        poller.poll(max(1, int(left * 1000 + 0.999)))
        return True

    def _read_pdu(self, limit: int) -> tuple[int, memoryview]:
        header = self.view[:6]
        self._recv_exact(header)
        pdu_type, length = _pdu_header(header, 0, limit)
        if length + 6 > len(self.buffer):
            self.buffer = bytearray(length + 6)
            self.view = memoryview(self.buffer)
        body = self.view[6 : 6 + length]
        self._recv_exact(body)
        return pdu_type, body

    def _fill(self, want: int) -> None:
        """Have at least `want` unread bytes in the inbox, receiving what has arrived.

        The socket is non-blocking once established: a recv(2) takes whatever is there, and
        only when nothing is does the thread wait (poll) until the PDU's deadline.
        """
        inbox = self.inbox
        assert inbox is not None
        if self.in_end - self.in_start >= want:
            return
        if len(inbox) - self.in_start < want:
            # Not enough room after the unread bytes: move them to the front. They are the
            # start of one PDU at most, so this copies little, and rarely.
            kept = self.in_end - self.in_start
            inbox[:kept] = bytes(inbox[self.in_start : self.in_end])
            self.in_start, self.in_end = 0, kept
        while self.in_end - self.in_start < want:
            try:
                n = self.sock.recv_into(inbox[self.in_end :])
            except BlockingIOError:
                assert self.deadline is not None
                if not self._await(select.POLLIN, self.deadline):
                    raise self.late("the peer did not send a whole PDU in time") from None
                continue
            if n == 0:
                raise PeerGone("peer closed the connection")
            self.in_end += n

    def _next_pdu(self, limit: int) -> tuple[int, memoryview]:
        """The next PDU of an established association, from the inbox (see _fill).

        The body is a view into the inbox, valid until the next call.
        """
        self._fill(6)
        assert self.inbox is not None
        pdu_type, length = _pdu_header(self.inbox, self.in_start, limit)
        self._fill(6 + length)
        start = self.in_start + 6
        self.in_start = start + length
        if self.in_start == self.in_end:
            self.in_start = self.in_end = 0
        return pdu_type, self.inbox[start : start + length]

    def _send_abort(self, reason: int) -> None:
        """A-ABORT from the service provider (source 2) with `reason` (PS3.8 9.3.8)."""
        with contextlib.suppress(OSError):
            # One attempt: after a send that timed out, the peer is not reading anyway.
            self._send(struct.pack(">BBIBBBB", ABORT, 0, 4, 0, 0, 2, reason), patience=0)

    # -- association establishment -----------------------------------------------------

    def _reject(self, rsd: tuple[int, int, int], rq: A_ASSOCIATE) -> None:
        from pynetdicom.pdu import A_ASSOCIATE_RJ
        from pynetdicom.pdu_primitives import A_ASSOCIATE

        primitive = A_ASSOCIATE()
        primitive.result, primitive.result_source, primitive.diagnostic = rsd
        pdu = A_ASSOCIATE_RJ()
        pdu.from_primitive(primitive)
        self._send(pdu.encode())

    def _establish(self) -> bool:
        from pydicom.uid import UID
        from pynetdicom.pdu import A_ASSOCIATE_RQ
        from pynetdicom.pdu_primitives import (
            MaximumLengthNotification,
            SCP_SCU_RoleSelectionNegotiation,
        )
        from pynetdicom.presentation import negotiate_as_acceptor

        self.deadline = time.monotonic() + self.settings.acse_timeout
        try:
            pdu_type, body = self._read_pdu(MAX_ASSOCIATE_RQ)
        except TimeoutError as exc:
            raise ArtimExpired(str(exc)) from None
        self.deadline = None
        if pdu_type == ABORT:
            raise PeerGone("the peer sent A-ABORT before an association")
        if (State.AWAITING_RQ, pdu_type) not in TABLE:
            raise ProtocolViolation(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}")
        rq_pdu = A_ASSOCIATE_RQ()
        try:
            rq_pdu.decode(bytes(self.buffer[: 6 + len(body)]))
            rq = rq_pdu.to_primitive()
        except (ValueError, KeyError, IndexError, TypeError, AssertionError, struct.error) as exc:
            # pynetdicom's decoder raises what the bytes give it (the fuzz suite found
            # UnicodeDecodeError, KeyError 0, ValueError, its own asserts): a broken PDU.
            raise ProtocolViolation(
                f"unreadable A-ASSOCIATE-RQ ({exc.__class__.__name__}: {exc})",
                ABORT_INVALID_PARAMETER,
            ) from None
        self.calling_ae = str(rq.calling_ae_title).strip()
        if not int(rq_pdu.protocol_version) & 0x0001:
            # PS3.8 9.3.2: bit 0 is protocol version 1, the only one there is.
            LOG.warning(
                "rejected an association from %s: protocol version 0x%04X (only 1 exists)",
                self.address,
                int(rq_pdu.protocol_version),
            )
            self._reject(REJECT_PROTOCOL_VERSION, rq)
            return False
        if not self.server.policy.allows(self.calling_ae, self.address):
            LOG.warning(
                "rejected an association from AE %r at %s: not a configured peer "
                "(add it under [[dicom.peers]] to allow it)",
                self.calling_ae,
                self.address,
            )
            self._reject(REJECT_UNKNOWN_PEER, rq)
            return False
        if str(rq.application_context_name) != APPLICATION_CONTEXT:
            self._reject(REJECT_BAD_CONTEXT_NAME, rq)
            return False
        for item in rq.user_information:
            if isinstance(item, MaximumLengthNotification):
                self.peer_max_pdu = int(item.maximum_length_received or 0)
        if 0 < self.peer_max_pdu <= PDV_OVERHEAD:
            # Not one byte of a response would fit in a P-DATA-TF it accepts (PS3.8 9.3.5).
            LOG.warning(
                "rejected an association from AE %r at %s: it accepts PDUs of at most %d "
                "bytes, too small to carry any answer",
                self.calling_ae,
                self.address,
                self.peer_max_pdu,
            )
            self._reject(REJECT_NO_REASON, rq)
            return False
        refusal = self.server.occupancy.associate(self.address, self.known)
        if refusal is not None:
            LOG.warning(
                "rejected an association from AE %r at %s: %s",
                self.calling_ae,
                self.address,
                refusal,
            )
            self._reject(REJECT_BUSY, rq)
            return False
        self.admitted = True
        roles: dict[UID, tuple[bool | None, bool | None]] = {}
        for item in rq.user_information:
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid:
                roles[UID(str(item.sop_class_uid))] = (item.scu_role, item.scp_role)
        requested = list(rq.presentation_context_definition_list)
        # A context must propose at least one transfer syntax (PS3.8 9.3.2.2); one without
        # is answered "rejected, no reason" (pynetdicom's negotiation cannot take it).
        empty = [cx for cx in requested if not cx.transfer_syntax]
        requested = [cx for cx in requested if cx.transfer_syntax]
        results, ac_roles = negotiate_as_acceptor(
            requested, supported_contexts(requested, self.settings), roles or None
        )
        if empty:
            LOG.warning(
                "AE %r at %s proposed %d presentation context(s) without a transfer syntax: "
                "rejected",
                self.calling_ae,
                self.address,
                len(empty),
            )
            results = sorted(
                [*results, *(_rejected_context(cx) for cx in empty)],
                key=lambda cx: int(cx.context_id or 0),
            )
        for cx in results:
            if cx.result == 0x00 and cx.context_id is not None:
                self.contexts[int(cx.context_id)] = (
                    str(cx.abstract_syntax),
                    str(cx.transfer_syntax[0]),
                )
        self._accept(rq, results, ac_roles)
        LOG.info(
            "association accepted from AE %r at %s (%d presentation context(s))",
            self.calling_ae,
            self.address,
            len(self.contexts),
        )
        return True

    def _ready(self) -> None:
        """What serving an established association takes: the PDU buffer, the direct-write
        buffer, the first temp file."""
        self.inbox = memoryview(bytearray(self.settings.max_pdu + 6 + READ_AHEAD))
        self.in_start = self.in_end = 0
        self.buffer = bytearray()  # the negotiation's (up to 1 MiB for a large RQ): done
        self.view = memoryview(self.buffer)
        self.sock.setblocking(False)
        if self.server.receiver.spool.direct_io:
            self.direct = True
            self.staging = mmap.mmap(-1, STAGING_BYTES)
            self.stage_view = memoryview(self.staging)
        self._prepare_spare()

    def handoff_state(self) -> dict[str, Any]:
        """What another process needs to serve this association (see `established`)."""
        return {
            "address": self.address,
            "known": self.known,
            "calling_ae": self.calling_ae,
            "contexts": self.contexts,
            "peer_max_pdu": self.peer_max_pdu,
        }

    @classmethod
    def established(cls, server: Any, sock: socket.socket, state: dict[str, Any]) -> _Association:
        """An association negotiated by another process, served here from its first P-DATA."""
        association = cls(server, sock, str(state["address"]), bool(state["known"]))
        association.calling_ae = str(state["calling_ae"])
        association.contexts = {int(k): (str(a), str(t)) for k, (a, t) in state["contexts"].items()}
        association.peer_max_pdu = int(state["peer_max_pdu"])
        association.admitted = True
        return association

    def _accept(self, rq: A_ASSOCIATE, results: list[PresentationContext], roles: Any) -> None:
        from pynetdicom.pdu import A_ASSOCIATE_AC
        from pynetdicom.pdu_primitives import (
            A_ASSOCIATE,
            ImplementationClassUIDNotification,
            ImplementationVersionNameNotification,
            MaximumLengthNotification,
        )

        primitive = A_ASSOCIATE()
        primitive.application_context_name = APPLICATION_CONTEXT
        primitive.calling_ae_title = rq.calling_ae_title
        primitive.called_ae_title = rq.called_ae_title
        primitive.result = 0x00
        primitive.result_source = 0x01
        primitive.presentation_context_definition_results_list = results
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = self.settings.max_pdu
        uid = ImplementationClassUIDNotification()
        uid.implementation_class_uid = dimse.IMPLEMENTATION_CLASS_UID
        name = ImplementationVersionNameNotification()
        name.implementation_version_name = dimse.IMPLEMENTATION_VERSION_NAME
        primitive.user_information = [max_length, uid, name, *roles]
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(primitive)
        self._send(pdu.encode())

    # -- data transfer -------------------------------------------------------------------

    def _send_command(self, context_id: int, command: bytes) -> None:
        """Send a command set in P-DATA-TF PDUs no larger than the peer accepts."""
        room = (self.peer_max_pdu or 1 << 30) - PDV_OVERHEAD
        chunks = [command[i : i + room] for i in range(0, len(command), room)] or [b""]
        out = bytearray()
        for n, chunk in enumerate(chunks):
            control = 0x03 if n == len(chunks) - 1 else 0x01
            item = struct.pack(">IBB", len(chunk) + 2, context_id, control) + chunk
            out += struct.pack(">BBI", P_DATA, 0, len(item)) + item
        self._send(out)

    @property
    def state(self) -> State:
        if self.closed:
            return State.CLOSED
        if not self.admitted:
            return State.AWAITING_RQ
        return State.READY if self.message is None else State.IN_MESSAGE

    def _serve(self) -> None:
        """The established association: each PDU does what TABLE says for the state."""
        handlers = {
            key: getattr(self, step.handler) for key, step in TABLE.items() if key[0] in TIMEOUTS
        }
        timeouts = {state: getattr(self.settings, name) for state, name in TIMEOUTS.items()}
        while not self.closed:
            state = self.state
            # Mid-message the peer owes us the rest (DIMSE timeout); between messages the
            # association may idle (network timeout). Either is a deadline for the whole
            # next PDU: a peer trickling a byte at a time is dropped when it passes.
            self.late = TimeoutError
            self.deadline = time.monotonic() + timeouts[state]
            pdu_type, body = self._next_pdu(self.settings.max_pdu)
            handler = handlers.get((state, pdu_type))
            if handler is None:
                raise ProtocolViolation(
                    f"unexpected {PDU_NAMES.get(pdu_type, hex(pdu_type))} "
                    f"{'in the middle of a message' if state is State.IN_MESSAGE else 'now'}"
                )
            handler(body)

    def _release(self, body: memoryview) -> None:
        self._send(RELEASE_RP_PDU)
        self.closed = True
        # The association is over: its place in the pool is free at once, while the
        # connection waits for the peer to close it (_await_close).
        if self.admitted:
            self.admitted = False
            self.server.occupancy.dissociate(self.address, self.known)
        for callback in self.on_release:
            callback()
        LOG.info(
            "association with AE %r at %s released (%d instance(s) stored)",
            self.calling_ae,
            self.address,
            self.stored,
        )
        self._await_close()

    def _await_close(self) -> None:
        """PS3.8 Sta13: after A-RELEASE-RP the requestor closes the transport; the acceptor
        waits for that with ARTIM running (dicom.acse_timeout), ignoring what still arrives,
        and closes it itself when ARTIM expires (AA-2)."""
        deadline = time.monotonic() + self.settings.acse_timeout
        scratch = memoryview(bytearray(4096))
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                try:
                    if self.sock.recv_into(scratch) == 0:
                        return
                except TimeoutError:
                    break
        except OSError:
            return  # reset or shut down: closed either way
        LOG.info(
            "AE %r at %s did not close the connection after the release within %g s "
            "(dicom.acse_timeout); closed it",
            self.calling_ae,
            self.address,
            self.settings.acse_timeout,
        )

    def abort_for_stop(self) -> None:
        """The box is stopping: A-ABORT (service user) to the peer, then cut the transport;
        the peer's next C-STORE goes to another attempt, nothing half-stored is kept."""
        self.aborted_by_stop = True
        if self.abort_elsewhere is not None:
            self.abort_elsewhere()
            return
        # Not behind a response the peer does not read (it would hold the send lock for the
        # DIMSE timeout): then no A-ABORT, only the cut, which also ends that send.
        if self.admitted and not self.closed and self.send_lock.acquire(timeout=1.0):
            self.send_lock.release()
            with contextlib.suppress(OSError):
                # A-ABORT, source 0 (service user), reason 0 (PS3.8 9.3.8)
                self._send(struct.pack(">BBIBBBB", ABORT, 0, 4, 0, 0, 0, 0), patience=1.0)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _peer_abort(self, body: memoryview) -> None:
        self.closed = True
        LOG.warning(
            "association with AE %r at %s aborted by the peer", self.calling_ae, self.address
        )

    def _p_data(self, body: memoryview) -> None:
        offset, end = 0, len(body)
        while offset < end:
            if end - offset < 6:
                raise ProtocolViolation(
                    "PDV item header runs past its PDU", ABORT_INVALID_PARAMETER
                )
            item_length, context_id, control = struct.unpack_from(">IBB", body, offset)
            if item_length < 2 or offset + 4 + item_length > end:
                raise ProtocolViolation("PDV item length is wrong", ABORT_INVALID_PARAMETER)
            fragment = body[offset + 6 : offset + 4 + item_length]
            offset += 4 + item_length
            if context_id not in self.contexts:
                raise ProtocolViolation(f"PDV on presentation context {context_id}, not accepted")
            message = self.message
            if message is None:
                message = self.message = _Message(context_id)
            elif message.context_id != context_id:
                raise ProtocolViolation("PDV of another context in the middle of a message")
            if control & 0x01:
                self._command_fragment(message, fragment, last=bool(control & 0x02))
            else:
                self._data_fragment(message, fragment, last=bool(control & 0x02))

    def _command_fragment(self, message: _Message, fragment: memoryview, last: bool) -> None:
        if message.decoded is not None:
            raise ProtocolViolation("command fragment after the command set ended")
        message.command += fragment
        if len(message.command) > dimse.MAX_COMMAND_BYTES:
            raise ProtocolViolation("command set too large", ABORT_INVALID_PARAMETER)
        if not last:
            return
        try:
            command = dimse.decode_command(message.command)
        except dimse.CommandError as exc:
            raise ProtocolViolation(f"unreadable command set: {exc}") from None
        message.decoded = command
        if command.command_field == dimse.C_STORE_RQ and command.has_data_set:
            self._open_instance(message, command)
        elif not command.has_data_set:
            self._finish(message)

    def _open_instance(self, message: _Message, command: dimse.Command) -> None:
        _abstract, transfer_syntax = self.contexts[message.context_id]
        if not self.server.receiver.has_room():
            message.fd = -2  # below the floor: drain the data set, answer out-of-resources
            return
        message.direct = self.direct
        if self.spare is not None:
            message.opening, self.spare = self.spare, None
        else:
            try:
                message.fd, message.path = self._create_tmp(self.direct)
            except OSError as exc:
                message.fd = -2  # drain the data set, answer out-of-resources
                message.failure = f"could not make its temp file ({exc})"
                return
        self.staged = 0
        header = dimse.part10_header(
            command.affected_sop_class_uid,
            command.affected_sop_instance_uid,
            transfer_syntax,
            self.calling_ae,
        )
        self._write(message, header)

    def _create_tmp(self, direct: bool) -> tuple[int, Path]:
        path = self.server.receiver.spool.new_tmp_path()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | (O_DIRECT if direct else 0)
        return os.open(path, flags, 0o640), path

    def _prepare_spare(self) -> None:
        if self.spare is None:
            try:
                self.spare = temp_file_opener().submit(self._create_tmp, self.direct)
            except RuntimeError:  # the interpreter is exiting: the next C-STORE makes its own
                self.spare = None

    def _opened(self, message: _Message) -> None:
        """Take the temp file the spare was creating; OSError if neither it nor a second try
        could be made (a full or failing disk)."""
        opening, message.opening = message.opening, None
        if opening is None:
            return
        # Not result(): re-raised here, the other thread's exception would keep this thread's
        # frames (and the staging buffer they see) alive in a reference cycle.
        failed = opening.exception()
        if failed is None:
            message.fd, message.path = opening.result()
            return
        LOG.debug("the spare temp file could not be made (%s); trying again", failed)
        message.fd, message.path = self._create_tmp(message.direct)

    def _drop_spare(self) -> None:
        spare, self.spare = self.spare, None
        if spare is None:
            return
        if spare.exception() is not None:
            return  # no file was made
        fd, path = spare.result()
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)

    def _write(self, message: _Message, data: bytes | memoryview, *, last: bool = False) -> None:
        if message.fd < 0 and message.opening is None:
            return  # a data set nobody will store (e.g. after a write failure): drain it
        try:
            if message.direct:
                self._stage(message, data, last)
                return
            self._opened(message)
            view = memoryview(data)
            while view:  # os.write may write less than asked (a full disk, a file size limit)
                view = view[os.write(message.fd, view) :]
        except OSError as exc:
            LOG.error("cannot write a received object to %s: %s", message.path, exc)
            self._discard(message)
            message.fd = -2  # remember the failure: answer out-of-resources
            message.failure = f"could not write it ({exc})"
            return
        start_writeback(message.fd, message.written, len(data))
        message.written += len(data)

    def _stage(self, message: _Message, data: bytes | memoryview, last: bool) -> None:
        """Direct I/O: copy into the aligned buffer, write it out each time it is full; with
        the last fragment, the rest (its last partial block buffered).
        (The spool probed that its filesystem takes such writes: Spool.direct_io.)"""
        stage = self.stage_view
        assert stage is not None
        view = memoryview(data)
        while view:
            n = min(STAGING_BYTES - self.staged, len(view))
            stage[self.staged : self.staged + n] = view[:n]
            self.staged += n
            message.written += n
            view = view[n:]
            if self.staged == STAGING_BYTES:
                self._write_staged(message, STAGING_BYTES)
        if last and self.staged:
            # The aligned part directly, the last partial block (< 4 KiB) through the page
            # cache: it starts at the end of the file, so nothing is read back, and the file
            # need not be cut (a cut of a block written directly reads that block again).
            rest, aligned = self.staged % DIRECT_ALIGN, self.staged - self.staged % DIRECT_ALIGN
            if aligned:
                self._write_staged(message, aligned, keep=rest)
            if rest:
                self._opened(message)
                flags = fcntl.fcntl(message.fd, fcntl.F_GETFL)
                fcntl.fcntl(message.fd, fcntl.F_SETFL, flags & ~O_DIRECT)
                view = stage[aligned : aligned + rest]
                while view:
                    view = view[os.write(message.fd, view) :]
            self.staged = 0

    def _write_staged(self, message: _Message, length: int, keep: int = 0) -> None:
        stage = self.stage_view
        assert stage is not None
        self._opened(message)
        view = stage[:length]
        while view:  # a short write (a full disk) returns a whole number of blocks
            view = view[os.write(message.fd, view) :]
        self.staged = keep

    def _data_fragment(self, message: _Message, fragment: memoryview, last: bool) -> None:
        if message.decoded is None or not message.decoded.has_data_set:
            raise ProtocolViolation("data set fragment before its command set ended")
        if len(message.head) < HEAD_BYTES:
            message.head += fragment[: HEAD_BYTES - len(message.head)]
            if len(message.head) == HEAD_BYTES and (message.fd >= 0 or message.opening is not None):
                # Walked while the rest is received, written and flushed.
                _abstract, transfer_syntax = self.contexts[message.context_id]
                message.head = bytes(message.head)
                message.head_walk = self.server.receiver.walk_head(message.head, transfer_syntax)
        self._write(message, fragment, last=last)
        message.data_size += len(fragment)
        if last:
            self._finish(message)

    def _finish(self, message: _Message) -> None:
        self.message = None
        command = message.decoded
        assert command is not None
        if command.command_field == dimse.C_ECHO_RQ:
            self._send_command(
                message.context_id, dimse.encode_response(command, dimse.C_ECHO_RSP, 0x0000)
            )
            self.server.sightings.echo(self.calling_ae, self.address)
            return
        if command.command_field == dimse.C_CANCEL_RQ or command.command_field & 0x8000:
            self._discard(message)  # nothing of ours to cancel; responses are not expected
            return
        if command.command_field != dimse.C_STORE_RQ:
            self._discard(message)
            self._send_command(
                message.context_id,
                dimse.encode_response(
                    command, command.command_field | 0x8000, dimse.STATUS_UNRECOGNIZED_OPERATION
                ),
            )
            return
        try:
            status = self._store(message, command)
            self._send_command(
                message.context_id, dimse.encode_response(command, dimse.C_STORE_RSP, status)
            )
        finally:
            # After the response: the peer prepares its next C-STORE while we tidy up.
            self._discard(message)
        if status == 0:
            self.stored += 1
            self.server.sightings.store(self.calling_ae, self.address)
        self._prepare_spare()

    def _store(self, message: _Message, command: dimse.Command) -> int:
        if message.opening is not None:  # nothing was written yet (an empty data set)
            try:
                self._opened(message)
            except OSError as exc:
                message.fd = -2
                message.failure = f"could not make its temp file ({exc})"
        if message.fd != -2 and message.path is None:
            return STATUS_CANNOT_UNDERSTAND
        abstract, transfer_syntax = self.contexts[message.context_id]
        request = StoreRequest(
            sop_class_uid=command.affected_sop_class_uid,
            sop_instance_uid=command.affected_sop_instance_uid,
            context_abstract_syntax=abstract,
            calling_ae=self.calling_ae,
            peer_address=self.address,
            head=bytes(message.head),
            data_size=message.data_size,
            transfer_syntax=transfer_syntax,
            move_originator_ae=command.move_originator_ae,
            move_originator_id=command.move_originator_message_id,
            fd=message.fd,
            head_walk=message.head_walk,
        )
        if message.fd == -2 or message.path is None:
            # Out of resources, said once for the lot (and to health), not per object.
            why = f"{message.failure}; check the storage device" if message.failure else ""
            return self.server.receiver.refuse_for_space(request, why)
        return self.server.receiver.store(message.path, request)

    def _discard(self, message: _Message) -> None:
        if message.opening is not None:
            with contextlib.suppress(OSError):
                self._opened(message)
        if message.fd >= 0:
            os.close(message.fd)
            message.fd = -1
        if message.path is not None:
            message.path.unlink(missing_ok=True)

    # -- the thread ----------------------------------------------------------------------

    admitted = False
    closed = False

    def run(self, *, established: bool = False) -> None:
        """Serve the connection (`established`: negotiated elsewhere, see `established`)."""
        try:
            if established or self._establish():
                handoff = self.server.handoff
                if established or handoff is None or not handoff.serve(self):
                    self._ready()
                    self._serve()
        except ProtocolViolation as exc:
            LOG.warning(
                "aborted the association with %s (AE %r): %s",
                self.address,
                self.calling_ae or "?",
                exc,
            )
            self._send_abort(exc.reason)
        except (PeerGone, ConnectionError) as exc:
            if self.aborted_by_stop:
                LOG.info("association with %s aborted: the box is stopping", self.address)
            elif self.message is not None or not self.calling_ae:
                LOG.warning("connection from %s lost: %s", self.address, exc)
        except ArtimExpired:
            # PS3.8 Sta2, ARTIM expired: AA-2, close the transport connection (no A-ABORT).
            LOG.warning(
                "closed a connection from %s: no A-ASSOCIATE-RQ within %g s (dicom.acse_timeout)",
                self.address,
                self.settings.acse_timeout,
            )
        except TimeoutError:
            LOG.warning(
                "association with %s (AE %r) timed out waiting for the peer",
                self.address,
                self.calling_ae or "?",
            )
            self._send_abort(0x00)
        except OSError as exc:
            if self.aborted_by_stop:
                LOG.info("association with %s aborted: the box is stopping", self.address)
            elif exc.errno not in (errno.EBADF, errno.ENOTCONN):
                LOG.warning("association with %s ended: %s", self.address, exc)
        except Exception:
            LOG.exception("association with %s failed", self.address)
            self._send_abort(0x00)
        finally:
            if self.message is not None:
                self._discard(self.message)
            self._drop_spare()
            if self.stage_view is not None:
                self.stage_view.release()
                self.stage_view = None
            if self.staging is not None:
                self.staging.close()
                self.staging = None
            if self.admitted:
                self.server.occupancy.dissociate(self.address, self.known)
            with contextlib.suppress(OSError):
                self.sock.close()
            for callback in self.on_end:
                callback()


class Acceptor:
    """The listening Verification + Storage SCP."""

    def __init__(
        self,
        settings: DicomSettings,
        receiver: Receiver,
        *,
        sightings: PeerSightings | None = None,
    ) -> None:
        self.settings = settings
        self.receiver = receiver
        # Who echoed or stored lately (the wizard shows it); kept across a reconfiguration.
        self.sightings = sightings or PeerSightings(receiver.clock)
        self.policy = PeerPolicy.from_settings(settings)
        # Room is kept for the configured peers and the box itself, unless anyone may call and
        # no one is listed.
        reserve = bool(self.policy.peers) or not self.policy.allow_any
        self.limits = Limits.for_pool(settings.max_associations, reserve=reserve)
        self.occupancy = Occupancy(self.limits)
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[_Association] = set()
        # Other processes serving accepted associations (dicom.receive_processes > 1).
        self.handoff: HandOff | None = None

    @property
    def running(self) -> bool:
        return self._listener is not None

    @property
    def alive(self) -> bool:
        """Whether its thread runs (systemd's watchdog is fed only while it does)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("DICOM service is not running")
        return int(self._listener.getsockname()[1])

    @property
    def open_associations(self) -> int:
        return self.occupancy.associations

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Wait for the receiving workers (if any) to be ready; whether they all are."""
        return self.handoff.wait_ready(timeout) if self.handoff is not None else True

    def recheck(self, free: int) -> None:
        """The storage check's free space, for the refusals of every receiving process."""
        self.receiver.refusals.recheck(free)
        if self.handoff is not None:
            self.handoff.recheck(free)

    def start(self) -> None:
        if not self.policy.allow_any and not self.policy.peers:
            LOG.warning(
                "no DICOM peer is configured: every association will be rejected "
                "(add [[dicom.peers]] or set dicom.allow_any_peer)"
            )
        family = socket.AF_INET6 if ":" in self.settings.bind else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.settings.bind, self.settings.port))
        except OSError as exc:
            listener.close()
            raise ServiceError(
                f"cannot listen for DICOM on {self.settings.bind}:{self.settings.port}: "
                f"{exc.strerror or exc} (check dicom.bind and dicom.port)"
            ) from None
        listener.listen(64)
        listener.settimeout(0.5)
        # Whether tmp/ takes direct writes is probed (a file made and removed) now, before the
        # first association, not while one is being received.
        LOG.debug("direct writes in tmp/: %s", self.receiver.spool.direct_io)
        if self.handoff is not None:
            self.handoff.start()
        self._listener = listener
        self._stopping.clear()
        self._thread = threading.Thread(target=self._accept_loop, name="dicom-accept", daemon=True)
        self._thread.start()
        LOG.info(
            "DICOM listening on %s:%d as AE %r",
            self.settings.bind,
            self.port,
            self.settings.ae_title,
        )

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    return
                # Out of descriptors or buffers: say so, wait a moment, keep serving.
                LOG.error("cannot accept a DICOM connection: %s", exc)
                self._stopping.wait(ACCEPT_BACKOFF_S)
                continue
            try:
                self._take(sock, str(address[0]))
            except Exception:
                LOG.exception("could not serve a connection from %s", address[0])
                with contextlib.suppress(OSError):
                    sock.close()

    def _take(self, sock: socket.socket, address: str) -> None:
        # Nothing has been read yet, so there is no A-ASSOCIATE-RQ to answer: a connection
        # over the limits is closed at once and costs no thread.
        known = self.policy.covers(address)
        refusal = self.occupancy.connect(address, known)
        if refusal is not None:
            LOG.warning("refused a DICOM connection from %s: %s", address, refusal)
            sock.close()
            return
        association = _Association(self, sock, address, known)
        with self._lock:
            self._connections.add(association)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(
                target=self._run, args=(association,), name=f"dicom-{address}", daemon=True
            ).start()
        except BaseException:
            self._forget(association)
            raise

    def _run(self, association: _Association) -> None:
        try:
            association.run()
        finally:
            self._forget(association)

    def _forget(self, association: _Association) -> None:
        with self._lock:
            self._connections.discard(association)
        self.occupancy.disconnect(association.address, association.known)

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; let open associations finish for `grace` seconds, then abort them
        (A-ABORT, then the transport closed)."""
        if self._listener is None:
            return
        self._stopping.set()
        self._listener.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        deadline = threading.Event()
        for _ in range(int(grace * 20)):
            with self._lock:
                if not self._connections:
                    break
            deadline.wait(0.05)
        with self._lock:
            left = list(self._connections)
        for association in left:
            association.abort_for_stop()
        if self.handoff is not None:
            self.handoff.stop()
        self._listener = None
