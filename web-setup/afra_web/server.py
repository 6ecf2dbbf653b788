"""Serving the wizard and dashboard: `start_web(appliance)` on cheroot (`afra.wsgi.WsgiServer`).

Plain HTTP on the LAN: the box has no name a public CA would certify, and a self-signed
certificate teaches technicians to click through warnings. What HTTP leaves open is covered
where it matters: the claim needs physical presence, sessions are short, every form carries a
CSRF token and only the box's own Host names are served.
"""

from __future__ import annotations

import logging
import socket

from afra.app import Appliance
from afra.frontends import Started
from afra.wsgi import WsgiServer
from afra_web import create_app
from afra_web.network import NetworkAdapter

LOG = logging.getLogger("afra.web")

THREADS = 8  # a few phones and their status polls; enrolment and C-ECHO block one each


def start_web(appliance: Appliance, *, network: NetworkAdapter | None = None) -> WsgiServer:
    """Serve the wizard and dashboard for a built appliance; ServiceError if the port is taken."""
    settings = appliance.config.web
    server = WsgiServer(
        create_app(appliance, network=network),
        bind=settings.bind,
        port=settings.port,
        name="afra-web",
        threads=THREADS,
        what="the setup and dashboard page (web.bind, web.port)",
    )
    server.start()
    LOG.info("setup and dashboard page on %s:%d", settings.bind, server.port)
    return server


def urls(bind: str, port: int, name: str = "") -> list[str]:
    """Where a person opens the page: by name on the LAN (`name`, the one mDNS advertises,
    else `<hostname>.local`), or on loopback in emulation."""
    suffix = "" if port == 80 else f":{port}"
    if bind in ("127.0.0.1", "::1", "localhost"):
        return [f"http://127.0.0.1{suffix}/"]
    name = name.rstrip(".") or f"{socket.gethostname()}.local"
    found = [f"http://{name}{suffix}/"]
    if bind not in ("0.0.0.0", "::", ""):  # noqa: S104
        found.append(f"http://{bind}{suffix}/")
    return found


def _mdns_name(appliance: Appliance) -> str:
    """The host name mDNS advertises for this box (afra-<id>.local), when it advertises."""
    if appliance.mdns is None:
        return ""
    try:
        return str(appliance.advert().host)
    except Exception:  # the advert needs the node key; without it, the plain host name
        return ""


def start_frontend(appliance: Appliance) -> Started:
    """The `web` front end (entry point group `afra.frontends`): how `afra run` starts the
    wizard and dashboard without importing this package."""
    server = start_web(appliance)
    return Started(
        name="web",
        port=server.port,
        urls=urls(appliance.config.web.bind, server.port, _mdns_name(appliance)),
        stop=server.stop,
    )
