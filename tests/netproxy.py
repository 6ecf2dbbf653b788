"""A TCP proxy on loopback that can throttle and cut connections: a center's uplink, in a box.

Used by the uplink tests (a connection cut mid-upload), the fault suite's flaky link, and by
`make bench-uplink` (5 and 50 Mb/s links). Bytes pass through untouched (TLS goes end to
end); the proxy only delays and counts them, and can close every connection once a byte
budget is spent, reset them (RST), or stall them: connections stay open and nothing moves,
as behind a NAT that forgot them (half-open).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Self

CHUNK = 16384


class Proxy:
    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        rate_bps: float | None = None,
        listen: tuple[str, int] = ("127.0.0.1", 0),
    ) -> None:
        self.upstream = upstream
        self.rate_bps = rate_bps
        self._listener = socket.create_server(listen)
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.bytes_up = 0  # client -> upstream
        self.bytes_down = 0
        self.connections = 0
        self._cut_after: int | None = None
        # One shared pacer per direction, so parallel connections share the link like a real one.
        self._next_send = {"up": 0.0, "down": 0.0}
        self.latency_s = 0.0  # added before each chunk is passed on
        self._flowing = threading.Event()
        self._flowing.set()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def cut_after(self, upstream_bytes: int) -> None:
        """Close every connection once this many more bytes went upstream (once)."""
        with self._lock:
            self._cut_after = self.bytes_up + upstream_bytes

    def start(self) -> Self:
        thread = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        self.cut_all()
        for thread in self._threads:
            thread.join(timeout=5)

    def stall(self) -> None:
        """Stop passing bytes; connections stay open (the peer sees silence, no close)."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def reset_all(self) -> None:
        """Close every connection with a TCP reset (SO_LINGER 0), as a middlebox would."""
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.close()

    def cut_all(self) -> None:
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
                self._sockets.update((client, server))
            for src, dst, direction in ((client, server, "up"), (server, client, "down")):
                thread = threading.Thread(
                    target=self._pump, args=(src, dst, direction), daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _pace(self, direction: str, size: int) -> None:
        if not self.rate_bps:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_send[direction])
            self._next_send[direction] = start + size * 8 / self.rate_bps
        if start > now:
            time.sleep(start - now)

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while not self._stop.is_set():
                data = src.recv(CHUNK)
                if not data:
                    break
                while not self._flowing.wait(0.1):
                    if self._stop.is_set():
                        return
                if self.latency_s:
                    time.sleep(self.latency_s)  # the link's delay, not a wait for anything
                self._pace(direction, len(data))
                dst.sendall(data)
                cut = False
                with self._lock:
                    if direction == "up":
                        self.bytes_up += len(data)
                        if self._cut_after is not None and self.bytes_up >= self._cut_after:
                            self._cut_after = None
                            cut = True
                    else:
                        self.bytes_down += len(data)
                if cut:
                    self.cut_all()
                    break
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._sockets.discard(src)
                self._sockets.discard(dst)
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()
