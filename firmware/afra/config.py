"""Typed settings of the appliance: defaults -> TOML file -> environment -> command line.

Every key is documented in docs/configuration.md. Loading either returns a whole, valid
`Config` or raises one `ConfigError` naming each bad key and what is wrong with it: the box
never starts half-configured.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

from afra import datadir
from afra.datadir import DataDir
from afra.errors import ConfigError

ENV_PREFIX = "AFRA__"
ENV_CONFIG_PATH = "AFRA_CONFIG"


def check_ae_title(value: str) -> str:
    """An AE title by the rules of PS3.5: 1-16 characters, no backslash, no control characters."""
    if not value.strip():
        raise ValueError("an AE title cannot be empty or only spaces")
    if len(value) > 16:
        raise ValueError(f"an AE title has at most 16 characters, this one has {len(value)}")
    if "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("an AE title cannot hold a backslash or control characters")
    if not value.isascii():
        raise ValueError("an AE title is plain ASCII (ISO 646)")
    return value.strip()


def check_network(value: str) -> str:
    """An IP address or a CIDR network; hostnames are refused so DNS cannot admit a peer."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IP address or network (CIDR such as 10.1.2.0/24); "
            "hostnames are not accepted so that a DNS change cannot admit a peer"
        ) from None
    return value


# Transfer syntaxes the box can store as they arrive (it never decodes pixel data), in the
# order it proposes them itself (docs/conformance.md). Left out: JPIP (the pixel data is a
# link to a server the hub cannot reach) and SMPTE ST 2110 (live video, not storage).
STORABLE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired; old archives)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction (Process 14 SV1)
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 Multi-component Lossless Only
    "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 Multi-component
    "1.2.840.10008.1.2.4.201",  # High-Throughput JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.202",  # High-Throughput JPEG 2000 with RPCL Lossless Only
    "1.2.840.10008.1.2.4.203",  # High-Throughput JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.100",  # MPEG2 Main Profile / Main Level
    "1.2.840.10008.1.2.4.100.1",  # Fragmentable MPEG2 Main Profile / Main Level
    "1.2.840.10008.1.2.4.101",  # MPEG2 Main Profile / High Level
    "1.2.840.10008.1.2.4.101.1",  # Fragmentable MPEG2 Main Profile / High Level
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 High Profile / Level 4.1
    "1.2.840.10008.1.2.4.102.1",  # Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.1
    "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1
    "1.2.840.10008.1.2.4.103.1",  # Fragmentable, the same
    "1.2.840.10008.1.2.4.104",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video
    "1.2.840.10008.1.2.4.104.1",  # Fragmentable, the same
    "1.2.840.10008.1.2.4.105",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video
    "1.2.840.10008.1.2.4.105.1",  # Fragmentable, the same
    "1.2.840.10008.1.2.4.106",  # MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2
    "1.2.840.10008.1.2.4.106.1",  # Fragmentable, the same
    "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main Profile / Level 5.1
    "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10 Profile / Level 5.1
)


def check_transfer_syntax(value: str) -> str:
    if value not in STORABLE_TRANSFER_SYNTAXES:
        raise ValueError(
            f"{value!r} is not a transfer syntax the box can store as it arrives "
            "(docs/conformance.md lists them)"
        )
    return value


AETitle = Annotated[str, AfterValidator(check_ae_title)]
Network = Annotated[str, AfterValidator(check_network)]
Port = Annotated[int, Field(ge=1, le=65535)]
ListenPort = Annotated[int, Field(ge=0, le=65535)]  # 0: the system picks a free port
Seconds = Annotated[float, Field(gt=0, le=86400)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BoxSettings(Section):
    name: str = Field("afra", min_length=1, max_length=63)
    data_dir: Path = Path("/var/lib/afra")
    log_level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")


class Peer(Section):
    """A DICOM node allowed to open associations to the box."""

    ae_title: AETitle
    host: Network


class DicomSettings(Section):
    ae_title: AETitle = "AFRA"
    bind: str = "0.0.0.0"  # noqa: S104 - the box serves the center's LAN
    port: ListenPort = 11112
    max_associations: int = Field(8, ge=1, le=64)
    max_pdu: int = Field(1048576, ge=4096, le=16777216)
    acse_timeout: Seconds = 30.0
    dimse_timeout: Seconds = 60.0
    network_timeout: Seconds = 60.0
    allow_any_peer: bool = False
    peers: tuple[Peer, ...] = ()
    # What the box accepts as an SCP (Orthanc's AcceptedTransferSyntaxes): by default every
    # syntax it stores as is. In each presentation context the first syntax the peer
    # proposes that is on this list is accepted: what the PACS holds stays as it is held.
    accepted_transfer_syntaxes: tuple[
        Annotated[str, AfterValidator(check_transfer_syntax)], ...
    ] = Field(STORABLE_TRANSFER_SYNTAXES, min_length=1)
    # Storage SOP classes the box does not know (private, vendor non-image objects, newer
    # than pynetdicom's list): accepted and carried as storage (Orthanc's
    # UnknownSopClassAccepted), unless this is false. SOP classes of other services
    # (query/retrieve, worklist, commitment, print, ...) are never accepted as storage.
    accept_unknown_sop_classes: bool = True
    # Processes serving accepted associations: the main one and receive_processes - 1
    # workers (afra.dicom.workers); 0: one per CPU core, at most 4.
    receive_processes: int = Field(1, ge=0, le=16)


class PacsSettings(Section):
    """The center's PACS, which the box queries (C-FIND) and retrieves from (C-MOVE/C-GET)."""

    ae_title: AETitle
    host: str = Field(min_length=1, max_length=253)
    port: Port = 104
    max_results: int = Field(1000, ge=1, le=100000)


class StorageSettings(Section):
    min_free_mb: int = Field(2048, ge=0)
    # Received data sets written with O_DIRECT where the filesystem takes it (less CPU: no
    # page-cache copy). False writes through the page cache, as before (docs/ARCHITECTURE.md).
    direct_writes: bool = True
    # On ext4 with a journal (found out at start), a received file and its name are made
    # durable by one fsync after the link; False: fsync, link, fsync the directory, on any
    # filesystem.
    one_flush: bool = True


class StudySettings(Section):
    stable_age: Seconds = 60.0
    pacs_count_wait: float = Field(600.0, ge=0, le=86400)
    scan_interval: Seconds = 5.0


class HubSettings(Section):
    """The Medix hub. Enrolment (`afra enrol`) records the hub's URL and pins its CA."""

    url: str = Field("", max_length=2048, pattern=r"^(https://\S+)?$")
    patient_url: str = Field("", max_length=2048, pattern=r"^(https?://\S+)?$")
    part_size_kb: int = Field(2048, ge=64, le=8192)
    compression_level: int = Field(3, ge=1, le=19)
    request_timeout: Seconds = 30.0
    heartbeat_interval: Seconds = 60.0
    command_poll_s: int = Field(25, ge=1, le=60)
    retry_base: Seconds = 5.0
    retry_cap: Seconds = 900.0


class DownloadSettings(Section):
    """Study downloads the hub asks for (docs/medix.md) and the webhook they report to."""

    max_running: int = Field(2, ge=1, le=8)
    # Webhook targets: https only, unless the emulation profile allows plain http.
    allow_http: bool = False
    # Hosts a webhook may name besides the enrolled hub's host and the policy's list.
    webhook_hosts: tuple[str, ...] = ()
    # Addresses normally refused (loopback, private, link-local, metadata) that are allowed
    # here explicitly, e.g. a hub on the center's own network.
    allow_addresses: tuple[Network, ...] = ()
    # Ports a webhook may use besides 443 and the enrolled hub's own port.
    webhook_ports: tuple[Port, ...] = ()
    webhook_timeout: Seconds = 15.0
    webhook_retry_base: Seconds = 1.0
    webhook_retry_cap: Seconds = 60.0
    webhook_give_up_s: Seconds = 3600.0
    # Deflate level of the zip's entries (0 stores them); compressed pixel data is stored.
    zip_level: int = Field(1, ge=0, le=9)
    # A finished job's zip is removed once the hub holds it; its record is kept this long.
    keep_jobs_days: int = Field(30, ge=1, le=3650)


class NodeApiSettings(Section):
    """The node-side HTTP API of the seed (/api/study/...): for a hub that can reach the box.

    Served over TLS with the node's enrolment certificate; the hub authenticates with the
    bearer token it gave at enrolment. Off by default: behind the center's firewall the hub
    sends the same requests as commands on the node's long poll."""

    enabled: bool = False
    bind: str = "0.0.0.0"  # noqa: S104 - reachable from the LAN when enabled
    port: ListenPort = 8444
    tls: bool = True


class WebSettings(Section):
    """The setup wizard and dashboard (web-setup/): where it listens, which names it answers."""

    enabled: bool = True
    bind: str = "0.0.0.0"  # noqa: S104 - the technician's phone is on the center's LAN
    port: ListenPort = 80
    # Host names served besides loopback, the box's hostname (and .local) and its addresses:
    # any other Host header is refused (DNS rebinding).
    hostnames: tuple[str, ...] = ()
    session_idle_minutes: int = Field(30, ge=1, le=1440)
    # "system": read the OS and apply a static address through NetworkManager (nmcli);
    # "emulated": read the OS, keep requested changes in data_dir/web/network.json only.
    network: str = Field("system", pattern="^(system|emulated)$")


class HealthSettings(Section):
    """The health checks (afra.health): how often they run and where warnings start."""

    check_interval: Seconds = 10.0
    disk_warning_percent: int = Field(90, ge=1, le=100)
    pacs_echo_interval: Seconds = 300.0
    cert_warning_days: int = Field(14, ge=0, le=365)


class PanelSettings(Section):
    """The front panel (afra.panel): LEDs and button on the GPIO header."""

    enabled: bool = True
    # "auto": gpiozero's default (real pins on a Pi; mock pins, logged, elsewhere); "mock".
    pin_factory: str = Field("auto", pattern="^(auto|mock)$")
    # Another panel file (pins, patterns); empty: the one shipped (hardware/panel.toml).
    layout: Path | None = None
    # How long the button's 3 s hold opens the setup window (proof of physical presence).
    setup_window: Seconds = 600.0


def check_mdns_name(value: str) -> str:
    """An instance name template: text with {name}, {id} and {ae} only."""
    try:
        value.format(name="n", id="i", ae="a")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"{value!r} is not a name template: use text with {{name}}, {{id}} and {{ae}} only "
            f"({exc})"
        ) from None
    if not value.strip():
        raise ValueError("the name template cannot be empty")
    return value


class MdnsSettings(Section):
    """mDNS / DNS-SD (afra.mdns): how the box shows up on the LAN."""

    enabled: bool = True
    # Instance name; {name} = box.name, {id} = the box's short id, {ae} = dicom.ae_title.
    name: Annotated[str, AfterValidator(check_mdns_name)] = Field("{name}-{id}", max_length=63)
    # Interface names or IPv4 addresses to advertise on; empty: every one except loopback.
    interfaces: tuple[str, ...] = ()
    address_check_interval: Seconds = 10.0


class UpdateSettings(Section):
    """System updates (afra.update): RAUC bundles from the hub's policy or the dashboard."""

    # Install what the hub's policy offers (a dashboard upload works either way).
    from_hub: bool = True
    max_bundle_mb: int = Field(1024, ge=16, le=4096)
    check_interval: Seconds = 60.0
    # A hub update that failed (download, install) is tried again this much later.
    retry_after: Seconds = 3600.0
    # How long the self-test waits for the box to come up, and on the first boot of an
    # update also for the hub, before it decides.
    selftest_timeout: Seconds = 1800.0
    selftest_hub_wait: Seconds = 300.0


class AuditSettings(Section):
    """The audit trail (afra.audit): kept on the box; sent on to a repository and the hub."""

    # An audit repository (IHE ATNA): syslog over TLS, RFC 5425. Empty host: none.
    syslog_host: str = Field("", max_length=253, pattern=r"^[A-Za-z0-9.:\-]*$")
    syslog_port: int = Field(6514, ge=1, le=65535)
    # The repository's CA (its certificate is checked against it), and the box's own
    # certificate and key when the repository asks for one (mutual TLS).
    syslog_ca_file: Path | None = None
    syslog_cert_file: Path | None = None
    syslog_key_file: Path | None = None
    to_hub: bool = True
    keep_records: int = Field(200_000, ge=1000, le=10_000_000)


class Config(Section):
    box: BoxSettings = BoxSettings()
    dicom: DicomSettings = DicomSettings()
    pacs: PacsSettings | None = None
    storage: StorageSettings = StorageSettings()
    study: StudySettings = StudySettings()
    hub: HubSettings = HubSettings()
    web: WebSettings = WebSettings()
    downloads: DownloadSettings = DownloadSettings()
    node_api: NodeApiSettings = NodeApiSettings()
    health: HealthSettings = HealthSettings()
    panel: PanelSettings = PanelSettings()
    mdns: MdnsSettings = MdnsSettings()
    update: UpdateSettings = UpdateSettings()
    audit: AuditSettings = AuditSettings()


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        shown = err.get("input")
        given = "" if isinstance(shown, dict | list) or shown is None else f" (given: {shown!r})"
        lines.append(f"  {key}: {msg}{given}")
    return "\n".join(lines)


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _parse_scalar(text: str) -> Any:
    """Read an override value as TOML (numbers, booleans, arrays), else as a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    parts = [p for p in dotted.split(".") if p]
    if not parts:
        raise ConfigError(f"invalid override {dotted!r}: expected section.key=value")
    tree: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        tree = {part: tree}
    return tree


def overrides_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """AFRA__DICOM__PORT=104 -> {"dicom": {"port": 104}}."""
    out: dict[str, Any] = {}
    for name, text in environ.items():
        if name.startswith(ENV_PREFIX):
            dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            out = _merge(out, _nest(dotted, _parse_scalar(text)))
    return out


def overrides_from_cli(assignments: Iterable[str]) -> dict[str, Any]:
    """["dicom.port=104"] -> {"dicom": {"port": 104}}."""
    out: dict[str, Any] = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"invalid override {item!r}: expected section.key=value")
        out = _merge(out, _nest(key.strip(), _parse_scalar(text.strip())))
    return out


OVERLAY_NAME = datadir.OVERLAY


def _read_overlay(data: Mapping[str, Any]) -> tuple[dict[str, Any], Path]:
    """The settings the setup wizard saved in `<data_dir>/settings.toml` (above the file,
    below the environment and the command line); empty when there are none."""
    box = data.get("box")
    data_dir = box.get("data_dir") if isinstance(box, Mapping) else None
    path = DataDir(Path(str(data_dir) if data_dir else BoxSettings().data_dir)).overlay
    try:
        overlay = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, path
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"saved settings {path} cannot be read: {exc}") from None
    if "box" in overlay and "data_dir" in overlay["box"]:
        raise ConfigError(f"saved settings {path} cannot move box.data_dir")
    return overlay, path


# The keys that name files or folders. In a configuration file a relative one is read
# against the file's own folder, so `afra --config /somewhere/afra.toml ...` finds the same
# data from any directory; on the command line and in the environment it is the user's own
# (the current directory's).
PATH_KEYS = (
    ("box", "data_dir"),
    ("panel", "layout"),
    ("audit", "syslog_ca_file"),
    ("audit", "syslog_cert_file"),
    ("audit", "syslog_key_file"),
)


def _resolve_paths(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    out = dict(data)
    for section, key in PATH_KEYS:
        values = out.get(section)
        if not isinstance(values, Mapping) or not isinstance(values.get(key), str):
            continue
        value = values[key]
        if value and not Path(value).is_absolute():
            out[section] = {**values, key: str((folder / value).resolve())}
    return out


def load_config(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cli_overrides: Iterable[str] = (),
) -> Config:
    """Build the whole configuration or raise one ConfigError that names every bad key."""
    environ = os.environ if environ is None else environ
    if path is None and environ.get(ENV_CONFIG_PATH):
        path = Path(environ[ENV_CONFIG_PATH])
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"configuration file {path} cannot be read: {exc}") from None
        data = _resolve_paths(data, path.parent)
    env = overrides_from_env(environ)
    cli = overrides_from_cli(cli_overrides)
    if env:
        source += " + environment"
    if cli:
        source += " + command line"
    overlay, overlay_path = _read_overlay(_merge(_merge(data, env), cli))
    if overlay:
        source += f" + {overlay_path}"
    data = _merge(_merge(_merge(data, overlay), env), cli)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
