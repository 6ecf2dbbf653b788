"""The box's data directory: every file and folder the box keeps, named in one place.

    objects/          received instances, by hashes of their UIDs (dicom/spool.py)
    tmp/              instances still arriving; emptied at start-up
    conflicts/        a second, different copy of an instance already held
    quarantine/       what arrived but could not be stored as an instance
    index.sqlite      studies, instances, uploads (store/index.py)
    jobs/             download jobs' exports (node/)
    jobs.sqlite       download jobs and their timelines
    identity/         the node's key, certificate, pinned hub CA, enrolment (uplink/identity.py)
    policy.json       the last good federation policy from the hub (uplink/policy.py)
    status.json       the running box's health, for `afra status` and the panel (health/)
    settings.toml     the setup wizard's settings overlay (config.py)
    update/           the update record and staged bundles (update/)
    audit/trail.sqlite  the audit trail (audit/)
    web/              the setup wizard's state: setup code and admin password hashes,
                      session key, progress, lockout, sessions, its audit log (afra_web)
    box-id            the id on the box's label; outlives a factory reset (system/provision.py)
    provision/        a card's provisioning, moved here at boot, taken at the first start
    hub/              the reference hub's data, for `afra emulate` only

Code asks `DataDir(root).index` rather than writing `root / "index.sqlite"`, the way Home
Assistant's `hass.config.path(...)` names its files: a newcomer finds the layout here, and a
name changes in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

OBJECTS = "objects"
TMP = "tmp"
CONFLICTS = "conflicts"
QUARANTINE = "quarantine"
INDEX = "index.sqlite"
JOBS = "jobs"
JOBS_DB = "jobs.sqlite"
IDENTITY = "identity"
POLICY = "policy.json"
STATUS = "status.json"
OVERLAY = "settings.toml"
UPDATE = "update"
AUDIT = "audit"
WEB = "web"
BOX_ID = "box-id"
INBOX = "provision"
EMULATED_HUB = "hub"
HEALTH_PROBE = ".health-probe"
# Inside web/: the two files the firmware itself reads (the rest is the web package's).
SETUP_CODE_HASH = "setup-code.hash"
ADMIN_HASH = "admin.hash"


@dataclass(frozen=True)
class DataDir:
    """The layout under one data directory (`box.data_dir`); paths only, nothing is made."""

    root: Path

    def path(self, *names: str) -> Path:
        return self.root.joinpath(*names)

    # -- the engine: what a factory reset keeps ----------------------------------------------
    @property
    def objects(self) -> Path:
        return self.root / OBJECTS

    @property
    def tmp(self) -> Path:
        return self.root / TMP

    @property
    def conflicts(self) -> Path:
        return self.root / CONFLICTS

    @property
    def quarantine(self) -> Path:
        return self.root / QUARANTINE

    @property
    def index(self) -> Path:
        return self.root / INDEX

    @property
    def jobs(self) -> Path:
        return self.root / JOBS

    @property
    def jobs_db(self) -> Path:
        return self.root / JOBS_DB

    @property
    def audit_trail(self) -> Path:
        return self.root / AUDIT / "trail.sqlite"

    @property
    def update(self) -> Path:
        return self.root / UPDATE

    @property
    def status(self) -> Path:
        return self.root / STATUS

    @property
    def health_probe(self) -> Path:
        return self.root / HEALTH_PROBE

    @property
    def box_id(self) -> Path:
        return self.root / BOX_ID

    @property
    def inbox(self) -> Path:
        return self.root / INBOX

    @property
    def emulated_hub(self) -> Path:
        return self.root / EMULATED_HUB

    # -- configuration and credentials: what a factory reset removes --------------------------
    @property
    def identity(self) -> Path:
        return self.root / IDENTITY

    @property
    def policy(self) -> Path:
        return self.root / POLICY

    @property
    def overlay(self) -> Path:
        return self.root / OVERLAY

    @property
    def web(self) -> Path:
        return self.root / WEB

    @property
    def setup_code_hash(self) -> Path:
        """The label's setup code, hashed: kept by a factory reset (it is printed on the box)."""
        return self.root / WEB / SETUP_CODE_HASH

    @property
    def admin_hash(self) -> Path:
        return self.root / WEB / ADMIN_HASH


# What a factory reset removes (panel/reset.py), and inside those what it keeps.
RESET_ENTRIES = (IDENTITY, WEB, OVERLAY, POLICY)
RESET_KEEPS = {WEB: (SETUP_CODE_HASH,)}
