"""Commands for nodes: the admin queues them, a node takes them on its long poll and
reports a result.

A command is checked against its type's arguments when queued. A poll waits (real time, at
most MAX_POLL_WAIT_S) until a command is due or the hub shuts down; queuing wakes every
waiting poll. A command delivered on a poll whose answer got lost is offered again after
REDELIVER_AFTER_S without a result; nodes recognise repeats by command id.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medix.clock import Clock
from medix.hub import schemas
from medix.hub.errors import HubError, validation_detail
from medix.hub.store import CommandRow, HubStore, NodeRow
from medix.models import (
    Command,
    CommandBatch,
    CommandResult,
    DownloadRequest,
    Policy,
    ReportStatusRequest,
)

MAX_POLL_WAIT_S = 60
REDELIVER_AFTER_S = 300.0


class Commands:
    """The command queue (the store's) and the condition long polls wait on."""

    def __init__(self, store: HubStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._queued = threading.Condition()
        self._closing = threading.Event()

    def release_polls(self) -> None:
        """Answer every long poll now and every later one at once (the hub is stopping)."""
        self._closing.set()
        with self._queued:
            self._queued.notify_all()

    def queue_command(self, node_id: str, type_: str, args: dict[str, object]) -> str:
        if self.store.node(node_id) is None:
            raise HubError(404, "No such node", node_id)
        try:
            order = schemas.CommandOrder.model_validate({"type": type_, "args": args})
            _check_command_args(order)
        except ValidationError as exc:
            raise HubError(422, "Invalid command", validation_detail(exc)) from exc
        command_id = uuid.uuid4().hex
        self.store.add_command(
            command_id, node_id, order.type, json.dumps(order.args), self.clock.time()
        )
        with self._queued:
            self._queued.notify_all()
        return command_id

    def poll_commands(self, node: NodeRow, wait: float) -> CommandBatch:
        """Commands due for `node`, waiting up to `wait` seconds (real time) for one."""
        deadline = time.monotonic() + max(0.0, min(wait, MAX_POLL_WAIT_S))
        # The fetch happens under the condition's lock, so a command queued between the
        # fetch and the wait still wakes this poll.
        with self._queued:
            while True:
                now = self.clock.time()
                rows = self.store.deliver_commands(node.id, now, now - REDELIVER_AFTER_S)
                remaining = deadline - time.monotonic()
                if rows or remaining <= 0 or self._closing.is_set():
                    break
                self._queued.wait(remaining)
        return CommandBatch(commands=tuple(_command_model(row) for row in rows))

    def command_result(self, node: NodeRow, command_id: str, result: CommandResult) -> None:
        command = self.store.command(command_id)
        if command is None or command.node_id != node.id:
            raise HubError(404, "No such command", command_id)
        # A repeated result (a retry after a lost answer) is accepted and the first one kept.
        self.store.set_command_result(
            command_id, self.clock.time(), result.ok, json.dumps(result.result), result.error
        )

    def node_commands(self, node_id: str) -> schemas.CommandList:
        if self.store.node(node_id) is None:
            raise HubError(404, "No such node", node_id)
        return schemas.CommandList(
            commands=tuple(_command_info(row) for row in self.store.node_commands(node_id))
        )


def _check_command_args(order: schemas.CommandOrder) -> None:
    """Validate a command's args against its type (ValidationError when they do not fit)."""
    if order.type == "download":
        DownloadRequest.model_validate(order.args)
    elif order.type == "report_status":
        ReportStatusRequest.model_validate(order.args)
    elif order.type == "apply_policy":
        Policy.model_validate(order.args)
    elif order.type == "locate":
        _LocateArgs.model_validate(order.args)
    elif order.type == "diagnostics":
        _NoArgs.model_validate(order.args)


class _LocateArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: int = Field(60, ge=1, le=3600)


class _NoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _command_model(row: CommandRow) -> Command:
    return Command.model_validate(
        {
            "id": row.id,
            "type": row.type,
            "args": json.loads(row.args_json),
            "issued_at": row.issued_at,
        }
    )


def _command_info(row: CommandRow) -> schemas.CommandInfo:
    return schemas.CommandInfo(
        id=row.id,
        node_id=row.node_id,
        type=row.type,
        args=json.loads(row.args_json),
        state=row.state,
        issued_at=row.issued_at,
        delivered_at=row.delivered_at,
        completed_at=row.completed_at,
        ok=row.ok,
        result=None if row.result_json is None else json.loads(row.result_json),
        error=row.error,
    )
