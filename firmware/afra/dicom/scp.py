"""The box's DICOM service: Verification and Storage SCP on one AE, with a peer allow-list.

Built on pynetdicom. Three things are the box's own: the allow-list is checked on the
(calling AE title, source address) pair inside the A-ASSOCIATE negotiation, so unknown peers
get a standard A-ASSOCIATE-RJ; objects are received in chunks straight into the spool's tmp
folder; and the C-STORE handler hands each file to the Receiver, which decides the status.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import config as pydicom_config
from pynetdicom import AE, _config, evt
from pynetdicom.acse import ACSE
from pynetdicom.presentation import AllStoragePresentationContexts, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from afra.config import DicomSettings
from afra.dicom.header import STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS
from afra.dicom.receive import Receiver, StoreRequest

LOG = logging.getLogger("afra.dicom")

# Transfer syntaxes accepted as SCP, in preference order (see docs/conformance.md).
TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction (Process 14 SV1)
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
)

# A-ASSOCIATE-RJ: rejected-permanent, service-user, calling-AE-title-not-recognized.
REJECT_UNKNOWN_PEER = (0x01, 0x01, 0x03)


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

    def allows(self, ae_title: str, address: str) -> bool:
        if self.allow_any:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ae_title.strip() == title and ip in net for title, net in self.peers)


class _PeerCheckingACSE(ACSE):
    """pynetdicom's ACSE, refusing peers the policy does not know before any negotiation."""

    policy: PeerPolicy

    def _negotiate_as_acceptor(self) -> None:
        calling = str(getattr(self.requestor.primitive, "calling_ae_title", "")).strip()
        address = str(self.assoc.requestor.address)
        if not self.policy.allows(calling, address):
            LOG.warning(
                "rejected an association from AE %r at %s: not a configured peer "
                "(add it under [[dicom.peers]] to allow it)",
                calling,
                address,
            )
            self.requestor.ae_title = calling
            self.send_reject(*REJECT_UNKNOWN_PEER)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        super()._negotiate_as_acceptor()


def _make_request_handler(policy: PeerPolicy, socket_buffer: int) -> type[RequestHandler]:
    class _Handler(RequestHandler):
        def _create_association(self) -> Any:
            assoc = super()._create_association()
            acse = _PeerCheckingACSE(assoc)
            acse.policy = policy
            assoc.acse = acse
            sock = self.request
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, socket_buffer)
            return assoc

    return _Handler


def _handle_echo(event: Any) -> int:
    return STATUS_SUCCESS


def _handle_store(event: Any, receiver: Receiver) -> int:
    """C-STORE: hand the chunk-received file to the Receiver. Never raises."""
    try:
        request = event.request
        context = event.context
        assoc = event.assoc
        return receiver.store(
            Path(event.dataset_path),
            StoreRequest(
                sop_class_uid=str(request.AffectedSOPClassUID or ""),
                sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
                context_abstract_syntax=str(context.abstract_syntax),
                calling_ae=str(assoc.requestor.ae_title).strip(),
                peer_address=str(assoc.requestor.address),
            ),
        )
    except Exception:
        LOG.exception("C-STORE handler failed")
        return STATUS_OUT_OF_RESOURCES


def _log_open(event: Any) -> None:
    LOG.debug("connection from %s", event.address)


def _log_accepted(event: Any) -> None:
    assoc = event.assoc
    LOG.info(
        "association accepted from AE %r at %s",
        str(assoc.requestor.ae_title).strip(),
        assoc.requestor.address,
    )


def _log_aborted(event: Any) -> None:
    LOG.warning("association with %s aborted", event.assoc.requestor.address)


def configure_library(tmp_dir: Path) -> None:
    """Process-wide pynetdicom settings the box relies on.

    Objects are received in chunks into a temp file (memory does not grow with object size);
    pynetdicom creates that file with tempfile's default folder, which must be on the spool's
    filesystem so the durable rename is atomic.
    """
    _config.STORE_RECV_CHUNKED_DATASET = True
    # The box checks what it relies on itself (header.py) and answers with a status; pydicom's
    # own value checks would only add warnings about the very data it refuses.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    tempfile.tempdir = str(tmp_dir)


def make_ae(settings: DicomSettings, contexts: Iterable[Any] = ()) -> AE:
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    for cx in contexts:
        ae.add_supported_context(cx.abstract_syntax, list(cx.transfer_syntax))
    return ae


def storage_contexts() -> list[Any]:
    contexts = [build_context(Verification)]
    contexts += [
        build_context(str(cx.abstract_syntax), list(TRANSFER_SYNTAXES))
        for cx in AllStoragePresentationContexts
    ]
    return contexts


class DicomServer:
    """The listening Verification + Storage SCP."""

    def __init__(self, settings: DicomSettings, receiver: Receiver) -> None:
        self.settings = settings
        self.receiver = receiver
        self.policy = PeerPolicy.from_settings(settings)
        self._server: ThreadedAssociationServer | None = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("DICOM server is not running")
        return int(self._server.server_address[1])

    def start(self) -> None:
        configure_library(self.receiver.spool.tmp_dir)
        if not self.policy.allow_any and not self.policy.peers:
            LOG.warning(
                "no DICOM peer is configured: every association will be rejected "
                "(add [[dicom.peers]] or set dicom.allow_any_peer)"
            )
        ae = make_ae(self.settings, storage_contexts())
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, _handle_echo),
            (evt.EVT_C_STORE, _handle_store, [self.receiver]),
            (evt.EVT_CONN_OPEN, _log_open),
            (evt.EVT_ACCEPTED, _log_accepted),
            (evt.EVT_ABORTED, _log_aborted),
        ]
        buffer = max(self.settings.max_pdu * 2, 1 << 20)
        server = ae.make_server(
            (self.settings.bind, self.settings.port),
            evt_handlers=handlers,
            server_class=ThreadedAssociationServer,
            request_handler=_make_request_handler(self.policy, buffer),
        )
        # What AE.start_server(block=False) does, with our request handler; the server's
        # shutdown() removes itself from this list.
        ae._servers.append(server)
        threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True).start()
        self._server = server
        LOG.info(
            "DICOM listening on %s:%d as AE %r",
            self.settings.bind,
            self.port,
            self.settings.ae_title,
        )

    def stop(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.shutdown()
                self._server = None
