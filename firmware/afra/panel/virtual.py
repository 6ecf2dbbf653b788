"""The virtual panel: the running box's status file shown to a person (`afra status`).

The running box writes `<data_dir>/status.json` (afra.health.HealthMonitor): the health
snapshot and, for each LED, its pattern and when the pattern started. Another process can so
tell whether each LED is lit *now* without asking the box.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from afra.panel.patterns import lit

LIT, DARK = "(*)", "( )"


def status_now(doc: dict[str, Any], now: float, *, running: bool) -> dict[str, Any]:
    """The status document with every LED's `lit` worked out for `now` (wall clock)."""
    out = copy.deepcopy(doc)
    out["running"] = running
    panel = out.get("panel")
    if isinstance(panel, dict):
        for led in (panel.get("leds") or {}).values():
            if not running:
                led["lit"] = False
                continue
            steps = [float(s) for s in led.get("steps", [])]
            led["lit"] = lit(steps, now - float(led.get("origin", now)), once=bool(led.get("once")))
    return out


def _clock(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "?"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds} s"


def render_status(doc: dict[str, Any], now: float) -> str:
    """`afra status` for people: the state and its reasons, then the panel as it is now."""
    lines: list[str] = []
    health = doc.get("health") or {}
    mdns = doc.get("mdns") or {}
    names = sorted(set((mdns.get("names") or {}).values()))
    who = f"AFRA {names[0]}" if names else "AFRA"
    if not doc.get("running"):
        lines.append(
            f"{who}: not running (last status written {_clock(doc.get('updated_at'))}; "
            f"it said {health.get('state', '?')})"
        )
        return "\n".join(lines)
    state = str(health.get("state", "?"))
    since = health.get("since")
    lines.append(
        f"{who}: {state.upper()} - {health.get('summary', '')} "
        f"(since {_clock(since)}, {_duration(now - since) if since else '?'})"
    )
    reasons = health.get("reasons") or []
    for r in reasons:
        lines.append(f"  {r['state']:<10} {r['condition']:<19} {r['detail']}")
    if not reasons:
        lines.append("  nothing to report")
    panel = doc.get("panel")
    if isinstance(panel, dict):
        lines.append(f"Front panel, now ({panel.get('pins', '?')} pins):")
        for name, led in (panel.get("leds") or {}).items():
            mark = LIT if led.get("lit") else DARK
            lines.append(f"  {name:<9} {led.get('colour', ''):<6} {mark} {led.get('pattern')}")
        button = panel.get("button") or {}
        if button.get("pressed"):
            lines.append(
                f"  button    held {button.get('held_s', 0):.0f} s: "
                f"release = {button.get('on_release')}"
            )
        window = panel.get("setup_window") or {}
        if window.get("open"):
            lines.append(f"  setup window open, {_duration(window.get('remaining_s', 0))} left")
        else:
            lines.append("  setup window closed")
        if panel.get("locate_remaining_s"):
            lines.append(f"  locating, {_duration(panel['locate_remaining_s'])} left")
    if mdns:
        if mdns.get("advertised"):
            services = ", ".join(
                f"{n} ({t.split('.')[0]})" for t, n in sorted((mdns.get("names") or {}).items())
            )
            lines.append(
                f"mDNS: {services} on {mdns.get('host')} {', '.join(mdns.get('addresses', []))}"
            )
        else:
            lines.append("mDNS: not advertised (no address yet, or starting)")
    return "\n".join(lines)
