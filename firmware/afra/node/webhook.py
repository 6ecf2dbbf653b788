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
File), and are signed with the enrolment's webhook key when the hub gave one.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import urllib3

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
    """Posts one body to a pinned target; never follows a redirect."""

    def __init__(
        self,
        *,
        timeout: float,
        ca_file: Path | None,
        node_id: Callable[[], str],
        key: Callable[[], str],
    ) -> None:
        self.timeout = timeout
        self.ca_file = ca_file
        self.node_id = node_id
        self.key = key

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.ca_file is not None and self.ca_file.exists():
            context.load_verify_locations(cafile=str(self.ca_file))  # the hub's own CA too
        return context

    def post(self, target: Target, body: bytes) -> PostResult:
        headers = {
            "Host": target.host_header,
            "Content-Type": "application/json",
            "User-Agent": "AFRA",
        }
        key = self.key()
        if key:
            stamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = stamp
            headers[NODE_HEADER] = self.node_id()
            headers[SIGNATURE_HEADER] = webhook_signature(key, stamp, body)
        pool: urllib3.HTTPConnectionPool
        timeout = urllib3.Timeout(connect=self.timeout, read=self.timeout)
        if target.scheme == "https":
            pool = urllib3.HTTPSConnectionPool(
                target.address,
                target.port,
                timeout=timeout,
                retries=False,
                ssl_context=self._context(),
                server_hostname=target.host,
                assert_hostname=target.host,
            )
        else:
            pool = urllib3.HTTPConnectionPool(
                target.address, target.port, timeout=timeout, retries=False
            )
        try:
            response = pool.urlopen(
                "POST",
                target.path,
                body=body,
                headers=headers,
                redirect=False,
                retries=False,
                assert_same_host=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return PostResult(0, f"no answer: {exc}")
        finally:
            pool.close()
        status = int(response.status)
        if 300 <= status < 400:
            where = response.headers.get("Location", "")[:200]
            return PostResult(status, f"answered a redirect to {where!r}; not followed")
        if not 200 <= status < 300:
            return PostResult(status, f"answered {status}")
        return PostResult(status, "ok")
