"""The command channel: what the hub asks of this node, over a long poll the node opens.

The hub never connects to the node (it sits behind the center's firewall). This thread keeps
one `GET /commands?wait=N` open, hands each command to the handler registered for its type,
and posts the result back. A type with no handler is answered with an error result, so the
hub's user hears "not supported" instead of waiting forever. Handlers are plain functions
(args -> result dict); a raised exception becomes an error result.

This module is transport only: it knows no command but by its type. The handlers are
registered at the composition root (`afra.app.Appliance.command_channel`), beside the
services they call, as pynetdicom takes `(evt.EVT_C_STORE, handler)` pairs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from pydantic import ValidationError

from afra.clock import Clock
from afra.uplink.client import HubClient, HubError
from medix.models import Command, CommandResult

LOG = logging.getLogger("afra.commands")

Handler = Callable[[dict[str, object]], dict[str, object]]

LONG_POLL_S = 25
# How long stop() waits for the poll thread. A long poll in flight cannot be interrupted
# (requests offers no way), so the thread is left to end when its poll returns; it then
# handles nothing, and the hub sends those commands again (it re-delivers unanswered ones).
STOP_WAIT_S = 2.0


class CommandChannel:
    def __init__(
        self,
        client: HubClient,
        *,
        clock: Clock,
        handlers: Iterable[tuple[str, Handler]] = (),
        retry_s: float = 10.0,
        wait_s: int = LONG_POLL_S,
    ) -> None:
        self.client = client
        self.clock = clock
        self.retry_s = retry_s
        self.wait_s = wait_s
        self.handlers: dict[str, Handler] = dict(handlers)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self, command_type: str, handler: Handler) -> None:
        self.handlers[command_type] = handler

    def handle(self, command: Command) -> CommandResult:
        handler = self.handlers.get(command.type)
        if handler is None:
            return CommandResult(ok=False, error=f"{command.type!r} is not supported by this node")
        try:
            return CommandResult(ok=True, result=handler(dict(command.args)))
        except (ValueError, ValidationError) as exc:
            return CommandResult(ok=False, error=f"invalid arguments: {exc}")
        except Exception as exc:
            LOG.exception("command %s (%s) failed", command.id, command.type)
            return CommandResult(ok=False, error=f"failed: {exc.__class__.__name__}: {exc}")

    def poll_once(self, wait_s: int | None = None, stop: threading.Event | None = None) -> int:
        """One long poll; returns how many commands were handled."""
        batch = self.client.commands(self.wait_s if wait_s is None else wait_s)
        if stop is not None and stop.is_set():
            if batch.commands:
                LOG.info(
                    "stopping: %d hub command(s) left for the hub to send again",
                    len(batch.commands),
                )
            return 0
        for command in batch.commands:
            if stop is not None and stop.is_set():
                return 0  # the rest are sent again by the hub
            LOG.info("hub command %s: %s", command.id, command.type)
            self.client.post_result(command.id, self.handle(command))
        return len(batch.commands)

    def start(self) -> None:
        # Each thread has its own stop event: a thread still in its last long poll after a
        # stop() never resumes when the channel is started again.
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stop,), name="hub-commands", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT_S)
            self._thread = None

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.poll_once(stop=stop)
            except HubError as exc:
                if stop.is_set():
                    return
                LOG.debug("command poll failed: %s", exc)
                if self.clock.sleep(self.retry_s, stop):
                    return
            except Exception:
                if stop.is_set():
                    return
                LOG.exception("command poll failed")
                if self.clock.sleep(self.retry_s, stop):
                    return
