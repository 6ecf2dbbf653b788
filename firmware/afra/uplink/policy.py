"""The federation policy this node runs: the last good one, kept across restarts and outages.

A policy is applied whole or not at all: it is validated as a medix Policy, written to a temp
file, fsynced and renamed over `policy.json`. An older or equal version is ignored.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from medix.durable import write_public
from medix.models import Policy

LOG = logging.getLogger("afra.policy")

DEFAULT_POLICY = Policy(version=0)


class PolicyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._policy = self._load()

    def _load(self) -> Policy:
        try:
            return Policy.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return DEFAULT_POLICY
        except (OSError, ValidationError, ValueError) as exc:
            LOG.error("stored policy %s is unusable (%s); running the default", self.path, exc)
            return DEFAULT_POLICY

    @property
    def current(self) -> Policy:
        with self._lock:
            return self._policy

    def apply(self, policy: Policy) -> bool:
        """Adopt a newer policy; True when it replaced the running one."""
        with self._lock:
            if policy.version <= self._policy.version:
                return False
            write_public(self.path, json.dumps(policy.model_dump(mode="json"), indent=2).encode())
            self._policy = policy
        LOG.info("policy version %d applied", policy.version)
        return True


def in_window(policy: Policy, when: float) -> bool:
    """True when bulk uploads may run at `when` (local time): always, or inside a window."""
    if not policy.offpeak_windows:
        return True
    local = datetime.fromtimestamp(when)
    minute = local.hour * 60 + local.minute
    for window in policy.offpeak_windows:
        start = int(window.start[:2]) * 60 + int(window.start[3:])
        end = int(window.end[:2]) * 60 + int(window.end[3:])
        if start <= end and start <= minute < end:
            return True
        if start > end and (minute >= start or minute < end):  # spans midnight
            return True
    return False
