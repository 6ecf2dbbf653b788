"""The front panel: three LEDs and one button, composed from gpiozero devices.

An `LEDBoard` (health, activity, uplink) and a `Button` are built on the injected pin factory
(the real one on a Pi, gpiozero's `MockFactory` in emulation and tests) when the panel is
attached at start, not when it is built, so a CLI command that builds an appliance next to a
running box does not fight it for the pins. gpiozero only moves pins here: which LED is lit
is decided on each `tick()` from the health state, the pattern table of the layout file and
the injected clock, so tests move a fake clock and read the mock pins instead of sleeping,
and `afra status` can tell what the LEDs show right now.

The button is judged on release by how long it was held (the clock again): announce, open
the setup window, factory reset, or nothing past the cancel threshold. While it is held, the
health LED blinks faster past each threshold so the user knows what releasing will do.
Actions run on the panel's thread, never in gpiozero's pin callback.
"""

from __future__ import annotations

import json
import logging
import threading
import warnings
from collections import deque
from collections.abc import Callable
from typing import Any

from gpiozero import BadPinFactory, Button, Device, LEDBoard, PinFactoryFallback
from gpiozero.pins.mock import MockFactory

from afra.clock import Clock
from afra.health import Health
from afra.panel.layout import LED_NAMES, SIGNAL, Layout
from afra.panel.patterns import announce_steps, lit
from afra.panel.setup_window import SetupWindow

LOG = logging.getLogger("afra.panel")

ANNOUNCE, SETUP, FACTORY_RESET, CANCEL = "announce", "setup", "factory_reset", "cancel"
PRESS_PATTERNS = {
    ANNOUNCE: "press_announce",
    SETUP: "press_setup",
    FACTORY_RESET: "press_reset",
    CANCEL: "off",
}
LOCATE_MAX_S = 3600


def pin_factory_for(choice: str) -> tuple[Any, bool]:
    """The pin factory `panel.pin_factory` asks for, and whether it drives real pins.

    "auto" is gpiozero's default (lgpio, RPi.GPIO, pigpio, native) and, on a machine without
    GPIO, the mock factory with one log line, so `afra run` works on any Linux host.
    """
    if choice == "mock":
        return MockFactory(), False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PinFactoryFallback)
            return Device._default_pin_factory(), True
    except (BadPinFactory, ImportError, OSError, RuntimeError) as exc:
        LOG.warning(
            "no GPIO on this machine (%s): the front panel runs on mock pins "
            "(see `afra status` for what it shows)",
            exc,
        )
        return MockFactory(), False


class Panel:
    def __init__(
        self,
        layout: Layout,
        health: Health,
        *,
        clock: Clock,
        setup_window: SetupWindow,
        pin_factory: Any = None,
        pin_choice: str = "auto",
        address: Callable[[], str | None] | None = None,
        tick_s: float = 0.02,
    ) -> None:
        self.layout = layout
        self.health = health
        self.clock = clock
        self.setup_window = setup_window
        self.address = address or (lambda: None)
        self.tick_s = tick_s
        self.pin_factory = pin_factory
        self.pin_choice = pin_choice
        self.real_pins = False
        # Wired by the composition root once the appliance exists.
        self.on_announce: Callable[[], None] | None = None
        self.on_factory_reset: Callable[[], object] | None = None
        self.board: Any = None  # gpiozero LEDBoard, once attached
        self.button: Any = None  # gpiozero Button, once attached
        self._owns_factory = False

        self._lock = threading.Lock()  # button state, shared with gpiozero's callback thread
        self._pressed_at: float | None = None
        self._actions: deque[tuple[str, float]] = deque()
        self._tick_lock = threading.Lock()  # one tick at a time (the thread, a test, status)
        self._last_activity = float("-inf")
        self._announce: tuple[float, tuple[float, ...]] | None = None
        self._shown: dict[str, tuple[str, float]] = {}  # led -> (pattern, since, monotonic)
        self._lit: dict[str, bool] = dict.fromkeys(LED_NAMES, False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the pins -----------------------------------------------------------------------------

    def attach(self) -> None:
        """Claim the pins: the LEDs (dark) and the button, on the pin factory."""
        if self.board is not None:
            return
        factory = self.pin_factory
        if factory is None:
            factory, self.real_pins = pin_factory_for(self.pin_choice)
            self._owns_factory = True
        leds = self.layout.leds
        board = LEDBoard(
            health=f"GPIO{leds['health'].gpio}",
            activity=f"GPIO{leds['activity'].gpio}",
            uplink=f"GPIO{leds['uplink'].gpio}",
            pin_factory=factory,
        )
        try:
            button = Button(
                f"GPIO{self.layout.button.gpio}",
                pull_up=True,
                bounce_time=None,  # bounces are shorter than debounce_s, ignored on release
                pin_factory=factory,
            )
        except Exception:
            board.close()
            raise
        button.when_pressed = self._pressed
        button.when_released = self._released
        self.pin_factory, self.board, self.button = factory, board, button
        self._shown.clear()

    def detach(self) -> None:
        """Release the pins (LEDs dark)."""
        button, board, self.button, self.board = self.button, self.board, None, None
        if button is not None:
            button.close()
        if board is not None:
            board.close()
        if self._owns_factory and self.pin_factory is not None:
            self.pin_factory.close()
            self.pin_factory, self._owns_factory = None, False

    # -- inputs -----------------------------------------------------------------------------

    def activity(self) -> None:
        """A study object was received or an upload part sent (the hot path: one assignment)."""
        self._last_activity = self.clock.monotonic()

    def locate(self, seconds: float = 60) -> float:
        """Show the locate pattern for `seconds` (the hub's `locate` command)."""
        if not 0 < seconds <= LOCATE_MAX_S:
            raise ValueError(f"locate lasts 1 to {LOCATE_MAX_S} seconds")
        self.health.set("locating", True, f"locate for {seconds:.0f} s", for_seconds=seconds)
        LOG.info("locate: showing the locate pattern for %.0f s", seconds)
        return seconds

    def _pressed(self) -> None:
        with self._lock:
            self._pressed_at = self.clock.monotonic()

    def _released(self) -> None:
        now = self.clock.monotonic()
        with self._lock:
            pressed_at, self._pressed_at = self._pressed_at, None
        if pressed_at is None:
            return
        held = now - pressed_at
        action = self.action_for(held)
        if action is not None:
            self._actions.append((action, held))

    def action_for(self, held: float) -> str | None:
        """What releasing the button after `held` seconds does (None: a bounce, ignored)."""
        b = self.layout.button
        if held < b.debounce_s:
            return None
        if held < b.setup_hold_s:
            return ANNOUNCE
        if held < b.reset_hold_s:
            return SETUP
        if held < b.cancel_hold_s:
            return FACTORY_RESET
        return CANCEL

    # -- the tick -----------------------------------------------------------------------------

    def tick(self) -> dict[str, bool]:
        """Run pending button actions, then set each LED for this moment; returns the LEDs."""
        with self._tick_lock:
            while self._actions:
                action, held = self._actions.popleft()
                self._run(action, held)
            now = self.clock.monotonic()
            for name, (pattern, steps, since, once) in self._choose(now).items():
                shown = self._shown.get(name)
                if shown is None or shown[0] != pattern:
                    self._shown[name] = (pattern, since)
                origin = self._shown[name][1]
                value = lit(steps, now - origin, once=once)
                if value != self._lit[name] or shown is None:
                    self._lit[name] = value
                    if self.board is not None:
                        getattr(self.board, name).value = value
            return dict(self._lit)

    def _choose(self, now: float) -> dict[str, tuple[str, tuple[float, ...], float, bool]]:
        """Each LED's pattern now: (name, steps, when it should start, once)."""
        layout = self.layout
        off = ("off", layout.steps("off"), now, False)
        with self._lock:
            pressed_at = self._pressed_at
        if pressed_at is not None:  # button feedback overrides everything
            held = now - pressed_at
            action = self.action_for(held) or ANNOUNCE
            pattern = PRESS_PATTERNS[action]
            return {
                "health": (pattern, layout.steps(pattern), now, False),
                "activity": off,
                "uplink": off,
            }
        if self._announce is not None:
            started, steps = self._announce
            if now - started < sum(steps):
                return {
                    "health": ("announce", steps, started, True),
                    "activity": off,
                    "uplink": off,
                }
            self._announce = None
        mode = layout.modes[self.health.state]
        chosen = {}
        for led in LED_NAMES:
            pattern = mode[led]
            if pattern == SIGNAL:
                pattern = self._signal(led, now)
            chosen[led] = (pattern, layout.steps(pattern), now, False)
        return chosen

    def _signal(self, led: str, now: float) -> str:
        signals = self.layout.signals
        if led == "activity":
            busy = now - self._last_activity < signals.activity_hold_s
            return signals.activity_busy if busy else "off"
        if self.health.is_active("unclaimed") or self.health.is_active("hub_unreachable"):
            return signals.uplink_down
        if self.health.is_active("queue_stale"):
            return signals.uplink_behind
        return signals.uplink_ok

    def _run(self, action: str, held: float) -> None:
        LOG.info("button held %.1f s: %s", held, action.replace("_", " "))
        try:
            if action == ANNOUNCE:
                layout = self.layout
                steps = announce_steps(
                    self.address(),
                    digit=layout.steps("digit"),
                    zero=layout.steps("digit_zero"),
                    gap=layout.signals.digit_gap_s,
                    no_address=layout.steps("no_address"),
                )
                self._announce = (self.clock.monotonic(), steps)
                if self.on_announce is not None:
                    self.on_announce()
            elif action == SETUP:
                self.setup_window.open(by="button")
            elif action == FACTORY_RESET:
                if self.on_factory_reset is None:
                    LOG.error("factory reset asked for, but nothing is wired to perform it")
                else:
                    self.on_factory_reset()
            else:
                LOG.warning(
                    "button held %.0f s, longer than %.0f s: nothing done (stuck button?)",
                    held,
                    self.layout.button.cancel_hold_s,
                )
        except Exception:
            LOG.exception("button action %s failed", action)

    # -- outputs --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What the panel shows now: each LED's pattern and state, the button, the windows."""
        with self._tick_lock:
            now = self.clock.monotonic()
            wall = self.clock.time()
            chosen = self._choose(now)
            leds = {}
            for name in LED_NAMES:
                pattern, steps, since, once = chosen[name]
                shown = self._shown.get(name)
                origin = shown[1] if shown is not None and shown[0] == pattern else since
                spec = self.layout.leds[name]
                leds[name] = {
                    "colour": spec.colour,
                    "gpio": spec.gpio,
                    "pattern": pattern,
                    "steps": list(steps),
                    "once": once,
                    "origin": wall - (now - origin),  # wall clock, so another process can
                    "lit": lit(steps, now - origin, once=once),  # evaluate "now" itself
                }
        with self._lock:
            pressed_at = self._pressed_at
        held = 0.0 if pressed_at is None else now - pressed_at
        return {
            "mode": self.health.state,
            "leds": leds,
            "button": {
                "pressed": pressed_at is not None,
                "held_s": round(held, 2),
                "on_release": self.action_for(held) if pressed_at is not None else None,
            },
            "setup_window": self.setup_window.snapshot(),
            "locate_remaining_s": round(self.health.remaining("locating"), 1),
            "pins": "gpio" if self.real_pins else "mock",
        }

    def signature(self) -> str:
        """Changes when a pattern changes (for the status file), not on every blink."""
        with self._tick_lock:
            shown = {name: pattern for name, (pattern, _) in self._shown.items()}
        return json.dumps(
            [shown, self.setup_window.is_open(), self._pressed_at is not None], sort_keys=True
        )

    # -- the thread --------------------------------------------------------------------------

    def start(self) -> None:
        """Attach to the pins and run the ticks on a thread."""
        self.attach()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run_ticks, name="panel", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the ticks and release the pins (LEDs dark)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._tick_lock:
            self.detach()

    def _run_ticks(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                LOG.exception("panel tick failed")
            if self.clock.sleep(self.tick_s, self._stop):
                return


def locate_handler(panel: Panel) -> Callable[[dict[str, object]], dict[str, object]]:
    """The hub's `locate` command: `{"seconds": 60}` -> the locate pattern; answers `{}`."""

    def handle(args: dict[str, object]) -> dict[str, object]:
        unknown = set(args) - {"seconds"}
        if unknown:
            raise ValueError(f"unknown argument(s) {', '.join(sorted(unknown))}")
        seconds = args.get("seconds", 60)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ValueError("seconds must be a number")
        panel.locate(float(seconds))
        return {}

    return handle
