"""What the dashboard shows, read from the running appliance as plain JSON-ready data.

Parts built by other issues are read defensively, by name, and shown when present: the health
model and front panel (`appliance.health.snapshot()`, `appliance.panel.snapshot()`), the
button's setup window (`appliance.setup_window`), download jobs (`appliance.jobs`) and the
diagnostics bundle (`afra.node.diagnostics`). Without them the page says what it can from the
index, the uplink and the disk.
"""

from __future__ import annotations

import dataclasses
import html
import io
import json
import logging
import shutil
import zipfile
from typing import Any

from afra import __version__
from afra.app import Appliance
from afra.update.selftest import read_report

LOG = logging.getLogger("afra.web")

CHART_BINS = 12
CHART_BIN_S = 300.0  # twelve five-minute bars: the last hour


# -- health and the front panel ---------------------------------------------------------------


def health(appliance: Appliance) -> dict[str, Any]:
    """{"state", "summary", "reasons": [text, ...]} from the health model."""
    snapshot = appliance.health.snapshot()
    return {
        "state": snapshot["state"],
        "summary": snapshot["summary"],
        "reasons": [r["detail"] or r["condition"] for r in snapshot["reasons"]],
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


def _led(
    name: str, colour: str, pattern: str, steps: list[float], origin: float, lit: bool
) -> dict[str, Any]:
    return {
        "name": name,
        "colour": colour,
        "pattern": pattern,
        "steps": steps,
        "origin": origin,
        "lit": lit,
    }


def leds(appliance: Appliance, current: dict[str, Any]) -> list[dict[str, Any]]:
    """The front panel's LEDs: pattern, its on/off steps and when it started (wall clock),
    so the page can blink them as the box does."""
    if appliance.panel is not None:
        return [
            _led(name, led["colour"], led["pattern"], led["steps"], led["origin"], led["lit"])
            for name, led in appliance.panel.snapshot()["leds"].items()
        ]
    # No panel configured: the page shows what the health and the uplink say.
    now = appliance.clock.time()
    reach = appliance.uplink.hub_reachable
    health_pattern = _DERIVED_HEALTH_LED.get(current["state"], "slow")
    uplink_pattern = "steady" if reach else ("off" if reach is None else "slow")
    return [
        _led("health", "green", health_pattern, _PATTERNS[health_pattern], now, True),
        _led("uplink", "blue", uplink_pattern, _PATTERNS[uplink_pattern], now, reach is True),
    ]


def setup_window(appliance: Appliance) -> dict[str, Any]:
    window = appliance.setup_window
    if window is None:
        return {"available": False, "open": False, "remaining": 0}
    remaining = window.remaining()
    return {"available": True, "open": remaining > 0, "remaining": int(remaining)}


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


# How far back the dashboard looks for the last delivery, nearest first: the index is asked for
# the deliveries of a window, and a busy box finds one in the first.
_DELIVERY_WINDOWS_S = (3600.0, 86400.0, 31 * 86400.0)


def last_delivery(appliance: Appliance) -> float | None:
    """When the box last delivered a study to the hub (the index keeps it across restarts),
    or None when it never has."""
    now = appliance.clock.time()
    for window in (*_DELIVERY_WINDOWS_S, now):
        found = appliance.index.delivered_since(now - window)
        if found:
            return max(at for at, _size in found)
    return None


def hub(appliance: Appliance) -> dict[str, Any]:
    """The enrolment, whether the uplink reached the hub since the box started (None: not
    tried yet) and when the hub was last reached with a study (`last_reached`)."""
    identity = appliance.identity
    info: dict[str, Any] = {
        "enrolled": identity.enrolled,
        "url": "",
        "node_id": "",
        "reachable": appliance.uplink.hub_reachable,
        "last_reached": None,
    }
    if identity.enrolled:
        try:
            info["url"] = identity.hub_url
            info["node_id"] = identity.node_id
        except Exception:
            info["enrolled"] = False
        info["last_reached"] = last_delivery(appliance)
    return info


def update(appliance: Appliance) -> dict[str, Any]:
    """The running system and where its last update stands (afra.update)."""
    release = appliance.release
    info: dict[str, Any] = {
        "available": appliance.updates is not None and appliance.updates.available,
        "version": release.version,
        "slot": release.slot or "",
        "state": "idle",
        "busy": False,
        "target": "",
        "previous": "",
        "source": "",
        "progress": 0,
        "message": "",
        "at": 0.0,
        "selftest": None,
    }
    if appliance.updates is None:
        return info
    current = appliance.updates.status
    info.update(
        state=current.state,
        busy=current.busy,
        target=current.version,
        previous=current.from_version,
        source=current.source,
        progress=current.progress,
        message=current.message,
        at=current.at,
        selftest=read_report(appliance.updates.directory),
    )
    return info


def sightings(appliance: Appliance) -> list[dict[str, Any]]:
    return [dataclasses.asdict(s) for s in appliance.dicom.sightings.all()]


def jobs(appliance: Appliance, limit: int = 20) -> list[dict[str, Any]] | None:
    """Download jobs with their timelines, newest first; None when the box has no downloads."""
    if appliance.downloads is None:
        return None
    return [job.as_dict() for job in appliance.downloads.jobs(limit)]


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
        "update": update(appliance),
        "time": appliance.clock.time(),
    }


# -- the diagnostics bundle -------------------------------------------------------------------


def diagnostics_bundle(appliance: Appliance) -> bytes:
    """A zip for the support desk: the firmware's diagnostics (PACS echo, hub DNS and TLS,
    clock, disk, certificates, recent log) when it has them, and what the dashboard shows.
    No patient data: no study list, no audit log."""
    firmware: Any
    try:
        firmware = appliance.diagnostics()
    except Exception as exc:
        LOG.exception("the firmware's diagnostics failed")
        firmware = {"error": f"{exc.__class__.__name__}: {exc}"}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("version.txt", f"afra {__version__}, system {appliance.release.version}\n")
        bundle.writestr("diagnostics.json", json.dumps(firmware, indent=2, default=str))
        bundle.writestr("status.json", json.dumps(snapshot(appliance), indent=2, default=str))
        bundle.writestr(
            "config.json", json.dumps(appliance.config.model_dump(mode="json"), indent=2)
        )
        bundle.writestr("throughput.json", json.dumps(throughput(appliance), indent=2))
    return buffer.getvalue()
