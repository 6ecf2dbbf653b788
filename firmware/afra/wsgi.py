"""`WsgiServer`: a Flask app served by cheroot (a production WSGI server) on a thread.

Used by the box's HTTP services (the node-side Medix API; the setup wizard). Port 0 picks a
free port; `port` tells which after `start()`. SO_REUSEADDR is set so a restarted box gets
its port back at once.

Idle and slow clients (medix.serving): a connection costs a worker thread only once its
request headers are in, and is closed if they are not complete within `header_timeout`. One
client address may hold PER_ADDRESS_CONNECTIONS connections (more are closed at accept) and a
quarter of the threads (its further requests wait their turn), so the technician's phone is
served beside anyone else's idle or slow connections.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from afra.errors import ServiceError
from medix.serving import HEADER_TIMEOUT_S, LoggingServer

LOG = logging.getLogger("afra.wsgi")

SHUTDOWN_TIMEOUT_S = 3
SELECT_INTERVAL_S = 0.1  # how soon stop() is noticed, and a late connection closed
# A browser opens at most 6 connections to one host; 2 more for a second browser or a script.
PER_ADDRESS_CONNECTIONS = 8
IDLE_TIMEOUT_S = 60  # a kept-alive connection without a next request; a stalled body or reader


class WsgiServer:
    def __init__(
        self,
        app: Any,
        *,
        bind: str,
        port: int,
        name: str,
        threads: int = 8,
        ssl_adapter: Any = None,
        what: str = "the service",
        header_timeout: float = HEADER_TIMEOUT_S,
        share_threads: bool = True,
    ) -> None:
        self.app = app
        self.bind = bind
        self._port = port
        self.name = name
        self.threads = threads
        self.ssl_adapter = ssl_adapter
        self.what = what
        self.header_timeout = header_timeout
        # A quarter of the threads per address (the wizard: a phone beside a scanner); off
        # for the node API, whose one client is the hub (and is authenticated before use).
        self.share_threads = share_threads
        self._server: LoggingServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> WsgiServer:
        if self._server is not None:
            return self
        server = LoggingServer(
            (self.bind, self._port),
            self.app,
            numthreads=self.threads,
            server_name=self.name,
            timeout=IDLE_TIMEOUT_S,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            per_address=PER_ADDRESS_CONNECTIONS,
            per_address_workers=max(1, self.threads // 4) if self.share_threads else None,
            header_timeout=self.header_timeout,
        )
        server.expiration_interval = SELECT_INTERVAL_S
        if self.ssl_adapter is not None:
            server.ssl_adapter = self.ssl_adapter
        try:
            server.prepare()
        except OSError as exc:
            raise ServiceError(
                f"cannot serve {self.what} on {self.bind}:{self._port}: {exc.strerror or exc}"
            ) from None
        self._port = int(server.bind_addr[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._thread is not None:
            self._thread.join(SHUTDOWN_TIMEOUT_S + 1)
            self._thread = None
