"""mDNS / DNS-SD (python-zeroconf): the box makes itself findable on the center's LAN.

Two services are advertised under one friendly instance name (`mdns.name`, by default
`<box.name>-<short id>`) on the host name `afra-<short id>.local.`:

  _http._tcp    the setup wizard and dashboard   TXT txtvers, product=afra, id, version, path
  _dicom._tcp   the box's DICOM service          TXT txtvers, product=afra, id, aet

TXT records carry no patient data and no secrets: only what the list above names. The short
id is the start of the SHA-256 of the node's public key, so it is stable, exists before
enrolment and differs between boxes. A name already taken on the LAN (two boxes given the same
friendly name) is probed and renamed by zeroconf ("name-2"); the box logs the name it got.
Addresses are checked every `mdns.address_check_interval` on the injected clock; a change
(DHCP renewal, cable moved) re-binds the sockets and re-announces. `stop()` sends goodbyes.
`discover()` is the other side: what `afra discover` lists.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ifaddr
from zeroconf import (
    DNSAddress,
    DNSOutgoing,
    DNSQuestionType,
    InterfaceChoice,
    ServiceBrowser,
    ServiceInfo,
    ServiceListener,
    Zeroconf,
    const,
)

from afra import __version__
from afra.clock import Clock
from afra.config import Config
from afra.system.provision import box_id as stored_box_id
from afra.system.provision import key_box_id

LOG = logging.getLogger("afra.mdns")

HTTP_TYPE = "_http._tcp.local."
DICOM_TYPE = "_dicom._tcp.local."
PRODUCT = "afra"
SHORT_ID_CHARS = 6
NAME_PLACEHOLDERS = ("name", "id", "ae")


def short_id(key_path: Path) -> str:
    """The short id a node key gives: the first hex digits of its public key's SHA-256."""
    return key_box_id(key_path)


def instance_name(template: str, *, name: str, box_id: str, ae_title: str) -> str:
    """The friendly instance name; the box name part is shortened to fit DNS's 63 bytes."""
    for cut in range(len(name), -1, -1):
        text = template.format(name=name[:cut].strip(), id=box_id, ae=ae_title).strip()
        if len(text.encode("utf-8")) <= 63:
            return text
    return f"afra-{box_id}"


def interface_addresses(interfaces: Sequence[str] = ()) -> list[str]:
    """IPv4 addresses to advertise: those of the named interfaces (names or addresses), or
    every address except loopback when none is named."""
    found: set[str] = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str):
                continue  # IPv6: the box advertises IPv4 only
            if interfaces:
                if not {adapter.name, adapter.nice_name, ip.ip} & set(interfaces):
                    continue
            elif ipaddress.IPv4Address(ip.ip).is_loopback:
                continue
            found.add(ip.ip)
    return sorted(found, key=ipaddress.IPv4Address)


@dataclass(frozen=True)
class Advert:
    """What the box advertises; made when the box starts (the DICOM port may be chosen then)."""

    instance: str
    short_id: str
    web_port: int | None  # None: the web service is off, only DICOM is advertised
    dicom_port: int
    ae_title: str
    version: str

    @property
    def host(self) -> str:
        return f"afra-{self.short_id}.local."

    def infos(self, addresses: Sequence[str]) -> list[ServiceInfo]:
        common = {"txtvers": "1", "product": PRODUCT, "id": self.short_id}
        infos = []
        if self.web_port:
            infos.append(
                ServiceInfo(
                    HTTP_TYPE,
                    f"{self.instance}.{HTTP_TYPE}",
                    port=self.web_port,
                    properties={**common, "version": self.version, "path": "/"},
                    server=self.host,
                    parsed_addresses=list(addresses),
                )
            )
        infos.append(
            ServiceInfo(
                DICOM_TYPE,
                f"{self.instance}.{DICOM_TYPE}",
                port=self.dicom_port,
                properties={**common, "aet": self.ae_title},
                server=self.host,
                parsed_addresses=list(addresses),
            )
        )
        return infos


def advert_for(
    config: Config,
    *,
    key_path: Path,
    dicom_port: Callable[[], int],
    web_port: Callable[[], int | None] | None = None,
    data_dir: Path | None = None,
) -> Advert:
    """The advert of a configured box (called at start: the key and the ports exist then).

    The id is the box's own (`<data_dir>/box-id`, from its card) when there is one, else the
    key's. The web port is `web_port()` when given (the server's bound port), else
    `web.port`; with the web service off or its port unknown only DICOM is advertised.
    """
    box_id = stored_box_id(data_dir, key_path) if data_dir is not None else short_id(key_path)
    web = config.web
    port = web_port() if web_port is not None else web.port
    return Advert(
        instance=instance_name(
            config.mdns.name, name=config.box.name, box_id=box_id, ae_title=config.dicom.ae_title
        ),
        short_id=box_id,
        web_port=port if web.enabled and port else None,
        dicom_port=dicom_port(),
        ae_title=config.dicom.ae_title,
        version=__version__,
    )


class MdnsAdvertiser:
    def __init__(
        self,
        advert: Callable[[], Advert],
        *,
        clock: Clock,
        interfaces: Sequence[str] = (),
        check_interval: float = 10.0,
        addresses: Callable[[], list[str]] | None = None,
    ) -> None:
        self._make_advert = advert
        self.clock = clock
        self.interfaces = tuple(interfaces)
        self.check_interval = check_interval
        self._addresses = addresses or (lambda: interface_addresses(self.interfaces))
        self.advert: Advert | None = None
        self._zc: Zeroconf | None = None
        self._infos: list[ServiceInfo] = []
        self._ips: list[str] = []
        self._lock = threading.Lock()
        self._check_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._announce = False
        self._refresh = False
        self._next_check = 0.0
        self._warned_no_address = False
        self._thread: threading.Thread | None = None
        self.registered = threading.Event()  # set once the services are on the network

    # -- control ----------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="mdns", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Send goodbyes and close the sockets."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self._close()

    def refresh(self) -> None:
        """What is advertised changed (port, AE title): goodbyes, then the new advert."""
        self._refresh = True
        self._wake.set()

    def announce(self) -> None:
        """Announce again now (the button's short press); returns at once."""
        self._announce = True
        self._wake.set()

    def check_addresses(self) -> bool:
        """Compare the addresses with those advertised; re-announce on a change. True if so."""
        with self._check_lock:
            return self._check_addresses()

    def _check_addresses(self) -> bool:
        ips = self._addresses()
        with self._lock:
            zc, old = self._zc, self._ips
        if zc is None or ips == old:
            return False
        if not ips:
            LOG.warning("mDNS: no IPv4 address left; the box is not advertised until one returns")
            self._close()
            return True
        LOG.info("mDNS: addresses changed %s -> %s; announcing again", old, ips)
        try:
            zc.update_interfaces(interfaces=list(ips))
        except Exception as exc:  # the services are updated below even so
            LOG.warning("mDNS: could not re-bind to the new addresses: %s", exc)
        with self._lock:
            self._ips = list(ips)
            infos = list(self._infos)
        gone = [ip for ip in old if ip not in ips]
        if gone and self.advert is not None:
            # A goodbye (TTL 0) for each address the box no longer has: caches drop it now
            # instead of offering a dead address until its TTL runs out.
            out = DNSOutgoing(const._FLAGS_QR_RESPONSE | const._FLAGS_AA)
            for ip in gone:
                record = DNSAddress(
                    self.advert.host,
                    const._TYPE_A,
                    const._CLASS_IN | const._CLASS_UNIQUE,
                    0,
                    ipaddress.IPv4Address(ip).packed,
                )
                out.add_answer_at_time(record, 0)
            zc.send(out)
        for info in infos:
            info.addresses = [ipaddress.IPv4Address(ip).packed for ip in ips]
            zc.update_service(info)
        return True

    # -- what is advertised ---------------------------------------------------------------

    @property
    def names(self) -> dict[str, str]:
        """Service type -> the instance name the box holds (after any conflict rename)."""
        with self._lock:
            return {info.type: info.name.removesuffix("." + info.type) for info in self._infos}

    def primary_address(self) -> str | None:
        with self._lock:
            ips = list(self._ips)
        ips = ips or self._addresses()
        return ips[0] if ips else None

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            ips = list(self._ips)
        advert = self.advert
        return {
            "advertised": bool(ips) and self.registered.is_set(),
            "host": advert.host if advert else None,
            "short_id": advert.short_id if advert else None,
            "names": self.names,
            "addresses": ips,
        }

    def signature(self) -> str:
        return repr((sorted(self.names.items()), self._ips, self.registered.is_set()))

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        retry_at = 0.0
        failures = 0
        while not self._stopping:
            try:
                if self._refresh:
                    self._refresh = False
                    self._close()
                    self.advert = None
                    retry_at = 0.0
                if self._zc is None:
                    if self.clock.monotonic() >= retry_at:
                        self._try_register()
                        failures = 0
                elif self.clock.monotonic() >= self._next_check:
                    self._next_check = self.clock.monotonic() + self.check_interval
                    self.check_addresses()
                if self._announce and self._zc is not None:
                    self._announce = False
                    for info in list(self._infos):
                        self._zc.update_service(info)
                    LOG.info("mDNS: announced %s again", ", ".join(self.names.values()))
            except Exception as exc:
                failures += 1
                if failures == 1:
                    LOG.exception(
                        "mDNS advertising failed; trying again every %.0f s", self.check_interval
                    )
                else:
                    LOG.debug("mDNS advertising failed again: %s", exc)
                retry_at = self.clock.monotonic() + self.check_interval
                self._close()
            self.clock.sleep(min(self.check_interval, 1.0), self._wake)
            self._wake.clear()

    def _try_register(self) -> None:
        ips = self._addresses()
        if not ips:
            if not self._warned_no_address:
                LOG.warning("mDNS: no IPv4 address to advertise yet; will keep looking")
                self._warned_no_address = True
            return
        self._warned_no_address = False
        if self.advert is None:
            self.advert = self._make_advert()
        advert = self.advert
        zc = Zeroconf(interfaces=list(ips))
        infos = advert.infos(ips)
        with self._lock:
            self._zc, self._infos, self._ips = zc, infos, list(ips)
        self._next_check = self.clock.monotonic() + self.check_interval
        assert zc.loop is not None
        asyncio.run_coroutine_threadsafe(_register_all(zc, infos), zc.loop).result(timeout=60)
        for info in infos:
            got = info.name.removesuffix("." + info.type)
            if got != advert.instance:
                LOG.warning(
                    "mDNS: the name %r is taken on this network (another box?); "
                    "advertising %s as %r",
                    advert.instance,
                    info.type,
                    got,
                )
        LOG.info(
            "mDNS: advertising %s on %s (%s)",
            ", ".join(f"{n} ({t.split('.')[0]})" for t, n in self.names.items()),
            advert.host,
            ", ".join(ips),
        )
        self.registered.set()

    def _close(self) -> None:
        with self._lock:
            zc, self._zc, self._infos, self._ips = self._zc, None, [], []
        self.registered.clear()
        if zc is not None:
            try:
                zc.close()  # sends goodbyes for every registered service first
            except Exception as exc:
                LOG.warning("mDNS: closing failed: %s", exc)


async def _register_all(zc: Zeroconf, infos: Sequence[ServiceInfo]) -> None:
    """Probe and announce both services at once (each probe takes about 1.5 s)."""
    broadcasts = await asyncio.gather(
        *(zc.async_register_service(info, allow_name_change=True) for info in infos)
    )
    await asyncio.gather(*broadcasts)


# -- discovery ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """One service seen on the LAN."""

    type: str
    name: str
    host: str
    addresses: tuple[str, ...]
    port: int
    txt: dict[str, str] = field(default_factory=dict)

    @property
    def is_afra(self) -> bool:
        return self.txt.get("product") == PRODUCT


class _Collector(ServiceListener):
    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        with self._lock:
            self.seen.add((type_, name))

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.add_service(zc, type_, name)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        with self._lock:
            self.seen.discard((type_, name))


def discover(timeout: float = 3.0, interfaces: Sequence[str] = ()) -> list[Found]:
    """Browse for AFRA boxes (`_http._tcp` with product=afra) and any `_dicom._tcp` service.

    Listens for `timeout` seconds of real time (a network wait), then resolves each name.
    """
    ips = interface_addresses(interfaces) if interfaces else []
    if interfaces and not ips:
        raise ValueError(f"no IPv4 address on {', '.join(interfaces)}")
    zc = Zeroconf(interfaces=ips or InterfaceChoice.All)
    collector = _Collector()
    # Multicast questions only: on a host where another mDNS stack (avahi, a running box)
    # shares port 5353, a unicast (QU) answer reaches just one of the sockets, maybe not ours.
    browsers = [
        ServiceBrowser(zc, t, collector, question_type=DNSQuestionType.QM)
        for t in (HTTP_TYPE, DICOM_TYPE)
    ]
    try:
        threading.Event().wait(timeout)
        found: list[Found] = []
        for type_, name in sorted(collector.seen):
            info = zc.get_service_info(type_, name, timeout=1500)
            if info is None or info.port is None:
                continue
            txt = {k: v or "" for k, v in info.decoded_properties.items()}
            if type_ == HTTP_TYPE and txt.get("product") != PRODUCT:
                continue  # some other web server: not ours to list
            found.append(
                Found(
                    type=type_,
                    name=name.removesuffix("." + type_),
                    host=info.server or "",
                    addresses=tuple(info.parsed_addresses()),
                    port=info.port,
                    txt=txt,
                )
            )
        return found
    finally:
        for browser in browsers:
            browser.cancel()
        zc.close()


def found_as_dict(found: Found) -> dict[str, Any]:
    return {
        "type": found.type,
        "name": found.name,
        "host": found.host,
        "addresses": list(found.addresses),
        "port": found.port,
        "txt": dict(found.txt),
        "afra": found.is_afra,
    }


def render_found(found: Sequence[Found]) -> str:
    """`afra discover` for people: AFRA boxes first, then every DICOM service."""
    boxes = [f for f in found if f.type == HTTP_TYPE]
    dicom = [f for f in found if f.type == DICOM_TYPE]
    lines = [f"AFRA boxes ({len(boxes)}):"]
    for f in boxes:
        where = f.addresses[0] if f.addresses else f.host
        lines.append(
            f"  {f.name:<28} http://{where}:{f.port}{f.txt.get('path', '/')}  {f.host}  "
            f"id {f.txt.get('id', '?')}  version {f.txt.get('version', '?')}"
        )
    lines.append(f"DICOM services ({len(dicom)}):")
    for f in dicom:
        where = ", ".join(f.addresses) or f.host
        owner = "  (AFRA)" if f.is_afra else ""
        lines.append(f"  {f.name:<28} AE {f.txt.get('aet', '?'):<16} {where} port {f.port}{owner}")
    return "\n".join(lines)
