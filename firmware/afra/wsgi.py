"""`WsgiServer`: a Flask app served by cheroot (a production WSGI server) on a thread.

Used by the box's HTTP services (the node-side Medix API; the setup wizard). Port 0 picks a
free port; `port` tells which after `start()`. SO_REUSEADDR is set so a restarted box gets
its port back at once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from afra.errors import ServiceError
from medix.serving import LoggingServer

LOG = logging.getLogger("afra.wsgi")

SHUTDOWN_TIMEOUT_S = 3
SELECT_INTERVAL_S = 0.1  # how soon stop() is noticed


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
    ) -> None:
        self.app = app
        self.bind = bind
        self._port = port
        self.name = name
        self.threads = threads
        self.ssl_adapter = ssl_adapter
        self.what = what
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
            timeout=60,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
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
