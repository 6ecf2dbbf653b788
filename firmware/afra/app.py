"""Composition root: builds the appliance from a Config and a few injected seams.

    build_appliance(config, *, clock=None, storage_root=None, pin_factory=None, hub=None,
                    rauc=None, release=None, usage=disk_usage)

Seams default to the real thing (the system clock, box.data_dir, gpiozero's pin factory,
the enrolled hub's client, RAUC, the running release, the storage device's free space);
tests pass fakes here instead of patching globals (docs/ARCHITECTURE.md, Seams). The hub's
commands get their handlers here, beside the services they call.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afra.audit import Actor, Audit, build_audit
from afra.clock import Clock, SystemClock
from afra.config import Config
from afra.datadir import DataDir
from afra.dicom.acceptor import Acceptor
from afra.dicom.header import read_header, source_ae_title
from afra.dicom.receive import Receiver
from afra.dicom.scu import PacsClient, configure_pynetdicom
from afra.dicom.spool import Spool, fsync_covers_new_names
from afra.dicom.workers import make_acceptor
from afra.errors import AfraError, InvalidInstanceError, StorageError
from afra.health import (
    DiskUsage,
    Health,
    HealthMonitor,
    StartupFiles,
    StartupFilesProbe,
    StatusPart,
    appliance_probes,
    disk_usage,
)
from afra.mdns import Advert, MdnsAdvertiser, advert_for, interface_addresses
from afra.node import diagnostics
from afra.node.api import create_node_api, tls_adapter
from afra.node.diagnostics import LogRing
from afra.node.jobs import DownloadManager
from afra.node.reports import ReportStatusService
from afra.node.webhook import WebhookGuard, WebhookPoster
from afra.panel import Panel, SetupWindow, load_layout, locate_handler
from afra.panel.reset import factory_reset
from afra.store.completion import StudyCompletion
from afra.store.index import Index
from afra.system.notify import Liveness
from afra.system.provision import box_id, ensure_box_id
from afra.system.release import Release, running_release
from afra.update.manager import UpdateManager
from afra.update.rauc import Rauc, RaucCli
from afra.uplink.client import HubClient, HubUnavailable
from afra.uplink.commands import CommandChannel, Handler
from afra.uplink.identity import NodeIdentity
from afra.uplink.policy import PolicyStore
from afra.uplink.worker import Uplink, UplinkSettings
from afra.wsgi import WsgiServer
from medix.models import (
    AuditEvent,
    DownloadRequest,
    Policy,
    ReportStatusRequest,
    UpdateReport,
)

LOG = logging.getLogger("afra")


@dataclass
class StartupReport:
    removed_partial: int = 0
    indexed_orphans: int = 0
    # Unindexed files whose UID the index holds under another study: kept in conflicts/.
    conflicting_orphans: int = 0
    # Files of delivered, purged studies whose removal a stop interrupted: removed.
    purged_leftovers: int = 0
    missing_files: list[str] = field(default_factory=list)
    # The unreadable, misplaced or refused files left in objects/ unindexed, each with what a
    # technician can do: with missing_files, health's files_need_review until each is resolved.
    left_in_place: list[tuple[str, str]] = field(default_factory=list)

    @property
    def unreadable_orphans(self) -> int:
        return len(self.left_in_place)


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
    downloads: DownloadManager | None = None
    reports: ReportStatusService | None = None
    node_api: WsgiServer | None = None
    log_ring: LogRing = field(default_factory=LogRing)
    pin_factory: Any = None
    hub: HubClient | None = None
    # Front panel, health and mDNS; built by build_appliance.
    health: Health = field(default_factory=lambda: Health(SystemClock()))
    setup_window: SetupWindow | None = None
    panel: Panel | None = None
    mdns: MdnsAdvertiser | None = None
    monitor: HealthMonitor | None = None
    release: Release = field(default_factory=running_release)
    updates: UpdateManager | None = None
    audit: Audit | None = None
    restart_requested: threading.Event = field(default_factory=threading.Event)
    on_restart: list[Callable[[], None]] = field(default_factory=list)
    startup: StartupReport = field(default_factory=StartupReport)
    # What of `startup` is still to review (health's files_need_review, the diagnostics).
    startup_files: StartupFilesProbe | None = None
    _started: bool = False
    _recovered: bool = False  # `startup` is this start's (diagnostics may come before _started)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            logging.getLogger("afra").addHandler(self.log_ring)
            self.startup = recover(self.spool, self.index, self.clock)
            self._recovered = True
            self.identity.ensure_key()
            ensure_box_id(self.spool.root, self.identity.key_path)  # kept for the host name
            if self.audit is not None:
                self.audit.record(
                    self.audit.events.application(
                        self.clock.time(), start=True, version=self.release.version
                    )
                )
                self.audit.start()
            self.dicom.start()
            self.completion.start()
            self.uplink.start()
            if self.downloads is not None:
                self.downloads.start()
            if self.node_api is not None:
                self.node_api.start()
            if self.commands is not None:
                self.commands.start()
            if self.updates is not None:
                self.updates.start()
            for part in (self.monitor, self.panel, self.mdns):
                if part is not None:
                    part.start()
            # Receiving workers (dicom.receive_processes) started with the DICOM port; until
            # they are ready the main process serves every association itself.
            if not self.dicom.wait_ready():
                LOG.warning("not every receiving worker is ready; the main process serves more")
            self._started = True

    def stop(self) -> None:
        with self._lock:
            if not self._started:
                return
            for part in (self.mdns, self.panel, self.monitor):  # mDNS says goodbye first
                if part is not None:
                    part.stop()
            if self.updates is not None:
                self.updates.stop()
            if self.commands is not None:
                self.commands.stop()
            if self.node_api is not None:
                self.node_api.stop()
            self.dicom.stop()
            if self.downloads is not None:
                self.downloads.stop()
            self.completion.stop()
            self.uplink.stop()
            if self.audit is not None:
                self.audit.record(
                    self.audit.events.application(
                        self.clock.time(), start=False, version=self.release.version
                    )
                )
                self.audit.stop()
            logging.getLogger("afra").removeHandler(self.log_ring)
            self._started = False

    def _policy_applied(self, policy: Policy) -> None:
        if self.audit is not None:
            hub = Actor(self.identity.hub_url if self.identity.enrolled else "the hub")
            what = f"policy version {policy.version} from the hub applied (a command)"
            self.audit.record(self.audit.events.configuration(self.clock.time(), hub, what))

    def liveness(self) -> list[Liveness]:
        """The threads the box cannot work without: systemd's watchdog is fed while they run."""
        checks: list[Liveness] = [
            ("the DICOM service", lambda: self.dicom.alive),
            ("study completion", lambda: self.completion.alive),
            ("the uplink", lambda: self.uplink.alive),
        ]
        if self.monitor is not None:
            monitor = self.monitor
            checks.append(("the health monitor", lambda: monitor.alive))
        return checks

    def update_report(self) -> UpdateReport | None:
        """Where the last system update stands, for the hub's heartbeat."""
        if self.updates is None or not self.updates.available:
            return None
        status = self.updates.status
        return UpdateReport(
            state=status.state,
            version=status.version[:48],
            progress=max(0, min(100, status.progress)),
            message=status.message[:500],
            at=status.at,
        )

    # -- what the wizard can change while the box runs -------------------------------------

    def advert(self) -> Advert:
        """The mDNS advert for the settings as they are now."""
        return advert_for(
            self.config,
            key_path=self.identity.key_path,
            dicom_port=lambda: self.dicom.port,
            data_dir=self.spool.root,
        )

    def current_pacs(self) -> tuple[Callable[[], int], str] | None:
        """The PACS as configured now (its C-ECHO and a label), for the health check."""
        settings = self.config.pacs
        if self.pacs is None or settings is None:
            return None
        return self.pacs.echo, f"{settings.ae_title}@{settings.host}:{settings.port}"

    def apply_dicom(self, config: Config) -> None:
        """Serve DICOM with `config.dicom` and query `config.pacs` from now on.

        A new port is opened before the old one closes, so a port already in use leaves the
        box serving as before (ServiceError); the same port is closed first, then reopened."""
        old = self.dicom
        new = make_acceptor(
            config.dicom,
            self.receiver,
            self.index,
            sightings=old.sightings,
            health=self.health,
            on_activity=self.panel.activity if self.panel is not None else None,
        )
        if old.running:
            same_socket = (old.settings.bind, old.settings.port) == (
                config.dicom.bind,
                config.dicom.port,
            ) and config.dicom.port != 0
            if same_socket:
                old.stop()
                try:
                    new.start()
                except Exception:
                    old.start()
                    raise
            else:
                new.start()
                old.stop()
        self.dicom = new
        pacs = (
            PacsClient(config.pacs, config.dicom, receiver=self.receiver) if config.pacs else None
        )
        self.pacs = pacs
        self.completion.pacs = pacs
        for part in (self.downloads, self.reports):
            if part is not None:
                part.pacs = pacs
        self.config = config
        if self.mdns is not None:
            self.mdns.refresh()  # the port and the AE title are in the advert
        LOG.info("DICOM settings applied: AE %r, port %d", config.dicom.ae_title, config.dicom.port)

    def command_channel(self, client: HubClient) -> CommandChannel:
        """The long poll for the hub's commands, with a handler for each command the box
        can do (Medix's command types); the channel itself knows none of them."""
        return CommandChannel(
            client,
            clock=self.clock,
            handlers=self.command_handlers(),
            wait_s=self.config.hub.command_poll_s,
        )

    def command_handlers(self) -> list[tuple[str, Handler]]:
        """(command type, handler) for each command this box can do now. A handler takes the
        command's args and returns its result; invalid args raise ValueError/ValidationError
        (the channel answers "invalid arguments")."""

        def apply_policy(args: dict[str, object]) -> dict[str, object]:
            # The whole policy or nothing; answers the version now running.
            new = Policy.model_validate(args)
            if self.policy.apply(new):
                self._policy_applied(new)
            return {"version": self.policy.current.version}

        def diagnostics(args: dict[str, object]) -> dict[str, object]:
            return self.diagnostics()  # the bundle itself is the result; the hub keeps it

        handlers: list[tuple[str, Handler]] = [
            ("apply_policy", apply_policy),
            ("diagnostics", diagnostics),
        ]
        downloads, reports = self.downloads, self.reports
        if downloads is not None:

            def download(args: dict[str, object]) -> dict[str, object]:
                # Answers DownloadAccepted; progress goes to the request's webhook.
                request = DownloadRequest.model_validate(args)
                return downloads.submit(request, source="command").model_dump(mode="json")

            handlers.append(("download", download))
        if reports is not None:

            def report_status(args: dict[str, object]) -> dict[str, object]:
                answer = reports.answer(ReportStatusRequest.model_validate(args))
                return answer.model_dump(mode="json")

            handlers.append(("report_status", report_status))
        if self.panel is not None:
            handlers.append(("locate", locate_handler(self.panel)))
        return handlers

    def attach_hub(self, client: HubClient) -> None:
        """After an enrolment (the wizard's hub step): use this hub from now on, no restart.

        Uploads, heartbeats, downloads and the command poll switch at once; the node API
        starts now if it is enabled and was not running."""
        old = self.hub
        self.hub = client
        self.uplink.client = client
        self.uplink.hub_reachable = None
        if self.downloads is not None:
            self.downloads.hub = client
        if self.commands is not None:
            self.commands.client = client  # the next long poll goes to the new hub
        else:
            self.commands = self.command_channel(client)
            if self._started:
                self.commands.start()
        if self.node_api is None and self.config.node_api.enabled and self.downloads is not None:
            self.node_api = _node_api(self.config, self.identity, self.downloads, self.reports)
            if self._started and self.node_api is not None:
                self.node_api.start()
        if old is not None and old is not client:
            old.close()

    def announce(self) -> None:
        """The button's short press: say where the box is (log, mDNS again; the panel blinks)."""
        names = ", ".join(self.mdns.names.values()) if self.mdns is not None else "off"
        LOG.info(
            "announce: addresses %s, mDNS %s, DICOM AE %s port %d",
            ", ".join(interface_addresses(self.config.mdns.interfaces)) or "none",
            names,
            self.config.dicom.ae_title,
            self.dicom.port,
        )
        if self.mdns is not None:
            self.mdns.announce()

    def factory_reset(self) -> list[str]:
        """The button's long hold: forget configuration and credentials (never studies),
        then restart so nothing keeps using them."""
        removed = factory_reset(self.spool.root)
        self.health.set("unclaimed", True, "factory reset: set the box up again")
        self.request_restart()
        return removed

    def request_restart(self) -> None:
        self.restart_requested.set()
        for hook in list(self.on_restart):
            hook()

    def diagnostics(self) -> dict[str, Any]:
        """The diagnostics bundle (afra.node.diagnostics), from the parts as they are now."""
        sources = diagnostics.Sources(
            box_name=self.config.box.name,
            clock=self.clock,
            identity=self.identity,
            policy_version=self.policy.current.version,
            pacs=self.current_pacs(),
            hub=self.hub,
            heartbeat=self.uplink.heartbeat_message,
            data_dir=self.spool.root,
            min_free_bytes=self.config.storage.min_free_mb * 2**20,
            cert_warning_days=self.config.health.cert_warning_days,
            queue=self.index,
            # Only the running box knows what its start left (`afra node diagnostics` is not it).
            files_to_review=self.startup_files.unresolved
            if self.startup_files is not None and self._recovered
            else None,
        )
        return diagnostics.collect(sources, self.log_ring)

    def close(self) -> None:
        self.stop()
        self.uplink.close()
        if self.downloads is not None:
            self.downloads.close()
        if self.hub is not None:
            self.hub.close()
        if self.audit is not None:
            self.audit.close()
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
            report.left_in_place.append((rel, UNREADABLE))
            LOG.error(
                "stored file %s cannot be read (%s); left in place for review (a copy of its "
                "instance sent again moves it to conflicts/)",
                rel,
                exc,
            )
            continue
        if rel != spool.instance_path(header.study_uid, header.sop_instance_uid):
            report.left_in_place.append((rel, MISPLACED))
            LOG.error(
                "stored file %s does not belong at its path; left for review (move it out of "
                "objects/)",
                rel,
            )
            continue
        path = spool.absolute(rel)
        size = path.stat().st_size
        # The sender's AE title is in the file (the box's own file meta): the self-test's
        # objects are still told apart, and audit records still name who sent them.
        calling_ae = source_ae_title(path)
        try:
            held = index.find_instance(header.sop_instance_uid)
            if held is not None and held.path == rel:
                # Its study was delivered and purged (purged studies' paths are not among the
                # known ones), and the stop came before this file was removed: removed now.
                spool.withdraw(rel)
                report.purged_leftovers += 1
                LOG.info("removed %s, left by the purge of its delivered study", rel)
                continue
            if held is not None:
                _orphan_held_elsewhere(
                    spool, index, clock, rel, header.sop_instance_uid, held.path, size, calling_ae
                )
                report.conflicting_orphans += 1
                continue
            index.add_instance(header, rel, size, clock.time(), calling_ae=calling_ae)
        except Exception:  # one file never stops the start: the rest is indexed, the box runs
            report.left_in_place.append((rel, NOT_INDEXED))
            LOG.exception(
                "stored file %s could not be indexed; left in place for review (sending its "
                "study again indexes it)",
                rel,
            )
            continue
        report.indexed_orphans += 1
    report.missing_files = sorted(known - on_disk)
    for rel in report.missing_files:
        LOG.error(
            "indexed instance file %s is missing from the storage device; its study cannot be "
            "delivered until it is sent again from the PACS",
            rel,
        )
    if report.removed_partial or report.indexed_orphans:
        LOG.info(
            "start-up: removed %d partial receive(s), indexed %d instance(s) found on disk",
            report.removed_partial,
            report.indexed_orphans,
        )
    return report


# What a file start-up leaves unindexed is, and what mends it (the diagnostics bundle's).
UNREADABLE = "stored, cannot be read: a copy of its instance sent again sets it aside"
MISPLACED = "stored where it does not belong: move it out of objects/ for review"
NOT_INDEXED = "stored, the index refused it: sending its study again indexes it"


def _orphan_held_elsewhere(
    spool: Spool,
    index: Index,
    clock: Clock,
    rel: str,
    uid: str,
    held_path: str,
    size: int,
    calling_ae: str,
) -> None:
    """An unindexed file whose SOP Instance UID the index holds under another path: another
    study's copy (two processes stored it under two studies at once). Kept in conflicts/, as
    a different copy sent again would be; the indexed one stays in its study. (A copy of the
    same data set would have the same path: the path is made of the study and the instance.)"""
    kept = spool.keep_conflict(spool.absolute(rel), uid)
    spool.withdraw(rel)  # its folder flushed: after a power cut the name does not come back
    missing = "" if spool.absolute(held_path).exists() else " (that copy is missing)"
    try:
        index.add_conflict(uid, kept, size, clock.time(), calling_ae)
    except Exception:
        LOG.exception(
            "stored file %s holds instance %s, which the index has in %s%s; moved to %s, "
            "but it could not be listed there",
            rel,
            uid,
            held_path,
            missing,
            kept,
        )
        return
    LOG.warning(
        "stored file %s holds instance %s, which the index has in %s%s with different "
        "content; kept as %s for review (afra conflicts)",
        rel,
        uid,
        held_path,
        missing,
        kept,
    )


def _node_api(
    config: Config,
    identity: NodeIdentity,
    downloads: DownloadManager,
    reports: ReportStatusService | None,
) -> WsgiServer | None:
    """The node-side HTTP API, when enabled and the box is enrolled (it needs the token)."""
    if not (config.node_api.enabled and identity.enrolled) or reports is None:
        return None
    return WsgiServer(
        create_node_api(identity, downloads, reports),
        bind=config.node_api.bind,
        port=config.node_api.port,
        name="afra-node-api",
        ssl_adapter=tls_adapter(identity) if config.node_api.tls else None,
        what="the node API (node_api.bind, node_api.port)",
        share_threads=False,  # its one client is the hub: all threads are the hub's
    )


def audit_source(root: Path, identity: NodeIdentity) -> str:
    """The box as the audit trail names it (AuditSourceID): its host name, afra-<id>."""
    try:
        return f"afra-{box_id(root, identity.key_path)}"
    except (AfraError, OSError, ValueError):
        return "afra"


class _HubAudit:
    """The hub as an audit destination: whichever client the box has now."""

    def __init__(self, client: Callable[[], HubClient | None]) -> None:
        self.client = client

    def post_audit(self, events: Sequence[AuditEvent]) -> int:
        client = self.client()
        if client is None:
            raise HubUnavailable("the box is not enrolled with a hub")
        return client.post_audit(events)


def build_appliance(
    config: Config,
    *,
    clock: Clock | None = None,
    storage_root: Path | None = None,
    pin_factory: Any = None,
    hub: HubClient | None = None,
    rauc: Rauc | None = None,
    release: Release | None = None,
    usage: Callable[[Path], DiskUsage] = disk_usage,
    one_flush: Callable[[Path], bool] = fsync_covers_new_names,
) -> Appliance:
    clock = clock or SystemClock()
    release = release or running_release()
    root = storage_root or config.box.data_dir
    layout = DataDir(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        spool = Spool(
            root,
            free_bytes=lambda: usage(root).free,
            direct_io=None if config.storage.direct_writes else False,  # None: probed
            one_flush=False,
        )
        # Probed on tmp/, where each link starts (objects/ shares its filesystem).
        spool.one_flush = config.storage.one_flush and one_flush(spool.tmp_dir)
    except OSError as exc:
        raise StorageError(f"storage root {root} is not usable: {exc}") from exc
    configure_pynetdicom(spool.tmp_dir)
    LOG.info(
        "storage %s: %s",
        root,
        "ext4 with a journal: a received object and its name made durable by one fsync"
        if spool.one_flush
        else "a received object made durable by fsync, link, fsync of its folder",
    )
    index = Index(layout.index, reserve_wal=True)
    health = Health(clock)
    health.set("booting", True)
    setup_window = SetupWindow(health, clock=clock, duration=config.panel.setup_window)
    panel = None
    if config.panel.enabled:
        panel = Panel(
            load_layout(config.panel.layout),
            health,
            clock=clock,
            setup_window=setup_window,
            pin_factory=pin_factory,
            pin_choice=config.panel.pin_factory,
        )
    activity = panel.activity if panel is not None else None
    receiver = Receiver(
        spool,
        index,
        min_free_bytes=config.storage.min_free_mb * 2**20,
        clock=clock,
        on_activity=activity,
        health=health,
    )
    pacs = PacsClient(config.pacs, config.dicom, receiver=receiver) if config.pacs else None
    identity = NodeIdentity(layout.identity)
    if hub is None and identity.enrolled:
        try:
            hub = HubClient(identity, timeout=config.hub.request_timeout)
        except AfraError as exc:  # the box still receives; uploads wait for a repair
            LOG.error("the hub enrolment is unusable (%s); uploads are paused", exc)
    policy = PolicyStore(layout.policy)
    the_box: list[Appliance] = []  # the hub client can change (enrolment, repair)
    audit = build_audit(
        config.audit,
        root,
        clock=clock,
        source=lambda: audit_source(root, identity),
        hub=_HubAudit(lambda: the_box[0].hub if the_box else hub),
    )
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
        health=lambda: health.state,
        on_activity=activity,
        software_version=release.version,
        audit=audit,
    )
    guard = WebhookGuard(
        config.downloads,
        hub_url=lambda: identity.hub_url if identity.enrolled else None,
        policy_hosts=lambda: policy.current.webhook_hosts,
    )
    poster = WebhookPoster(
        timeout=config.downloads.webhook_timeout,
        ca_file=identity.ca_path,
        node_id=lambda: identity.node_id if identity.enrolled else "",
        key=lambda: identity.webhook_key,
    )
    downloads = DownloadManager(
        config.downloads,
        data_dir=root,
        index=index,
        spool=spool,
        receiver=receiver,
        pacs=pacs,
        hub=hub,
        guard=guard,
        poster=poster,
        clock=clock,
        part_size=config.hub.part_size_kb * 1024,
        compression_level=config.hub.compression_level,
        zip_level=config.downloads.zip_level,
        min_free_bytes=config.storage.min_free_mb * 2**20,
        study=config.study,
        audit=audit,
    )
    reports = ReportStatusService(index, spool, pacs)
    node_api = _node_api(config, identity, downloads, reports)
    box = Appliance(
        config=config,
        clock=clock,
        spool=spool,
        index=index,
        receiver=receiver,
        dicom=make_acceptor(config.dicom, receiver, index, health=health, on_activity=activity),
        completion=StudyCompletion(index, config.study, clock=clock, pacs=pacs, audit=audit),
        pacs=pacs,
        identity=identity,
        policy=policy,
        uplink=uplink,
        downloads=downloads,
        reports=reports,
        node_api=node_api,
        pin_factory=pin_factory,
        hub=hub,
        health=health,
        setup_window=setup_window,
        panel=panel,
        release=release,
        audit=audit,
    )
    the_box.append(box)
    box.updates = UpdateManager(
        layout.update,
        rauc=rauc or RaucCli(),
        release=release,
        policy=policy,
        hub=lambda: box.hub,
        health=health,
        clock=clock,
        settings=config.update,
        free_bytes=spool.free_bytes,
        min_free_bytes=config.storage.min_free_mb * 2**20,
        quiet=lambda: box.dicom.open_associations == 0,  # restart between studies
        audit=audit,
    )
    uplink.update_report = box.update_report
    if config.mdns.enabled:
        box.mdns = MdnsAdvertiser(
            box.advert,
            clock=clock,
            interfaces=config.mdns.interfaces,
            check_interval=config.mdns.address_check_interval,
        )
    mdns = box.mdns
    if panel is not None:
        panel.address = (
            mdns.primary_address
            if mdns is not None
            else lambda: next(iter(interface_addresses(config.mdns.interfaces)), None)
        )
        panel.on_announce = box.announce
        panel.on_factory_reset = box.factory_reset
    parts: dict[str, StatusPart] = {"panel": panel} if panel is not None else {}
    if mdns is not None:
        parts["mdns"] = mdns
    box.startup_files = StartupFilesProbe(
        lambda: StartupFiles(box.startup.missing_files, box.startup.left_in_place),
        exists=lambda rel: spool.absolute(rel).exists(),
        indexed_among=index.indexed_among,
        interval=config.health.check_interval,
    )
    box.monitor = HealthMonitor(
        health,
        appliance_probes(
            config,
            root=root,
            identity=identity,
            uplink=uplink,
            index=index,
            stale_after_s=lambda: policy.current.stale_queue_hours * 3600.0,
            pacs=box.current_pacs,
            clock=clock,
            usage=usage,
            room_check=lambda free: box.dicom.recheck(free),
            startup_files=box.startup_files,
        ),
        clock=clock,
        status_path=layout.status,
        parts=parts,
    )
    if hub is not None:
        box.commands = box.command_channel(hub)
    return box
