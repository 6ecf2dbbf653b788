"""Download progress to the hub's webhook: a target checked like hostile input, posts in order.

The `WebhookUri` of a download request is chosen by whoever can reach the hub's API, so the
box treats it as an attacker's: before a job starts, `WebhookGuard.check` accepts only

- `https` (plain `http` only when `downloads.allow_http` is set: the emulation profile);
- a host the enrolment (the hub's own host), the federation policy (`webhook_hosts`) or the
  box's configuration (`downloads.webhook_hosts`) names;
- addresses that are public: loopback, private, link-local (the cloud metadata address among
  them), multicast, reserved and unspecified ranges are refused unless
  `downloads.allow_addresses` lists them.

The host is resolved once, every address it resolves to must pass, and the first is pinned:
every post of the job connects to that address (TLS still verifies the certificate against
the host name), so a DNS answer that changes later cannot turn the webhook inward. Redirects
are never followed. Bodies carry the seed's three fields only (Status, the echoed headers,
File), and are signed with the enrolment's webhook key when the hub gave one. What the server
answers is hostile too: a post ends by one deadline and reads only the answer's head
(`WebhookPoster`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.client import BadStatusLine, HTTPException, HTTPResponse, RemoteDisconnected
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection

from afra.clock import Clock, SystemClock
from afra.config import DownloadSettings
from afra.errors import AfraError
from medix.models import (
    NODE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    webhook_signature,
)

LOG = logging.getLogger("afra.webhook")

Resolver = Callable[[str, int], Iterable[str]]
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# The most of a webhook's answer a post reads: its status line and headers, never its body.
# (http.client alone would take 100 lines of 64 KiB: 6.5 MB, some 50 MB while it parses them.)
ANSWER_CAP = 64 * 1024
# What stays as it is in the request's target; everything else (spaces, controls, non-ASCII)
# is percent-encoded, so nothing in the URL can break the request line.
PATH_SAFE = "!#$%&'()*+,/:;=?@[]~"


class WebhookRefused(AfraError, ValueError):
    """A webhook target the box will not post to."""


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str
    port: int
    path: str
    address: str  # resolved once; every post goes here

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise WebhookRefused(f"webhook host {host!r} does not resolve: {exc}") from None
    return [str(info[4][0]) for info in infos]


def _refused_range(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Why an address is not a public one (empty when it is)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return _refused_range(address.ipv4_mapped)
        # IPv4 carried inside IPv6 (6to4, Teredo, NAT64) is judged by the IPv4 address.
        inner = address.sixtofour or (address.teredo[1] if address.teredo else None)
        if inner is None and address in NAT64:
            inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if inner is not None:
            why = _refused_range(inner)
            return f"{why} (inside IPv6)" if why else ""
        if address.is_site_local:
            return "site-local"
    for check, name in (
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local (cloud metadata lives here)"),
        (address.is_unspecified, "unspecified"),
        (address.is_multicast, "multicast"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (not address.is_global, "not globally routable"),
    ):
        if check:
            return name
    return ""


class WebhookGuard:
    def __init__(
        self,
        settings: DownloadSettings,
        *,
        hub_url: Callable[[], str | None],
        policy_hosts: Callable[[], Iterable[str]],
        resolver: Resolver = system_resolver,
    ) -> None:
        self.settings = settings
        self.hub_url = hub_url
        self.policy_hosts = policy_hosts
        self.resolver = resolver
        self.allowed_networks = [
            ipaddress.ip_network(n, strict=False) for n in settings.allow_addresses
        ]

    def allowed_hosts(self) -> set[str]:
        hosts = {h.lower().rstrip(".") for h in self.settings.webhook_hosts}
        hosts |= {h.lower().rstrip(".") for h in self.policy_hosts()}
        hub = self.hub_url()
        host = urlsplit(hub).hostname if hub else None
        if host:
            hosts.add(host.lower().rstrip("."))
        return hosts

    def allowed_ports(self, host: str) -> set[int]:
        ports = {443, *self.settings.webhook_ports}
        if self.settings.allow_http:
            ports.add(80)
        hub = self.hub_url()
        if hub:
            parts = urlsplit(hub)
            if (parts.hostname or "").lower().rstrip(".") == host:
                ports.add(parts.port or 443)
        return ports

    def check(self, uri: str) -> Target:
        """The target to post to, or WebhookRefused saying why not."""
        try:
            parts = urlsplit(uri)
            port = parts.port
        except ValueError as exc:
            raise WebhookRefused(f"webhook {uri!r} is not a valid URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme != "https" and not (scheme == "http" and self.settings.allow_http):
            raise WebhookRefused(f"webhook {uri!r} must use https")
        if parts.username is not None or parts.password is not None:
            raise WebhookRefused("webhook URLs may not carry credentials")
        host = (parts.hostname or "").lower().rstrip(".")
        if not host:
            raise WebhookRefused(f"webhook {uri!r} names no host")
        if host not in self.allowed_hosts():
            raise WebhookRefused(
                f"webhook host {host!r} is not the enrolled hub's and not in the policy's or "
                "the box's webhook_hosts"
            )
        port = port or (443 if scheme == "https" else 80)
        if port not in self.allowed_ports(host):
            raise WebhookRefused(
                f"webhook port {port} is not the hub's, 443, or in downloads.webhook_ports"
            )
        addresses = list(dict.fromkeys(self.resolver(host, port)))
        if not addresses:
            raise WebhookRefused(f"webhook host {host!r} resolves to no address")
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if any(address in net for net in self.allowed_networks):
                continue
            why = _refused_range(address)
            if why:
                raise WebhookRefused(
                    f"webhook host {host!r} resolves to {address}, a {why} address; "
                    "refused (downloads.allow_addresses can allow it explicitly)"
                )
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return Target(uri, scheme, host, port, path, addresses[0])


@dataclass(frozen=True)
class PostResult:
    status: int  # HTTP status, 0 when no answer came
    detail: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def retry(self) -> bool:
        """Worth trying again later (no answer, overload, a server error)."""
        return self.status in (0, 408, 425, 429) or self.status >= 500


class WebhookPoster:
    """Posts one body to a pinned target; never follows a redirect.

    A post is one urllib3 connection of its own (no pool, no retries), bounded twice over,
    because the answer comes from whoever the webhook names:

    - in time: connecting, the TLS handshake, sending and reading the answer share one
      deadline, `timeout` seconds after the post starts. urllib3's timeouts (the socket's)
      bound each read or send alone and restart with every byte, so a server that answers a
      byte at a time could hold a post for as long as it drips; a `_Deadline` thread therefore
      shuts the connection's socket down when the time is up, which wakes whatever the post
      is blocked in at once. urllib3's own timeout is the whole `timeout` too, which bounds the
      TCP connect (the one step before the socket is reachable). A post that reaches the
      deadline is a failed delivery (status 0), which the job's sender retries like any other
      post that got no answer;
    - in bytes: only the answer's status line and headers are read (`preload_content=False`),
      at most ANSWER_CAP bytes in all (`_Head`; http.client's own limits are lines of 64 KiB
      and 100 headers); the body is never read and the connection is closed at once. The
      status code is what matters (and a redirect's Location, for the log).
    """

    def __init__(
        self,
        *,
        timeout: float,
        ca_file: Path | None,
        node_id: Callable[[], str],
        key: Callable[[], str],
        clock: Clock | None = None,
    ) -> None:
        self.timeout = timeout
        self.ca_file = ca_file
        self.node_id = node_id
        self.key = key
        # The deadline runs on real time (the box's FakeClock in tests does not move on its
        # own, while sockets wait in real seconds); a test may drive it with its own clock.
        self.clock: Clock = clock or SystemClock()

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.ca_file is not None and self.ca_file.exists():
            context.load_verify_locations(cafile=str(self.ca_file))  # the hub's own CA too
        return context

    def post(self, target: Target, body: bytes) -> PostResult:
        deadline = _Deadline(self.clock, self.timeout)
        late = PostResult(0, f"no whole answer within webhook_timeout ({self.timeout:g} s)")
        try:
            status, location = self._exchange(target, body, deadline)
        except (HTTPException, urllib3.exceptions.HTTPError, OSError, UnicodeError) as exc:
            # ssl.SSLError is an OSError; a read cut by the deadline fails in any of these ways
            return late if deadline.passed or _timed_out(exc) else PostResult(0, _failure(exc))
        if deadline.passed:  # a head cut short can still parse (http.client ends it at EOF)
            return late
        if 100 <= status < 200:  # http.client reads past 100 Continue only
            return PostResult(0, f"no usable answer: an interim {status} and no final answer")
        if 300 <= status < 400:
            return PostResult(status, f"answered a redirect to {location[:200]!r}; not followed")
        if not 200 <= status < 300:
            return PostResult(status, f"answered {status}")
        return PostResult(status, "ok")

    def _headers(self, target: Target, body: bytes) -> dict[str, str]:
        headers = {
            "Host": target.host_header.encode("idna").decode("ascii"),
            "Content-Type": "application/json",
            "User-Agent": "AFRA",
            "Connection": "close",
        }
        key = self.key()
        if key:
            stamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = stamp
            headers[NODE_HEADER] = self.node_id()
            headers[SIGNATURE_HEADER] = webhook_signature(key, stamp, body)
        return headers

    def _exchange(self, target: Target, body: bytes, deadline: _Deadline) -> tuple[int, str]:
        """The answer's status and Location; urllib3 reads its head and nothing more."""
        conn: _Connection
        if target.scheme == "https":
            conn = _TLSConnection(
                target.address,
                target.port,
                deadline=deadline,
                timeout=self.timeout,
                ssl_context=self._context(),
                server_hostname=target.host,  # SNI and the certificate check; Host is ours
            )
        else:
            conn = _Connection(target.address, target.port, deadline=deadline, timeout=self.timeout)
        answer = None
        try:
            conn.connect()
            conn.request(
                "POST",
                quote(target.path, safe=PATH_SAFE),
                body=body,
                headers=self._headers(target, body),
                preload_content=False,
            )
            answer = conn.getresponse()
            return answer.status, answer.headers.get("Location", "")
        finally:
            deadline.end()
            if answer is not None:
                answer.close()  # its body unread
            conn.close()


class _Deadline:
    """Cuts a post's connection when the post's time is up, from a thread of its own.

    Shutting a socket down from another thread wakes a recv, send or TLS handshake blocked on
    it, which then fails at once. The thread waits on the poster's clock (`Clock.sleep`), so a
    test's clock decides when the time is up."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        self.clock = clock
        self.at = clock.monotonic() + seconds
        self.passed = False
        self._over = threading.Event()
        self._lock = threading.Lock()
        self._handles: list[socket.socket] = []
        self._thread = threading.Thread(target=self._wait, name="webhook-deadline", daemon=True)
        self._thread.start()

    def watch(self, sock: socket.socket) -> None:
        """Cut `sock`'s connection too, at once if the time is already up."""
        # A handle of its own: urllib3 hands the socket to TLS, which detaches it.
        handle = sock.dup()
        with self._lock:
            self._handles.append(handle)
            if self.passed:
                _cut(handle)

    def _wait(self) -> None:
        while not self.clock.sleep(self.at - self.clock.monotonic(), self._over):
            if self.clock.monotonic() >= self.at:
                with self._lock:
                    if not self._over.is_set():
                        self.passed = True
                        for handle in self._handles:
                            _cut(handle)
                return

    def end(self) -> None:
        """The post is over: stop watching (`passed` says whether its time ran out first)."""
        with self._lock:
            self._over.set()
        self._thread.join()
        for handle in self._handles:
            handle.close()
        self._handles.clear()


def _cut(handle: socket.socket) -> None:
    with contextlib.suppress(OSError):  # not connected (any more)
        handle.shutdown(socket.SHUT_RDWR)


class _Head(HTTPResponse):
    """http.client's answer, whose head may take ANSWER_CAP bytes of the stream in all."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp = _CappedLines(self.fp)  # type: ignore[assignment]  # a stream all the same


class _CappedLines:
    """A stream whose readline(), which http.client reads a head with, stops at ANSWER_CAP."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.left = ANSWER_CAP

    def readline(self, limit: int = -1) -> bytes:
        if self.left <= 0:
            raise HTTPException(f"no end of the answer's headers in {ANSWER_CAP} bytes")
        line: bytes = self.stream.readline(self.left if limit < 0 else min(limit, self.left))
        self.left -= len(line)
        return line

    def __getattr__(self, name: str) -> Any:  # close() and the rest, as the stream has them
        return getattr(self.stream, name)


class _Connection(HTTPConnection):
    """urllib3's connection, which shows its socket to the post's deadline once connected.

    `_new_conn` is where urllib3 makes the socket (its own SOCKS connection overrides it too);
    `sock` alone would not do, since during the TLS handshake it is a detached socket."""

    response_class = _Head

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        self.deadline.watch(sock)
        return sock


class _TLSConnection(_Connection, HTTPSConnection):
    pass


def _timed_out(exc: Exception) -> bool:
    """Whether a step waited urllib3's whole timeout, so the deadline has passed too."""
    if isinstance(exc, urllib3.exceptions.NewConnectionError):  # a ConnectTimeoutError too
        return False
    return isinstance(exc, TimeoutError | urllib3.exceptions.ConnectTimeoutError)


def _failure(exc: Exception) -> str:
    if isinstance(exc, RemoteDisconnected):
        return "no usable answer: the connection closed before a whole answer"
    if isinstance(exc, BadStatusLine):
        return f"no usable answer: not an HTTP status line: {str(exc.args[0])[:80]!r}"
    if isinstance(exc, HTTPException):  # a line too long, too many headers, not HTTP/1.x
        return f"no usable answer: {exc}"
    return f"no answer: {exc}"
