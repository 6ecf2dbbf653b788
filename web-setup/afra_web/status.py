"""What the dashboard shows, read from the running appliance as plain JSON-ready data.

Parts built by other issues are read defensively, by name, and shown when present: the health
model and front panel (`appliance.health.snapshot()`, `appliance.panel.snapshot()`), the
button's setup window (`appliance.setup_window`), download jobs (`appliance.jobs`) and the
diagnostics bundle (`afra.node.diagnostics`). Without them the page says what it can from the
index, the uplink and the disk.
"""

from __future__ import annotations

import dataclasses
import enum
import html
import importlib
import io
import json
import logging
import shutil
import zipfile
from typing import Any

from afra import __version__
from afra.app import Appliance

LOG = logging.getLogger("afra.web")

CHART_BINS = 12
CHART_BIN_S = 300.0  # twelve five-minute bars: the last hour


def plain(value: Any) -> Any:
    """Dataclasses, pydantic models, enums and mappings as JSON-ready values."""
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return plain(dump(mode="json"))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _call(obj: Any, *names: str) -> Any:
    for name in names:
        method = getattr(obj, name, None)
        if callable(method):
            return method()
    return None


# -- health and the front panel ---------------------------------------------------------------


def _derived_health(appliance: Appliance) -> dict[str, Any]:
    """The worst of what the web app can see itself, until the health model answers."""
    reasons: list[str] = []
    state = "healthy"
    d = disk(appliance)
    if d["free"] < d["floor"]:
        state = "failed"
        reasons.append("disk at its floor: new studies are refused")
    if appliance.uplink.hub_reachable is False:
        state = "degraded" if state == "healthy" else state
        reasons.append("hub unreachable")
    if not appliance.identity.enrolled:
        state = "degraded" if state == "healthy" else state
        reasons.append("not enrolled with a hub")
    return {"state": state, "reasons": reasons}


def health(appliance: Appliance) -> dict[str, Any]:
    """{"state", "summary", "reasons": [text, ...]} from the health model (issue 5)."""
    model = getattr(appliance, "health", None)
    snapshot = None
    if model is not None:
        try:
            snapshot = plain(_call(model, "snapshot"))
        except Exception:
            LOG.exception("the health model did not answer")
    if not isinstance(snapshot, dict):
        return {**_derived_health(appliance), "summary": "", "source": "web"}
    reasons = []
    for reason in snapshot.get("reasons") or []:
        if isinstance(reason, dict):
            reasons.append(str(reason.get("detail") or reason.get("condition") or ""))
        else:
            reasons.append(str(reason))
    return {
        "state": str(snapshot.get("state") or "unknown").lower(),
        "summary": str(snapshot.get("summary") or ""),
        "reasons": [r for r in reasons if r],
        "source": "health",
    }


# Light patterns as (seconds on, off, ...), for the web app's own panel when the firmware has
# none (the real panel's patterns come with its snapshot).
_PATTERNS = {
    "steady": [1.0, 0.0],
    "slow": [1.0, 1.0],
    "fast": [0.15, 0.15],
    "off": [0.0, 1.0],
}
_DERIVED_HEALTH_LED = {"healthy": "steady", "degraded": "slow", "failed": "fast"}


def _led(name: str, colour: str, pattern: str, steps: Any, origin: Any, lit: Any) -> dict[str, Any]:
    try:
        steps = [float(x) for x in steps]
    except (TypeError, ValueError):
        steps = _PATTERNS.get(pattern, _PATTERNS["off"])
    return {
        "name": name,
        "colour": colour if colour.isalpha() else "green",
        "pattern": pattern,
        "steps": steps or _PATTERNS["off"],
        "origin": float(origin) if isinstance(origin, int | float) else 0.0,
        "lit": bool(lit),
    }


def leds(appliance: Appliance, current: dict[str, Any]) -> list[dict[str, Any]]:
    """The front panel's LEDs: pattern, its on/off steps and when it started (wall clock),
    so the page can blink them as the box does."""
    panel = getattr(appliance, "panel", None)
    snapshot = None
    if panel is not None:
        try:
            snapshot = plain(_call(panel, "snapshot"))
        except Exception:
            LOG.exception("the front panel did not answer")
    found = snapshot.get("leds") if isinstance(snapshot, dict) else None
    if isinstance(found, dict):
        out = []
        for name, led in found.items():
            led = led if isinstance(led, dict) else {"pattern": str(led)}
            out.append(
                _led(
                    str(name),
                    str(led.get("colour") or led.get("color") or "green"),
                    str(led.get("pattern") or "off"),
                    led.get("steps"),
                    led.get("origin"),
                    led.get("lit"),
                )
            )
        return out
    now = appliance.clock.time()
    reach = appliance.uplink.hub_reachable
    health_pattern = _DERIVED_HEALTH_LED.get(current["state"], "slow")
    uplink_pattern = "steady" if reach else ("off" if reach is None else "slow")
    return [
        _led("health", "green", health_pattern, _PATTERNS[health_pattern], now, True),
        _led("uplink", "blue", uplink_pattern, _PATTERNS[uplink_pattern], now, reach is True),
    ]


def setup_window(appliance: Appliance) -> dict[str, Any]:
    window = getattr(appliance, "setup_window", None)
    if window is None:
        return {"available": False, "open": False, "remaining": 0}
    try:
        is_open = bool(_call(window, "is_open"))
        remaining = float(_call(window, "remaining") or 0) if is_open else 0.0
    except Exception:
        LOG.exception("the setup window did not answer")
        return {"available": True, "open": False, "remaining": 0}
    return {"available": True, "open": is_open, "remaining": int(remaining)}


# -- queue, throughput, disk, hub -------------------------------------------------------------


def queue(appliance: Appliance) -> dict[str, Any]:
    count, oldest, size = appliance.index.queue_stats(appliance.clock.time())
    return {"waiting": count, "oldest_s": int(oldest), "bytes": size}


def throughput(appliance: Appliance) -> dict[str, Any]:
    now = appliance.clock.time()
    start = now - CHART_BINS * CHART_BIN_S
    received = [0] * CHART_BINS
    received_bytes = 0
    for at, size in appliance.index.received_since(start):
        slot = min(CHART_BINS - 1, max(0, int((at - start) // CHART_BIN_S)))
        received[slot] += 1
        received_bytes += size
    delivered = appliance.index.delivered_since(start)
    return {
        "bins": received,
        "instances": sum(received),
        "bytes": received_bytes,
        "studies_delivered": len(delivered),
        "bytes_delivered": sum(size for _at, size in delivered),
    }


def chart_svg(bins: list[int], label: str) -> str:
    """Twelve bars, oldest on the left; presentation attributes only (the CSP allows no
    inline styles)."""
    width, height, gap = 240, 60, 2
    bar_w = width / len(bins) - gap
    top = max(bins) or 1
    bars = []
    for i, value in enumerate(bins):
        h = 0 if value == 0 else max(2.0, (height - 12) * value / top)
        x = i * (bar_w + gap)
        bars.append(
            f'<rect x="{x:.1f}" y="{height - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
            f'fill="#0b3d91"><title>{value}</title></rect>'
        )
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{html.escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" stroke="#000" '
        f'stroke-width="1"/>{"".join(bars)}'
        f'<text x="{width}" y="10" text-anchor="end" font-size="10" fill="#000">max {top}</text>'
        "</svg>"
    )


def disk(appliance: Appliance) -> dict[str, Any]:
    usage = shutil.disk_usage(appliance.spool.root)
    return {
        "total": usage.total,
        "used": usage.used,
        "free": usage.free,
        "floor": appliance.config.storage.min_free_mb * 2**20,
        "percent": round(100 * usage.used / usage.total) if usage.total else 0,
    }


def hub(appliance: Appliance) -> dict[str, Any]:
    identity = appliance.identity
    info: dict[str, Any] = {
        "enrolled": identity.enrolled,
        "url": "",
        "node_id": "",
        "reachable": appliance.uplink.hub_reachable,
    }
    if identity.enrolled:
        try:
            info["url"] = identity.hub_url
            info["node_id"] = identity.node_id
        except Exception:
            info["enrolled"] = False
    return info


def sightings(appliance: Appliance) -> list[dict[str, Any]]:
    seen = getattr(appliance.dicom, "sightings", None)
    return [] if seen is None else [plain(s) for s in seen.all()]


def jobs(appliance: Appliance, limit: int = 20) -> list[dict[str, Any]] | None:
    """Download jobs (issue 4's `appliance.downloads`) with their timelines, newest first;
    None when the firmware has none."""
    source = getattr(appliance, "downloads", None) or getattr(appliance, "jobs", None)
    if source is None:
        return None
    try:
        found = source.jobs(limit) if callable(getattr(source, "jobs", None)) else source.list()
    except Exception:
        LOG.exception("the job list did not answer")
        return []
    out = []
    for job in found or []:
        as_dict = getattr(job, "as_dict", None)
        item = plain(as_dict() if callable(as_dict) else job)
        if not isinstance(item, dict):
            continue
        events = item.get("timeline") or item.get("events") or []
        item["timeline"] = [e if isinstance(e, dict) else {"name": str(e)} for e in events]
        out.append(item)
    return out


def snapshot(appliance: Appliance) -> dict[str, Any]:
    """Everything the dashboard polls."""
    current = health(appliance)
    return {
        "health": current,
        "leds": leds(appliance, current),
        "queue": queue(appliance),
        "disk": disk(appliance),
        "hub": hub(appliance),
        "sightings": sightings(appliance),
        "setup_window": setup_window(appliance),
        "time": appliance.clock.time(),
    }


# -- the diagnostics bundle -------------------------------------------------------------------


def _firmware_diagnostics(appliance: Appliance) -> Any:
    """The firmware's own bundle (issue 4: `appliance.diagnostics()`), when it has one."""
    collect = getattr(appliance, "diagnostics", None)
    if callable(collect):
        return plain(collect())
    try:
        module = importlib.import_module("afra.node.diagnostics")
    except ImportError:
        return None
    make = getattr(module, "collect", None)
    return plain(make(appliance)) if callable(make) else None


def diagnostics_bundle(appliance: Appliance) -> bytes:
    """A zip for the support desk: the firmware's diagnostics (PACS echo, hub DNS and TLS,
    clock, disk, certificates, recent log) when it has them, and what the dashboard shows.
    No patient data: no study list, no audit log."""
    try:
        firmware = _firmware_diagnostics(appliance)
    except Exception as exc:
        LOG.exception("the firmware's diagnostics failed")
        firmware = {"error": f"{exc.__class__.__name__}: {exc}"}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("version.txt", f"afra {__version__}\n")
        if firmware is not None:
            bundle.writestr("diagnostics.json", json.dumps(firmware, indent=2, default=str))
        bundle.writestr("status.json", json.dumps(snapshot(appliance), indent=2, default=str))
        bundle.writestr(
            "config.json", json.dumps(appliance.config.model_dump(mode="json"), indent=2)
        )
        bundle.writestr("throughput.json", json.dumps(throughput(appliance), indent=2))
    return buffer.getvalue()
