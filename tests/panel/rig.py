"""A front panel on gpiozero's mock pins, driven by a fake clock, and ways to watch its LEDs."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpiozero.pins.mock import MockFactory

from afra.health import Health
from afra.panel import Panel, SetupWindow, load_layout
from tests.fakes import FakeClock

LAYOUT = load_layout()
GPIO = {name: led.gpio for name, led in LAYOUT.leds.items()}
BUTTON = LAYOUT.button.gpio
STEP = 0.01  # how finely the tests watch the LEDs (the patterns are multiples of 0.05 s)


@dataclass
class Rig:
    pins: MockFactory
    clock: FakeClock
    health: Health
    window: SetupWindow
    panel: Panel
    announced: list[str] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)

    def lit(self, led: str) -> bool:
        """What a person sees: the level on the LED's pin."""
        return bool(self.pins.pin(f"GPIO{GPIO[led]}").state)

    def leds(self) -> dict[str, bool]:
        return {name: self.lit(name) for name in GPIO}

    def watch(self, led: str, seconds: float) -> list[bool]:
        """The LED's level every STEP for `seconds`, the clock moving and the panel ticking."""
        seen = []
        for _ in range(round(seconds / STEP)):
            self.panel.tick()
            seen.append(self.lit(led))
            self.clock.advance(STEP)
        return seen

    def press(self) -> None:
        self.pins.pin(f"GPIO{BUTTON}").drive_low()  # the button shorts the pin to ground
        self.panel.tick()

    def release(self) -> None:
        self.pins.pin(f"GPIO{BUTTON}").drive_high()
        self.panel.tick()

    def hold(self, seconds: float) -> None:
        self.press()
        self.clock.advance(seconds)
        self.release()


def make_rig(address: str | None = "192.168.1.37") -> Rig:
    clock = FakeClock()
    health = Health(clock)
    window = SetupWindow(health, clock=clock, duration=600)
    pins = MockFactory()
    panel = Panel(
        LAYOUT, health, clock=clock, setup_window=window, pin_factory=pins, address=lambda: address
    )
    rig = Rig(pins, clock, health, window, panel)
    panel.on_announce = lambda: rig.announced.append("announce")
    panel.on_factory_reset = lambda: rig.resets.append("reset")
    panel.attach()
    return rig


def runs(samples: list[bool]) -> list[tuple[bool, float]]:
    """Consecutive equal levels as (level, seconds)."""
    out: list[tuple[bool, float]] = []
    for level in samples:
        if out and out[-1][0] == level:
            out[-1] = (level, round(out[-1][1] + STEP, 2))
        else:
            out.append((level, STEP))
    return out


def flashes(samples: list[bool]) -> int:
    """How many times the LED came on."""
    return sum(1 for i, s in enumerate(samples) if s and (i == 0 or not samples[i - 1]))
