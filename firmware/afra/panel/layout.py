"""The panel's data file (hardware/panel.toml): pins, parts, light patterns, button thresholds.

The file is the single source; the firmware ships a byte-for-byte copy as package data so an
installed box finds it without the source tree. `load_layout(None)` reads that copy;
`panel.layout` in the configuration names another file (another board revision).
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from afra.errors import ConfigError
from afra.health import STATES

LED_NAMES = ("health", "activity", "uplink")
SIGNAL = "signal"  # a mode entry meaning "the LED's own signal" (activity, uplink link)

Gpio = Annotated[int, Field(ge=0, le=27)]
HeaderPin = Annotated[int, Field(ge=1, le=40)]
Duration = Annotated[float, Field(ge=0, le=60)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class LedSpec(_Strict):
    purpose: str
    gpio: Gpio
    header_pin: HeaderPin
    ground_pin: HeaderPin
    colour: str
    wavelength_nm: int = Field(ge=350, le=1000)
    forward_volts: float = Field(gt=0, lt=3.3)
    resistor_ohm: int = Field(ge=47)

    def current_ma(self, logic_volts: float = 3.3) -> float:
        return 1000 * (logic_volts - self.forward_volts) / self.resistor_ohm


class ButtonSpec(_Strict):
    gpio: Gpio
    header_pin: HeaderPin
    ground_pin: HeaderPin
    pull: Literal["up"]
    series_resistor_ohm: int = Field(ge=0)
    debounce_s: Duration
    setup_hold_s: Duration
    reset_hold_s: Duration
    cancel_hold_s: Duration


class Signals(_Strict):
    activity_busy: str
    activity_hold_s: Duration
    uplink_ok: str
    uplink_behind: str
    uplink_down: str
    digit_gap_s: Duration


class Layout(_Strict):
    schema_version: int = Field(alias="schema", ge=1, le=1)
    board: dict[str, Any]
    leds: dict[str, LedSpec]
    button: ButtonSpec
    patterns: dict[str, tuple[Duration, ...]]
    modes: dict[str, dict[str, str]]
    signals: Signals

    @model_validator(mode="after")
    def _consistent(self) -> Layout:
        problems: list[str] = []
        if sorted(self.leds) != sorted(LED_NAMES):
            problems.append(f"leds must be exactly {', '.join(LED_NAMES)}")
        pins = [led.gpio for led in self.leds.values()] + [self.button.gpio]
        if len(set(pins)) != len(pins):
            problems.append("two parts share a GPIO")
        b = self.button
        if not b.debounce_s < b.setup_hold_s < b.reset_hold_s < b.cancel_hold_s:
            problems.append(
                "button thresholds must increase: debounce_s < setup_hold_s < reset_hold_s "
                "< cancel_hold_s"
            )
        for name, steps in self.patterns.items():
            if not steps or len(steps) % 2 or sum(steps) <= 0:
                problems.append(f"pattern {name}: an even number of on/off seconds, not all zero")
        missing = sorted(set(STATES) - set(self.modes))
        if missing:
            problems.append(f"modes lack the health state(s) {', '.join(missing)}")
        for state, leds in self.modes.items():
            if state not in STATES:
                problems.append(f"modes.{state}: not a health state")
            if sorted(leds) != sorted(LED_NAMES):
                problems.append(f"modes.{state}: give a pattern for each of {LED_NAMES}")
            for led, pattern in leds.items():
                if pattern != SIGNAL and pattern not in self.patterns:
                    problems.append(f"modes.{state}.{led}: no pattern named {pattern!r}")
        wanted = (
            self.signals.activity_busy,
            self.signals.uplink_ok,
            self.signals.uplink_behind,
            self.signals.uplink_down,
            *REQUIRED_PATTERNS,
        )
        problems += [f"no pattern named {p!r}" for p in wanted if p not in self.patterns]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def steps(self, pattern: str) -> tuple[float, ...]:
        return self.patterns[pattern]


# Patterns the panel itself uses (button feedback, announce), besides the mode table.
REQUIRED_PATTERNS: Sequence[str] = (
    "off",
    "press_announce",
    "press_setup",
    "press_reset",
    "digit",
    "digit_zero",
    "no_address",
)


def packaged_layout_path() -> Path:
    """The copy of hardware/panel.toml that ships inside the package."""
    return Path(str(resources.files("afra.panel").joinpath("panel.toml")))


def load_layout(path: Path | None = None) -> Layout:
    """Read and check a panel file; every problem is reported in one ConfigError."""
    path = path or packaged_layout_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"panel layout {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"panel layout {path} cannot be read: {exc}") from None
    try:
        return Layout.model_validate(data)
    except ValidationError as exc:
        lines = [f"invalid panel layout ({path}):"]
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {key}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("\n".join(lines)) from None
