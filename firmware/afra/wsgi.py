"""`WsgiServer`: a Flask app of the box served by cheroot (a production WSGI server) on a
thread: the node-side Medix API and the setup wizard and dashboard.

The runner is medix.serving's `ThreadedServer` (the reference hub runs on it too); this adds
the box's settings and names a port that cannot be served in a `ServiceError`. Port 0 picks a
free port; `port` tells which after `start()`. SO_REUSEADDR is set so a restarted box gets
its port back at once.

Idle and slow clients (medix.serving): a connection costs a worker thread only once its
request headers are in, and is closed if they are not complete within `header_timeout`. One
client address may hold PER_ADDRESS_CONNECTIONS connections (more are closed at accept) and,
with `share_threads`, a quarter of the threads (its further requests wait their turn), so the
technician's phone is served beside anyone else's idle or slow connections.
"""

from __future__ import annotations

from typing import Any, Self

from afra.errors import ServiceError
from medix.serving import HEADER_TIMEOUT_S, ThreadedServer

SHUTDOWN_TIMEOUT_S = 3
# A browser opens at most 6 connections to one host; 2 more for a second browser or a script.
PER_ADDRESS_CONNECTIONS = 8
IDLE_TIMEOUT_S = 60  # a kept-alive connection without a next request; a stalled body or reader


class WsgiServer(ThreadedServer):
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
        # A quarter of the threads per address (the wizard: a phone beside a scanner); off
        # for the node API, whose one client is the hub (and is authenticated before use).
        super().__init__(
            app,
            bind=bind,
            port=port,
            name=name,
            threads=threads,
            timeout=IDLE_TIMEOUT_S,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            ssl_adapter=ssl_adapter,
            per_address=PER_ADDRESS_CONNECTIONS,
            per_address_workers=max(1, threads // 4) if share_threads else None,
            header_timeout=header_timeout,
        )
        self.what = what
        self.share_threads = share_threads

    def start(self) -> Self:
        """Serve; ServiceError (naming `what` and the address) when the port cannot be had."""
        try:
            return super().start()
        except OSError as exc:
            # cheroot words a bind failure as one string ("No socket could be created --
            # ((addr), [Errno 98] Address already in use)"): say it as a person would.
            text = str(exc)
            reason = exc.strerror or (
                "the port is already in use by another program"
                if "Errno 98" in text or "already in use" in text
                else text
            )
            raise ServiceError(
                f"cannot serve {self.what} on {self.bind}:{self.port}: {reason}"
            ) from None
