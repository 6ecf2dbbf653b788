"""cheroot's WSGI server as every AFRA and Medix service runs it (hub, node API, wizard).

Logging goes through `logging` (not stderr), and SO_REUSEADDR is set even for port 0, so a
restarted service gets its port back at once (the connections a listener accepted inherit the
flag; without it their TIME_WAIT keeps the port for a minute).

Idle and slow clients are kept off the worker threads. cheroot (11) gives a connection to a
worker the moment it is accepted, and the worker then waits for the request line as long as
`timeout`: as many idle connections as there are threads stop the server, and over TLS the
handshake even runs on the one thread that accepts. Here that thread, the selector thread,
holds every connection until its request headers are in: it accepts, does the TLS handshake a
step at a time without blocking, reads what arrives into the connection's own buffer, and
gives the connection to a worker only once the headers are complete, so no worker ever waits
for them. A connection whose headers are not complete `header_timeout` seconds after it was
accepted (kept alive: after the next request's first byte) is closed; a kept-alive connection
with no next request is closed after `timeout`. A server may also bound what one client
address holds: `per_address` connections at once (more are closed at accept) and
`per_address_workers` busy workers (its further requests wait their turn), so a few clients
sending request bodies slowly cannot take every thread either.

`ThreadedServer` is the one way a service runs an app on it: a LoggingServer on a thread of
its own, `start()` and `stop()`, port 0 picking a free port (`port` tells which, and a start
after a stop serves that port again). The box's web page and node API (`afra.wsgi.WsgiServer`)
and the reference hub (`medix.hub.server.HubServer`) are built on it.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import ssl
import threading
import time
from collections import Counter, deque
from typing import Any, Self

from cheroot import server, wsgi
from cheroot.makefile import MakeFile, StreamReader
from cheroot.ssl.builtin import BuiltinSSLAdapter

log = logging.getLogger("medix.serving")

HEADER_TIMEOUT_S = 10.0  # the request line and headers complete within this (slowloris)
MAX_HEADER_BYTES = 64 * 1024  # no honest request line and headers come near this
RECV_BYTES = 16 * 1024
# The listen backlog (cheroot's default is 5): a burst of connections, e.g. a browser's six
# beside someone else's, would otherwise see SYNs dropped and retried a second later.
BACKLOG = 64
ACCEPT_BACKOFF_S = 0.1  # after accept() fails (out of descriptors), before trying again
# The end of the headers; with a bare LF the worker answers 400 (cheroot wants CRLF).
HEADER_ENDS = (b"\r\n\r\n", b"\n\n")
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# cheroot's selector loop notices stop() only at this interval (0.5 s by default); a tenth of
# a second keeps stopping quick (and closes a late connection soon) at the cost of ten idle
# wake-ups a second.
SELECT_INTERVAL_S = 0.1


class _Prefixed(socket.SocketIO):
    """A socket's reading side that first returns the bytes the selector thread read."""

    def __init__(self, sock: socket.socket, head: bytes) -> None:
        super().__init__(sock, "rb")
        self.head = memoryview(head)

    def readinto(self, b: Any) -> int | None:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        return super().readinto(b)


class _HeadReader(StreamReader):
    """cheroot's reader, over the bytes already read and then the socket."""

    def __init__(self, sock: socket.socket, head: bytes, bufsize: int) -> None:
        super(StreamReader, self).__init__(_Prefixed(sock, head), bufsize)
        self.bytes_read = 0

    def unread(self) -> bytes:
        """What arrived but was not read (a pipelined next request)."""
        raw = self.raw
        assert isinstance(raw, _Prefixed)
        return (self.peek() if self.has_data() else b"") + bytes(raw.head)


class _Connection(server.HTTPConnection):
    """An HTTP connection, held by the selector thread between requests."""

    def __init__(
        self, srv: LoggingServer, sock: Any, makefile: Any, address: tuple[str, int]
    ) -> None:
        super().__init__(srv, sock, makefile)
        self.remote_addr, self.remote_port = address
        self.ssl_env = {}
        self.head = bytearray()  # the next request as far as it has arrived
        self.due: float | None = None  # when its headers must be in; None: idle, kept alive
        self.idle_since = time.monotonic()
        self._open = True

    def communicate(self) -> bool:
        try:
            return bool(super().communicate())
        finally:
            self.server.finished(self)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._open:
                self._open = False
                self.server.clients.leave(self.remote_addr)


class _Handshake:
    """A TLS connection whose handshake the selector thread is doing."""

    def __init__(
        self, srv: LoggingServer, sock: ssl.SSLSocket, address: tuple[str, int], due: float
    ) -> None:
        self.server = srv
        self.sock = sock
        self.address = address
        self.due: float | None = due
        self.idle_since = time.monotonic()

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            self.server.clients.leave(self.address[0])


class Clients:
    """Connections and busy workers per client address, and the requests waiting their turn."""

    def __init__(self, per_address: int | None, per_address_workers: int | None) -> None:
        self.per_address = per_address
        self.per_address_workers = per_address_workers
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()
        self._busy: Counter[str] = Counter()
        self._waiting: dict[str, deque[_Connection]] = {}

    def open_from(self, address: str) -> int:
        with self._lock:
            return self._open[address]

    def join(self, address: str) -> bool:
        """Count a new connection from `address`; False when it already holds its share."""
        with self._lock:
            if self.per_address is not None and self._open[address] >= self.per_address:
                return False
            self._open[address] += 1
            return True

    def leave(self, address: str) -> None:
        with self._lock:
            self._open[address] -= 1
            if self._open[address] <= 0:
                del self._open[address]

    def start(self, conn: _Connection) -> bool:
        """Whether this request may go to a worker now; if not it waits for one of its
        address's own requests to finish."""
        if self.per_address_workers is None:
            return True
        with self._lock:
            address = conn.remote_addr
            if self._busy[address] < self.per_address_workers:
                self._busy[address] += 1
                return True
            self._waiting.setdefault(address, deque()).append(conn)
            return False

    def finish(self, conn: _Connection) -> _Connection | None:
        """A worker is done with `conn`: the next waiting request from the same address,
        which takes over its place, or None."""
        if self.per_address_workers is None:
            return None
        with self._lock:
            address = conn.remote_addr
            waiting = self._waiting.get(address)
            if waiting:
                following = waiting.popleft()
                if not waiting:
                    del self._waiting[address]
                return following
            self._busy[address] -= 1
            if self._busy[address] <= 0:
                del self._busy[address]
            return None

    def drain(self) -> list[_Connection]:
        with self._lock:
            waiting = [conn for queue in self._waiting.values() for conn in queue]
            self._waiting.clear()
            return waiting


def _complete(head: bytearray, start: int = 0) -> bool:
    """Whether the request line and headers are all in `head` (searched from `start`)."""
    return any(head.find(end, start) >= 0 for end in HEADER_ENDS)


def _close(item: _Connection | _Handshake) -> None:
    """Close a connection the selector thread holds; a failing shutdown stops nothing."""
    try:
        item.close()
    except OSError as exc:
        log.debug("closing a connection: %s", exc)


class _Connections:
    """What cheroot's ConnectionManager does (kept-alive connections on one selector thread),
    and new connections, TLS handshakes and request headers as well."""

    def __init__(self, srv: LoggingServer) -> None:
        self.server = srv
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()  # workers register kept-alive connections too
        self._stop_requested = False
        self._serving = False
        self._resume_at: float | None = None
        self._register(srv.socket, selectors.EVENT_READ, srv)

    # -- the selector, shared with the workers ------------------------------------------

    def _register(self, fileobj: Any, events: int, item: Any) -> None:
        with self._lock:
            self._selector.register(fileobj, events, item)

    def _unregister(self, fileobj: Any) -> bool:
        """Take `fileobj` out of the selector; False if it was not in it."""
        with self._lock:
            try:
                self._selector.unregister(fileobj)
            except (KeyError, ValueError):
                return False
            return True

    def _items(self) -> list[tuple[Any, Any]]:
        with self._lock:
            return [(key.fileobj, key.data) for key in self._selector.get_map().values()]

    # -- cheroot's interface --------------------------------------------------------------

    def put(self, conn: _Connection) -> None:
        """A worker answered a request on `conn` and keeps it alive for the next."""
        head = conn.rfile.unread() if isinstance(conn.rfile, _HeadReader) else b""
        conn.head = bytearray(head)
        conn.idle_since = time.monotonic()
        conn.due = conn.idle_since + self.server.header_timeout if head else None
        try:
            conn.socket.setblocking(False)
        except OSError:
            _close(conn)
            return
        if _complete(conn.head):
            self._hand_over(conn)  # a pipelined request, whole already
        elif head or (isinstance(conn.socket, ssl.SSLSocket) and conn.socket.pending()):
            self._read_head(conn)  # part of one, or decrypted bytes the selector cannot see
        else:
            self._register(conn.socket, selectors.EVENT_READ, conn)

    @property
    def can_add_keepalive_connection(self) -> bool:
        limit = self.server.keep_alive_conn_limit
        idle = sum(
            1 for _, item in self._items() if isinstance(item, _Connection) and item.due is None
        )
        return limit is None or idle < limit

    def run(self, expiration_interval: float) -> None:
        self._serving = True
        try:
            last_check = time.monotonic()
            while not self._stop_requested:
                try:
                    ready = self._selector.select(timeout=expiration_interval)
                except OSError:
                    self._drop_broken()
                    continue
                for key, _events in ready:
                    self._step(key.fileobj, key.data)
                now = time.monotonic()
                if now - last_check >= expiration_interval:
                    self._expire(now)
                    last_check = now
        finally:
            self._serving = False

    def stop(self) -> None:
        self._stop_requested = True
        while self._serving:
            time.sleep(0.01)

    def close(self) -> None:
        for _, item in self._items():
            if item is not self.server:
                _close(item)
        for conn in self.server.clients.drain():
            _close(conn)
        self._selector.close()

    # -- the selector thread --------------------------------------------------------------

    def _step(self, fileobj: Any, item: Any) -> None:
        if item is self.server:
            self._accept()
            return
        if not self._unregister(fileobj):
            return  # no longer ours to serve
        if isinstance(item, _Handshake):
            self._handshake(item)
        else:
            self._read_head(item)

    def _accept(self) -> None:
        srv = self.server
        try:
            sock, peer = srv.socket.accept()
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError as exc:
            if exc.errno not in OUT_OF_RESOURCES:
                log.debug("accept() failed: %s", exc)  # e.g. the client gave up at once
                return
            log.error("cannot accept a connection: %s", exc)
            self._unregister(srv.socket)  # the backlog stays readable: wait, then retry
            self._resume_at = time.monotonic() + ACCEPT_BACKOFF_S
            return
        address = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("", 0)
        if not srv.clients.join(address[0]):
            log.warning(
                "refused a connection from %s: %d connections already open from it",
                address[0],
                srv.clients.open_from(address[0]),
            )
            sock.close()
            return
        due = time.monotonic() + srv.header_timeout
        try:
            sock.setblocking(False)
            if srv.ssl_adapter is None:
                conn = _Connection(srv, sock, MakeFile, address)
                conn.due = due
                self._register(sock, selectors.EVENT_READ, conn)
                return
            tls = srv.ssl_adapter.context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        except (OSError, ValueError) as exc:
            log.info("dropped a connection from %s: %s", address[0], exc)
            sock.close()
            srv.clients.leave(address[0])
            return
        self._handshake(_Handshake(srv, tls, address, due))

    def _handshake(self, handshake: _Handshake) -> None:
        sock = handshake.sock
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._register(sock, selectors.EVENT_READ, handshake)
            return
        except ssl.SSLWantWriteError:
            self._register(sock, selectors.EVENT_WRITE, handshake)
            return
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.info("TLS handshake with %s failed: %s", handshake.address[0], exc)
            _close(handshake)
            return
        adapter = self.server.ssl_adapter
        conn = _Connection(self.server, sock, adapter.makefile, handshake.address)
        conn.ssl_env = adapter.get_environ(sock)
        conn.due = handshake.due  # the handshake and the headers in one header_timeout
        self._read_head(conn)

    def _read_head(self, conn: _Connection) -> None:
        while True:
            try:
                data = conn.socket.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except OSError:
                _close(conn)
                return
            if not data:  # the client went away
                _close(conn)
                return
            if conn.due is None:
                conn.due = time.monotonic() + self.server.header_timeout
            start = max(0, len(conn.head) - 3)
            conn.head += data
            if _complete(conn.head, start):
                self._hand_over(conn)
                return
            if len(conn.head) > MAX_HEADER_BYTES:
                log.warning(
                    "closed a connection from %s: request headers over %d bytes",
                    conn.remote_addr,
                    MAX_HEADER_BYTES,
                )
                _close(conn)
                return
        self._register(conn.socket, selectors.EVENT_READ, conn)

    def _hand_over(self, conn: _Connection) -> None:
        """The headers are in: the connection goes to a worker (or waits for its address's)."""
        conn.socket.settimeout(self.server.timeout)
        conn.rfile.close()  # the reader over the bare socket; the socket stays open
        conn.rfile = _HeadReader(conn.socket, bytes(conn.head), conn.rbufsize)
        conn.head = bytearray()
        conn.due = None
        self.server.process_conn(conn)

    def _expire(self, now: float) -> None:
        idle_limit = now - self.server.timeout
        for fileobj, item in self._items():
            if item is self.server:
                continue
            if item.due is not None:
                if now < item.due:
                    continue
                address = item.address[0] if isinstance(item, _Handshake) else item.remote_addr
                log.info(
                    "closed a connection from %s: no complete request within %g s",
                    address,
                    self.server.header_timeout,
                )
            elif item.idle_since > idle_limit:
                continue  # kept alive, and not idle for `timeout` yet
            if self._unregister(fileobj):
                _close(item)
        if self._resume_at is not None and now >= self._resume_at:
            self._resume_at = None
            self._register(self.server.socket, selectors.EVENT_READ, self.server)

    def _drop_broken(self) -> None:
        for fileobj, item in self._items():
            if item is self.server:
                continue
            try:
                os.fstat(fileobj.fileno())
            except (OSError, ValueError):
                if self._unregister(fileobj):
                    _close(item)


class LoggingServer(wsgi.Server):
    """cheroot's WSGI server with the selector thread above; TLS only with the builtin adapter.

    `per_address` (connections one client address may hold) and `per_address_workers` (its
    requests in workers at once) are unlimited unless given."""

    def __init__(
        self,
        bind_addr: Any,
        wsgi_app: Any,
        *args: Any,
        per_address: int | None = None,
        per_address_workers: int | None = None,
        header_timeout: float = HEADER_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("request_queue_size", BACKLOG)
        super().__init__(bind_addr, wsgi_app, *args, **kwargs)
        self.header_timeout = header_timeout
        self.clients = Clients(per_address, per_address_workers)

    def error_log(self, msg: str = "", level: int = 20, traceback: bool = False) -> None:
        log.log(level, "cheroot: %s", msg, exc_info=traceback)

    def prepare(self) -> None:
        if self.ssl_adapter is not None and not isinstance(self.ssl_adapter, BuiltinSSLAdapter):
            raise TypeError("LoggingServer serves TLS with cheroot's BuiltinSSLAdapter only")
        super().prepare()
        if self.ready:
            self._connections.close()  # cheroot's own: nothing in it yet but the listener
            self._connections: Any = _Connections(self)

    def process_conn(self, conn: _Connection) -> None:
        if self.clients.start(conn):
            super().process_conn(conn)

    def finished(self, conn: _Connection) -> None:
        following = self.clients.finish(conn)
        if following is not None:
            super().process_conn(following)

    @classmethod
    def prepare_socket(
        cls,
        bind_addr: Any,
        family: Any,
        type: Any,
        proto: Any,
        nodelay: Any,
        ssl_adapter: Any,
        reuse_port: bool = False,
    ) -> Any:
        sock = super().prepare_socket(
            bind_addr, family, type, proto, nodelay, ssl_adapter, reuse_port
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return sock


class ThreadedServer:
    """A WSGI app served by `LoggingServer` on a daemon thread named `name`.

    `timeout` is how long a kept-alive connection may wait for its next request (and a body
    or a reader may stall); `shutdown_timeout` how long `stop()` lets requests in flight
    finish. `per_address`, `per_address_workers` and `header_timeout` are LoggingServer's.
    `start()` raises OSError when the address cannot be served (nothing is left running)."""

    def __init__(
        self,
        app: Any,
        *,
        bind: str,
        port: int,
        name: str,
        threads: int,
        timeout: float,
        shutdown_timeout: float,
        ssl_adapter: Any = None,
        per_address: int | None = None,
        per_address_workers: int | None = None,
        header_timeout: float = HEADER_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.bind = bind
        self._port = port
        self.name = name
        self.threads = threads
        self.timeout = timeout
        self.shutdown_timeout = shutdown_timeout
        self.ssl_adapter = ssl_adapter
        self.per_address = per_address
        self.per_address_workers = per_address_workers
        self.header_timeout = header_timeout
        self._server: LoggingServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port served (the one picked for port 0, once started)."""
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> Self:
        if self._server is not None:
            return self
        server = LoggingServer(
            (self.bind, self._port),
            self.app,
            numthreads=self.threads,
            server_name=self.name,
            timeout=self.timeout,
            shutdown_timeout=self.shutdown_timeout,
            per_address=self.per_address,
            per_address_workers=self.per_address_workers,
            header_timeout=self.header_timeout,
        )
        server.expiration_interval = SELECT_INTERVAL_S
        if self.ssl_adapter is not None:
            server.ssl_adapter = self.ssl_adapter
        server.prepare()
        # Port 0 became a real port: keep it, so a restart comes back at the same address.
        self._port = int(server.bind_addr[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, let requests in flight finish (up to shutdown_timeout), join."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._thread is not None:
            self._thread.join(self.shutdown_timeout + 1)
            self._thread = None
