"""Composition root: builds the appliance from a Config and a few injected seams.

    build_appliance(config, *, clock=None, storage_root=None, pin_factory=None, hub=None)

Seams default to None (the real thing). Tests pass fakes here instead of patching globals.
`pin_factory` and `hub` are accepted now so later parts (front panel, uplink) plug in here.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afra.clock import Clock, SystemClock
from afra.config import Config
from afra.dicom.acceptor import Acceptor
from afra.dicom.header import read_header
from afra.dicom.receive import Receiver
from afra.dicom.scu import PacsClient, configure_pynetdicom
from afra.dicom.spool import Spool
from afra.errors import AfraError, InvalidInstanceError, StorageError
from afra.store.completion import StudyCompletion
from afra.store.index import Index
from afra.uplink.client import HubClient
from afra.uplink.commands import CommandChannel, apply_policy_handler
from afra.uplink.identity import NodeIdentity
from afra.uplink.policy import PolicyStore
from afra.uplink.worker import Uplink, UplinkSettings

LOG = logging.getLogger("afra")


@dataclass
class StartupReport:
    removed_partial: int = 0
    indexed_orphans: int = 0
    unreadable_orphans: int = 0
    missing_files: list[str] = field(default_factory=list)


@dataclass
class Appliance:
    config: Config
    clock: Clock
    spool: Spool
    index: Index
    receiver: Receiver
    dicom: Acceptor
    completion: StudyCompletion
    pacs: PacsClient | None
    identity: NodeIdentity
    policy: PolicyStore
    uplink: Uplink
    commands: CommandChannel | None = None
    pin_factory: Any = None
    hub: HubClient | None = None
    startup: StartupReport = field(default_factory=StartupReport)
    _started: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self.startup = recover(self.spool, self.index, self.clock)
            self.identity.ensure_key()
            self.dicom.start()
            self.completion.start()
            self.uplink.start()
            if self.commands is not None:
                self.commands.start()
            self._started = True

    def stop(self) -> None:
        with self._lock:
            if not self._started:
                return
            self.dicom.stop()
            self.completion.stop()
            self.uplink.stop()
            if self.commands is not None:
                self.commands.stop()
            self._started = False

    def close(self) -> None:
        self.stop()
        self.uplink.close()
        if self.hub is not None:
            self.hub.close()
        self.index.close()


def recover(spool: Spool, index: Index, clock: Clock) -> StartupReport:
    """Resume from what is on disk: drop partial receives, index files the index lacks."""
    report = StartupReport(removed_partial=spool.clean_tmp())
    known = index.all_paths()
    on_disk = set(spool.iter_objects())
    for rel in sorted(on_disk - known):
        try:
            header = read_header(spool.absolute(rel))
        except InvalidInstanceError as exc:
            report.unreadable_orphans += 1
            LOG.error("stored file %s cannot be read (%s); left in place for review", rel, exc)
            continue
        if rel != spool.instance_path(header.study_uid, header.sop_instance_uid):
            report.unreadable_orphans += 1
            LOG.error("stored file %s does not belong at its path; left for review", rel)
            continue
        size = spool.absolute(rel).stat().st_size
        index.add_instance(header, rel, size, clock.time(), calling_ae="")
        report.indexed_orphans += 1
    report.missing_files = sorted(known - on_disk)
    for rel in report.missing_files:
        LOG.error("indexed instance file %s is missing from the storage device", rel)
    if report.removed_partial or report.indexed_orphans:
        LOG.info(
            "start-up: removed %d partial receive(s), indexed %d instance(s) found on disk",
            report.removed_partial,
            report.indexed_orphans,
        )
    return report


def build_appliance(
    config: Config,
    *,
    clock: Clock | None = None,
    storage_root: Path | None = None,
    pin_factory: Any = None,
    hub: HubClient | None = None,
) -> Appliance:
    clock = clock or SystemClock()
    root = storage_root or config.box.data_dir
    try:
        root.mkdir(parents=True, exist_ok=True)
        spool = Spool(root)
    except OSError as exc:
        raise StorageError(f"storage root {root} is not usable: {exc}") from exc
    configure_pynetdicom(spool.tmp_dir)
    index = Index(root / "index.sqlite")
    receiver = Receiver(
        spool, index, min_free_bytes=config.storage.min_free_mb * 2**20, clock=clock
    )
    pacs = PacsClient(config.pacs, config.dicom, receiver=receiver) if config.pacs else None
    identity = NodeIdentity(root / "identity")
    if hub is None and identity.enrolled:
        try:
            hub = HubClient(identity, timeout=config.hub.request_timeout)
        except AfraError as exc:  # the box still receives; uploads wait for a repair
            LOG.error("the hub enrolment is unusable (%s); uploads are paused", exc)
    policy = PolicyStore(root / "policy.json")
    uplink = Uplink(
        index,
        spool,
        hub,
        policy=policy,
        clock=clock,
        settings=UplinkSettings(
            part_size=config.hub.part_size_kb * 1024,
            compression_level=config.hub.compression_level,
            retry_base=config.hub.retry_base,
            retry_cap=config.hub.retry_cap,
            heartbeat_interval=config.hub.heartbeat_interval,
        ),
    )
    commands = None
    if hub is not None:
        commands = CommandChannel(hub, clock=clock, wait_s=config.hub.command_poll_s)
        commands.register("apply_policy", apply_policy_handler(policy))
    return Appliance(
        config=config,
        clock=clock,
        spool=spool,
        index=index,
        receiver=receiver,
        dicom=Acceptor(config.dicom, receiver),
        completion=StudyCompletion(index, config.study, clock=clock, pacs=pacs),
        pacs=pacs,
        identity=identity,
        policy=policy,
        uplink=uplink,
        commands=commands,
        pin_factory=pin_factory,
        hub=hub,
    )
