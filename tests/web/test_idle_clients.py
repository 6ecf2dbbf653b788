"""Idle and slow HTTP clients against the box's web servers (afra.wsgi, medix.serving).

Real sockets on loopback: each client binds its own 127.0.0.x source address. The page is
the real wizard (create_app on a box) on cheroot with the threads `afra run` gives it; the
technician's phone is 127.0.0.3.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import ipaddress
import select
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cheroot.ssl.builtin import BuiltinSSLAdapter
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from afra.app import Appliance
from afra.wsgi import PER_ADDRESS_CONNECTIONS, WsgiServer
from afra_web import create_app
from afra_web.server import THREADS
from tests.conftest import wait_for
from tests.web.conftest import FakeNetwork

pytestmark = pytest.mark.attack  # idle and slow clients against the web port

LOOPBACK = "127.0.0.1"
PHONE = "127.0.0.3"
OTHERS = ("127.0.0.2", "127.0.0.4", "127.0.0.5")  # "a few addresses"
# Well inside the header timeout (10 s), so an answer cannot come from the others being
# dropped; without the fix the phone waits for a thread for a minute.
ANSWER_WITHIN_S = 5

Serve = Callable[..., WsgiServer]
Connect = Callable[[int, str, int], list[socket.socket]]


@pytest.fixture
def serve() -> Iterator[Serve]:
    started: list[WsgiServer] = []

    def start(app: Any, **kwargs: Any) -> WsgiServer:
        server = WsgiServer(app, bind=LOOPBACK, port=0, name="afra-web", threads=THREADS, **kwargs)
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def page(appliance: Appliance, network: FakeNetwork, serve: Serve) -> WsgiServer:
    """The setup page as `afra run` serves it."""
    return serve(create_app(appliance, network=network))


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Open TCP connections from one source address; closed at the end."""
    opened: list[socket.socket] = []

    def open_from(port: int, source: str, count: int) -> list[socket.socket]:
        batch = [
            socket.create_connection((LOOPBACK, port), timeout=10, source_address=(source, 0))
            for _ in range(count)
        ]
        opened.extend(batch)
        return batch

    yield open_from
    for sock in opened:
        sock.close()


def closed_by_box(sock: socket.socket) -> bool:
    """Whether the server has closed this connection (end of stream, or reset), at once."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


def get(port: int, source: str, context: ssl.SSLContext | None = None) -> int:
    """A real GET / from `source`; the status."""
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection(
            LOOPBACK, port, timeout=ANSWER_WITHIN_S, source_address=(source, 0)
        )
    else:
        conn = http.client.HTTPSConnection(
            LOOPBACK, port, timeout=ANSWER_WITHIN_S, source_address=(source, 0), context=context
        )
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


MISBEHAVIOURS = {
    "idle": b"",
    "slow headers": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",
    # Headers whole, the form body never sent: the page reads it (the CSRF check).
    "slow body": (
        b"POST /claim HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
    ),
}


@pytest.mark.parametrize("misbehaviour", MISBEHAVIOURS)
def test_idle_or_slow_connections_leave_the_page_to_the_phone(
    page: WsgiServer, connect: Connect, misbehaviour: str
) -> None:
    held: list[socket.socket] = []
    for source in OTHERS:
        held += connect(page.port, source, PER_ADDRESS_CONNECTIONS)
    for sock in held:
        sock.sendall(MISBEHAVIOURS[misbehaviour])
    assert get(page.port, PHONE) in (200, 302)
    assert not any(closed_by_box(s) for s in held)  # answered beside them, not after them


def test_connections_beyond_the_per_address_limit_are_closed_at_accept(
    page: WsgiServer, connect: Connect
) -> None:
    flood = connect(page.port, OTHERS[0], 20)
    wait_for(
        lambda: sum(closed_by_box(s) for s in flood) == len(flood) - PER_ADDRESS_CONNECTIONS,
        timeout=ANSWER_WITHIN_S,
        what="the connections beyond the per-address limit closed",
    )
    assert not any(closed_by_box(s) for s in flood[:PER_ADDRESS_CONNECTIONS])
    assert get(page.port, PHONE) in (200, 302)


def test_headers_not_complete_within_the_header_timeout_are_closed(
    appliance: Appliance, network: FakeNetwork, serve: Serve, connect: Connect
) -> None:
    page = serve(create_app(appliance, network=network), header_timeout=0.5)
    silent, trickling = connect(page.port, OTHERS[0], 2)
    trickling.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")

    def one_more_byte() -> None:  # slowloris: a byte now and then, never the end
        with contextlib.suppress(OSError):
            trickling.sendall(b"a")

    wait_for(
        lambda: closed_by_box(silent) and closed_by_box(trickling),
        timeout=ANSWER_WITHIN_S,
        what="both closed by the box",
        tick=one_more_byte,
    )
    # Their places are free: the address may connect again, and a whole request is answered.
    assert get(page.port, OTHERS[0]) in (200, 302)


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "afra-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def test_tls_handshakes_wait_for_no_one(tmp_path: Path, serve: Serve, connect: Connect) -> None:
    """Over TLS (the node API) an idle connection, which never sends its ClientHello, leaves
    the handshakes of others alone."""
    cert, key = _self_signed(tmp_path)
    api = serve(_hello, ssl_adapter=BuiltinSSLAdapter(str(cert), str(key)))
    held = connect(api.port, OTHERS[0], PER_ADDRESS_CONNECTIONS)
    context = ssl.create_default_context(cafile=str(cert))
    assert get(api.port, PHONE, context) == 200
    assert not any(closed_by_box(s) for s in held)
