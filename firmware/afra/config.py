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


class PacsSettings(Section):
    """The center's PACS, which the box queries (C-FIND) and retrieves from (C-MOVE/C-GET)."""

    ae_title: AETitle
    host: str = Field(min_length=1, max_length=253)
    port: Port = 104
    max_results: int = Field(1000, ge=1, le=100000)


class StorageSettings(Section):
    min_free_mb: int = Field(2048, ge=0)


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


class Config(Section):
    box: BoxSettings = BoxSettings()
    dicom: DicomSettings = DicomSettings()
    pacs: PacsSettings | None = None
    storage: StorageSettings = StorageSettings()
    study: StudySettings = StudySettings()
    hub: HubSettings = HubSettings()


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
    env = overrides_from_env(environ)
    cli = overrides_from_cli(cli_overrides)
    if env:
        source += " + environment"
    if cli:
        source += " + command line"
    data = _merge(_merge(data, env), cli)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
