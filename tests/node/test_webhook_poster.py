"""The webhook poster against hostile answers: real loopback servers written here, raw sockets.

Whoever can reach the hub's API names the webhook, so the server at the other end may answer
a gigabyte, answer a byte at a time, or never answer. A post reads at most the answer's head
(ANSWER_CAP bytes) and ends by one deadline, `webhook_timeout` after it started.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from afra.app import Appliance
from afra.node.webhook import ANSWER_CAP, Target, WebhookPoster
from medix.hub.server import HubServer
from medix.models import DownloadRequest
from tests.conftest import wait_for
from tests.dicomgen import make_ct_series
from tests.fakes import FakeClock
from tests.node.conftest import HUB_HOST, BoxFactory, statuses
from tests.node.test_downloads import HELD, request, send_and_complete

HUGE = 64 * 2**20  # before the fix the box read all of it (1 GiB took it to 1,127 MB RSS)
ZEROS = memoryview(bytes(2**20))  # the huge answer's chunk, allocated before any tracing
DRIP_GIVE_UP = 1000  # bytes; the dripping server gives up on its own after this many


class HostileWebhook:
    """A raw HTTP server on loopback that reads each request and then misbehaves.

    `behave(conn, server)` runs per connection after the request was read; it returns when
    the box closed the connection (sets `box_closed`) or when it gives up by itself."""

    def __init__(self, behave: Callable[[socket.socket, HostileWebhook], None], host: str):
        self.behave = behave
        self.stop = threading.Event()
        self.box_closed = threading.Event()
        self.gave_up = threading.Event()
        self.requests: list[bytes] = []
        self.sent = 0
        self.listener = socket.create_server((host, 0))
        self.host, self.port = host, self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def target(self) -> Target:
        return Target(
            f"http://{self.host}:{self.port}/hook", "http", self.host, self.port, "/hook", self.host
        )

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                request = self._read_request(conn)
                if request is None:  # the box hung up before its request was whole
                    self.box_closed.set()
                    continue
                self.requests.append(request)
                self.behave(conn, self)

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            chunk = conn.recv(4096)
            if not chunk:
                return None
            body += chunk
        return head + b"\r\n\r\n" + body

    def send(self, conn: socket.socket, data: bytes | memoryview) -> bool:
        """Send, counting; False once the box has closed the connection."""
        try:
            conn.sendall(data)
        except OSError:  # reset or broken pipe: the box closed its end
            self.box_closed.set()
            return False
        self.sent += len(data)
        return True

    def close(self) -> None:
        self.stop.set()
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone does not)
        self.listener.close()
        self.thread.join(timeout=30)


@pytest.fixture
def hostile() -> Iterator[Callable[..., HostileWebhook]]:
    servers: list[HostileWebhook] = []

    def start(behave: Callable[[socket.socket, HostileWebhook], None], host: str = "127.0.0.1"):
        server = HostileWebhook(behave, host)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def huge_answer(conn: socket.socket, server: HostileWebhook) -> None:
    if not server.send(conn, f"HTTP/1.1 200 OK\r\nContent-Length: {HUGE}\r\n\r\n".encode()):
        return
    for _ in range(HUGE // len(ZEROS)):
        if not server.send(conn, ZEROS):
            return


def drip(conn: socket.socket, server: HostileWebhook) -> None:
    """A status line, then one header byte at a time, never ending the head."""
    if not server.send(conn, b"HTTP/1.1 200 OK\r\nX-Drip: "):
        return
    for _ in range(DRIP_GIVE_UP):
        if not server.send(conn, b"a"):
            return
        # The box's clock (not this one) decides when it gives up; the pause only keeps the
        # bytes coming one by one, as a dripping server sends them.
        if server.stop.wait(0.01):
            return
    server.gave_up.set()


def silent(conn: socket.socket, server: HostileWebhook) -> None:
    """Accepts, reads the request, answers nothing; waits for the box to hang up."""
    conn.settimeout(60)
    try:
        if conn.recv(1) == b"":
            server.box_closed.set()
    except TimeoutError:
        server.gave_up.set()


class TickingClock(FakeClock):
    """The box's clock for one post: a second passes each time the box reads it."""

    def monotonic(self) -> float:
        self.advance(1.0)
        return super().monotonic()


def poster(timeout: float, clock: FakeClock | None = None) -> WebhookPoster:
    return WebhookPoster(
        timeout=timeout, ca_file=None, node_id=lambda: "node-1", key=lambda: "", clock=clock
    )


def test_of_a_huge_answer_only_the_status_is_read(
    hostile: Callable[..., HostileWebhook],
) -> None:
    server = hostile(huge_answer)

    tracemalloc.start()
    try:
        result = poster(30).post(server.target(), b'{"Status": "0"}')
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert result.ok and result.status == 200  # the status code is what matters
    assert peak < 16 * ANSWER_CAP  # before: the whole answer, 64 MiB and more, in memory
    assert server.box_closed.wait(30)  # the box hung up on the rest
    assert server.sent < HUGE
    assert server.requests[0].startswith(b"POST /hook HTTP/1.1\r\n")


def test_an_answer_dripped_a_byte_at_a_time_ends_at_the_posts_deadline(
    hostile: Callable[..., HostileWebhook],
) -> None:
    server = hostile(drip)

    # The post's deadline waits on the box's clock, on which a second passes at each read (and
    # FakeClock.sleep yields 10 ms): 30 s are up within a fraction of a real second, however
    # fast the bytes come. Before the fix every byte restarted a per-read timeout and the post
    # lasted as long as the drip.
    result = poster(30, TickingClock()).post(server.target(), b"{}")

    assert server.box_closed.wait(30), "the box never hung up"
    assert not server.gave_up.is_set()
    assert result.status == 0 and result.retry  # a failed delivery, retried like no answer
    assert "within webhook_timeout (30 s)" in result.detail
    assert server.sent < 100


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_server_that_never_answers_is_hung_up_on_at_the_deadline(
    hostile: Callable[..., HostileWebhook], scheme: str
) -> None:
    server = hostile(silent)
    target = dataclasses.replace(server.target(), scheme=scheme)

    result = poster(0.5).post(target, b"{}")

    assert server.box_closed.wait(30), "the box never hung up"
    assert not server.gave_up.is_set()
    # Over http the request went and only the answer never came; over https the TLS
    # handshake never got its answer (the deadline covers connect, handshake, send, answer).
    assert len(server.requests) == (1 if scheme == "http" else 0)
    assert result.status == 0 and result.retry
    assert "within webhook_timeout (0.5 s)" in result.detail


@pytest.mark.parametrize(
    ("answer", "status", "detail"),
    [
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 204, "ok"),
        (b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\n\r\n", 302, "redirect"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", 0, "not an HTTP status line"),
        (b"", 0, "closed before a whole answer"),
        # http.client ends a head at the end of the stream: the status line came whole
        (b"HTTP/1.1 200 OK\r\n", 200, "ok"),
        # http.client reads past 100 Continue only; another interim answer is no final one
        (b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 0, "interim 103"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * (2 * ANSWER_CAP), 0, "in 65536 bytes"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-A: a\r\n" * 101 + b"\r\n", 0, "more than 100 headers"),
    ],
)
def test_odd_answers(
    hostile: Callable[..., HostileWebhook], answer: bytes, status: int, detail: str
) -> None:
    def answer_and_close(conn: socket.socket, server: HostileWebhook) -> None:
        server.send(conn, answer)

    server = hostile(answer_and_close)

    result = poster(10).post(server.target(), b"{}")

    assert result.status == status and detail in result.detail


def test_the_deadline_reaches_into_the_tls_handshake(
    hostile: Callable[..., HostileWebhook],
) -> None:
    """urllib3 runs the handshake inside connect(), where its `sock` is a detached socket; the
    deadline cuts it all the same, long before the handshake's own (per-read) timeout."""
    server = hostile(silent)
    target = dataclasses.replace(server.target(), scheme="https")

    started = time.monotonic()
    result = poster(30, TickingClock()).post(target, b"{}")

    assert time.monotonic() - started < 10  # urllib3's own timeout alone: 30 s
    assert server.box_closed.wait(30), "the box never hung up"
    assert server.requests == []
    assert result.status == 0 and "within webhook_timeout (30 s)" in result.detail


def test_the_longest_head_http_client_would_read_is_cut_at_the_cap(
    hostile: Callable[..., HostileWebhook],
) -> None:
    """http.client alone takes 100 lines (the blank one among them) of 64 KiB each: 6.5 MB read
    and some 50 MB while it parses them. The post stops at ANSWER_CAP."""

    def long_head(conn: socket.socket, server: HostileWebhook) -> None:
        if not server.send(conn, b"HTTP/1.1 200 OK\r\n"):
            return
        for i in range(99):
            name = b"X-%02d: " % i
            if not server.send(conn, name + b"p" * (ANSWER_CAP - len(name) - 2) + b"\r\n"):
                return
        server.send(conn, b"\r\n")

    server = hostile(long_head)

    tracemalloc.start()
    try:
        result = poster(30).post(server.target(), b"{}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert result.status == 0 and f"in {ANSWER_CAP} bytes" in result.detail
    assert peak < 8 * ANSWER_CAP  # without the cap: 50 MB
    assert server.box_closed.wait(30)


def test_a_request_target_cannot_break_the_request_line(
    hostile: Callable[..., HostileWebhook],
) -> None:
    def ok(conn: socket.socket, server: HostileWebhook) -> None:
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    server = hostile(ok)
    plain = server.target()
    target = Target(
        plain.url, "http", plain.host, plain.port, "/a b\x00\u00e9?x=1&y=%41", plain.address
    )

    assert poster(10).post(target, b"{}").ok
    assert server.requests[0].startswith(b"POST /a%20b%00%C3%A9?x=1&y=%41 HTTP/1.1\r\n")


def test_a_slow_webhook_holds_back_only_its_own_statuses(
    hub: HubServer,
    node_box: BoxFactory,
    clock: FakeClock,
    hostile: Callable[..., HostileWebhook],
    tmp_path: Path,
) -> None:
    """Each subscriber has its own sender thread: a dripping webhook delays its own posts (in
    order, none skipped) and no one else's; the job itself never waits for a post."""
    slow = hostile(drip, host=HUB_HOST)
    box: Appliance = node_box(
        hub, downloads={"allow_http": True, "webhook_ports": [slow.port], "webhook_timeout": 3}
    )
    study_uid = send_and_complete(
        box, clock, make_ct_series(tmp_path / "in", n=2, rows=32, cols=32)
    )
    slow_request = {
        **request(hub, study_uid, "u-slow"),
        "WebhookUri": f"http://{HUB_HOST}:{slow.port}/hook",
    }
    slow_job = box.downloads.submit(DownloadRequest.model_validate(slow_request)).job_id

    box.downloads.submit(DownloadRequest.model_validate(request(hub, study_uid, "u-fast")))

    wait_for(lambda: 7 in statuses(hub, "u-fast"), what="the other user's DownloadSaved")
    assert statuses(hub, "u-fast") == HELD
    wait_for(lambda: box.downloads.job(slow_job).state == "saved", what="the slow user's job")
    [sub] = box.downloads.store.subscribers(slow_job)
    assert sub.state == "active" and sub.delivered == 0  # still trying its first status
    assert wait_for(slow.box_closed.is_set, what="the first post cut at its deadline")
