"""The box's network as the wizard shows and changes it, behind one seam: `NetworkAdapter`.

`read()` reports the address, hostname, gateway, DNS servers and link speed; `apply()` asks
the OS to use a static address (or DHCP again). On the Pi, `SystemNetwork` reads the kernel
(/proc, /sys, ioctl) and applies through NetworkManager (`nmcli`), which Raspberry Pi OS 12
uses; `EmulatedNetwork` reads the same but only records what would have been applied (make
run, a developer's machine); tests pass a fake.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import shutil
import socket
import struct
import subprocess
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from afra.errors import AfraError

LOG = logging.getLogger("afra.web")

SIOCGIFADDR = 0x8915
SIOCGIFNETMASK = 0x891B
APPLY_DELAY_S = 2.0  # let the answer reach the phone before the address changes under it


class NetworkError(AfraError, OSError):
    """The network change could not be applied."""


@dataclass(frozen=True)
class StaticAddress:
    """A static IPv4 configuration: `address` with its prefix, e.g. 10.0.0.7/24."""

    address: str
    gateway: str
    dns: tuple[str, ...] = ()

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_interface(self.address).ip)


@dataclass(frozen=True)
class NetworkInfo:
    interface: str
    address: str  # with its prefix, e.g. 10.0.0.7/24; "" when the box has none
    hostname: str
    gateway: str
    dns: tuple[str, ...]
    link_speed_mbps: int | None
    mode: str  # "dhcp", "static" or "unknown"
    addresses: tuple[str, ...] = field(default=())  # every address of the box, for Host checks
    note: str = ""

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


class NetworkAdapter(Protocol):
    def read(self) -> NetworkInfo: ...

    def apply(self, static: StaticAddress | None) -> None:
        """Use `static`, or DHCP when None. May take effect a moment after returning."""
        ...


ERR_IPV4 = "Enter an IPv4 address such as 192.168.1.50."
ERR_RESERVED = "This address cannot be used for a device (network, broadcast or reserved)."


def parse_static(
    address: str, prefix: str, gateway: str, dns: str
) -> tuple[StaticAddress | None, dict[str, str]]:
    """Check a static address form: the setting, or an (English) message per field."""
    errors: dict[str, str] = {}
    iface: ipaddress.IPv4Interface | None = None
    try:
        ip = ipaddress.IPv4Address(address.strip())
    except ValueError:
        errors["address"] = ERR_IPV4
        ip = None
    try:
        bits = int(prefix.strip())
        if not 8 <= bits <= 30:
            raise ValueError
    except ValueError:
        errors["prefix"] = "Enter the prefix length, 8 to 30 (24 is 255.255.255.0)."
        bits = None
    if ip is not None and bits is not None:
        iface = ipaddress.IPv4Interface(f"{ip}/{bits}")
        special = ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip.is_link_local
        if special or ip in (iface.network.network_address, iface.network.broadcast_address):
            errors["address"] = ERR_RESERVED
    try:
        gw = ipaddress.IPv4Address(gateway.strip())
        if iface is not None and gw not in iface.network:
            errors["gateway"] = "The gateway must be in the same network as the address."
        elif iface is not None and gw == iface.ip:
            errors["gateway"] = "The gateway cannot be the box's own address."
    except ValueError:
        errors["gateway"] = ERR_IPV4
    servers: list[str] = []
    for item in dns.replace(",", " ").split():
        try:
            servers.append(str(ipaddress.ip_address(item)))
        except ValueError:
            errors["dns"] = "Enter DNS servers as IP addresses, separated by spaces."
    if not servers and "dns" not in errors:
        errors["dns"] = "Enter at least one DNS server."
    if errors or iface is None:
        return None, errors
    return StaticAddress(str(iface), gateway.strip(), tuple(servers[:3])), {}


def _ioctl_ipv4(sock: socket.socket, request: int, interface: str) -> str:
    packed = struct.pack("256s", interface.encode()[:15])
    return socket.inet_ntoa(fcntl.ioctl(sock.fileno(), request, packed)[20:24])


def _default_route(route_file: Path) -> tuple[str, str]:
    """(interface, gateway) of the IPv4 default route from /proc/net/route."""
    try:
        lines = route_file.read_text().splitlines()[1:]
    except OSError:
        return "", ""
    for line in lines:
        parts = line.split()
        if len(parts) > 2 and parts[1] == "00000000":
            gateway = socket.inet_ntoa(struct.pack("<L", int(parts[2], 16)))
            return parts[0], gateway
    return "", ""


def _dns(resolv: Path) -> tuple[str, ...]:
    try:
        lines = resolv.read_text().splitlines()
    except OSError:
        return ()
    return tuple(
        line.split()[1] for line in lines if line.startswith("nameserver") and len(line.split()) > 1
    )


def _interfaces() -> list[str]:
    return [name for _i, name in socket.if_nameindex()]


class SystemNetwork:
    """The real network: read from the kernel, changed through NetworkManager."""

    def __init__(
        self,
        *,
        proc_route: Path = Path("/proc/net/route"),
        resolv_conf: Path = Path("/etc/resolv.conf"),
        sys_net: Path = Path("/sys/class/net"),
    ) -> None:
        self.proc_route = proc_route
        self.resolv_conf = resolv_conf
        self.sys_net = sys_net

    def _address(self, interface: str) -> str:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
            contextlib.suppress(OSError),
        ):
            ip = _ioctl_ipv4(sock, SIOCGIFADDR, interface)
            mask = _ioctl_ipv4(sock, SIOCGIFNETMASK, interface)
            return str(ipaddress.IPv4Interface(f"{ip}/{mask}"))
        return ""

    def _speed(self, interface: str) -> int | None:
        try:
            speed = int((self.sys_net / interface / "speed").read_text().strip())
        except (OSError, ValueError):
            return None  # Wi-Fi and virtual links have none
        return speed if speed > 0 else None

    def _mode(self, interface: str) -> str:
        nmcli = shutil.which("nmcli")
        if not nmcli or not interface:
            return "unknown"
        try:
            out = subprocess.run(
                [nmcli, "-g", "IP4.ADDRESS,DHCP4.OPTION", "device", "show", interface],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
        return "dhcp" if "dhcp_server_identifier" in out else "static"

    def read(self) -> NetworkInfo:
        interface, gateway = _default_route(self.proc_route)
        addresses = tuple(
            a for a in (self._address(name) for name in _interfaces()) if a and name_ok(a)
        )
        return NetworkInfo(
            interface=interface,
            address=self._address(interface) if interface else "",
            hostname=socket.gethostname(),
            gateway=gateway,
            dns=_dns(self.resolv_conf),
            link_speed_mbps=self._speed(interface) if interface else None,
            mode=self._mode(interface),
            addresses=addresses,
        )

    def _connection(self, nmcli: str, interface: str) -> str:
        out = subprocess.run(
            [nmcli, "-g", "GENERAL.CONNECTION", "device", "show", interface],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        name = out.stdout.strip()
        if out.returncode != 0 or not name:
            raise NetworkError(f"NetworkManager has no connection on {interface}")
        return name

    def apply(self, static: StaticAddress | None) -> None:
        nmcli = shutil.which("nmcli")
        if nmcli is None:
            raise NetworkError("NetworkManager (nmcli) is not installed on this box")
        interface, _gw = _default_route(self.proc_route)
        if not interface:
            raise NetworkError("the box has no default route: which interface to set is unknown")
        connection = self._connection(nmcli, interface)
        if static is None:
            settings = ["ipv4.method", "auto", "ipv4.addresses", "", "ipv4.gateway", ""]
            settings += ["ipv4.dns", ""]
        else:
            settings = ["ipv4.method", "manual", "ipv4.addresses", static.address]
            settings += ["ipv4.gateway", static.gateway, "ipv4.dns", " ".join(static.dns)]
        result = subprocess.run(
            [nmcli, "connection", "modify", connection, *settings],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        if result.returncode != 0:
            raise NetworkError(f"NetworkManager refused the change: {result.stderr.strip()}")

        # Re-activating drops the phone's connection: do it after the answer has gone out.
        def reactivate() -> None:
            threading.Event().wait(APPLY_DELAY_S)
            subprocess.run(
                [nmcli, "connection", "up", connection],
                capture_output=True,
                timeout=60,
                check=False,
            )

        threading.Thread(target=reactivate, name="network-apply", daemon=True).start()


def name_ok(address: str) -> bool:
    return not address.startswith("127.")


WILDCARD_BINDS = ("0.0.0.0", "::", "")  # noqa: S104 - names of "every address", compared


def _loopback(bind: str) -> bool:
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Served:
    """Where a service of the box can be reached: the addresses its socket answers on and the
    names that lead there (none on loopback: no other device reaches it)."""

    addresses: tuple[str, ...]
    names: tuple[str, ...]
    port: int

    @property
    def urls(self) -> tuple[str, ...]:
        suffix = "" if self.port == 80 else f":{self.port}"
        hosts = (*self.names, *(f"[{a}]" if ":" in a else a for a in self.addresses))
        return tuple(f"http://{host}{suffix}/" for host in hosts)


def served(bind: str, port: int, info: NetworkInfo, name: str = "") -> Served:
    """What a socket bound to `bind` serves: every address of the box for an any-address bind,
    else only the bound one (in emulation, loopback: the box's LAN address is not served).
    `name` (the mDNS name, else `<hostname>.local`) is given only when the LAN is served."""
    if bind in WILDCARD_BINDS:
        found = (a.split("/")[0] for a in (info.address, *info.addresses) if a)
        addresses = tuple(dict.fromkeys(a for a in found if not _loopback(a)))
    else:
        addresses = ("127.0.0.1",) if bind == "localhost" else (bind,)
    lan = any(not _loopback(a) for a in addresses)
    name = name or (f"{info.hostname}.local" if info.hostname else "")
    return Served(addresses, (name,) if lan and name else (), port)


class EmulatedNetwork(SystemNetwork):
    """Reads the machine it runs on; a requested change is only recorded in a file."""

    def __init__(self, record: Path) -> None:
        super().__init__()
        self.record = record

    def read(self) -> NetworkInfo:
        info = super().read()
        try:
            wanted = json.loads(self.record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            wanted = None
        note = "emulated: changes are recorded, not applied"
        if wanted:
            note += f" (requested: {wanted.get('address')} via {wanted.get('gateway')})"
        return NetworkInfo(**{**asdict(info), "note": note, "mode": info.mode})

    def apply(self, static: StaticAddress | None) -> None:
        self.record.parent.mkdir(parents=True, exist_ok=True)
        self.record.write_text(json.dumps(asdict(static) if static else {}), encoding="utf-8")
        LOG.info("emulated network change recorded in %s: %s", self.record, static or "DHCP")
