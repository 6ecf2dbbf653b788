"""cheroot's WSGI server as every AFRA and Medix service runs it: logging through `logging`
(not stderr) and SO_REUSEADDR even for port 0, so a restarted service gets its port back at
once (the connections a listener accepted inherit the flag; without it their TIME_WAIT keeps
the port for a minute)."""

from __future__ import annotations

import logging
import socket
from typing import Any

from cheroot import wsgi

log = logging.getLogger("medix.serving")


class LoggingServer(wsgi.Server):
    def error_log(self, msg: str = "", level: int = 20, traceback: bool = False) -> None:
        log.log(level, "cheroot: %s", msg, exc_info=traceback)

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
