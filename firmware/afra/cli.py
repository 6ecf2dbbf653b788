"""`afra ...` subcommands: parse, call, print. Nothing here decides anything."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from afra import __version__
from afra.config import Config, PacsSettings, load_config
from afra.datadir import DataDir
from afra.errors import AfraError, ConfigError
from medix.models import DownloadStatus

LOG = logging.getLogger("afra")

EXIT_RESTART = 75  # EX_TEMPFAIL: the unit's Restart=on-failure starts the box again


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="afra", description="AFRA DICOM-to-Medix adaptor")
    p.add_argument("--version", action="version", version=f"afra {__version__}")
    p.add_argument("-c", "--config", type=Path, help="TOML configuration file (or $AFRA_CONFIG)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one configuration key (repeatable)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("run", help="run the appliance (DICOM service, study completion, uplink)")
    sp = sub.add_parser(
        "emulate", help="run the appliance with a local reference hub (what `make run` does)"
    )
    sp.add_argument("--hub-port", type=int, default=8443, help="the reference hub's port")
    sub.add_parser("check-config", help="validate the configuration and print it")
    sp = sub.add_parser("status", help="the running box's health and its front panel, now")
    sp.add_argument("--json", action="store_true")
    sp = sub.add_parser("discover", help="list AFRA boxes and DICOM services on the LAN (mDNS)")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--timeout", type=float, default=3.0, help="seconds to listen (default 3)")
    sp.add_argument(
        "--interface",
        action="append",
        default=[],
        help="listen on this interface name or IPv4 address only (repeatable)",
    )

    def pacs_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--host", help="PACS host (default: [pacs] host)")
        sp.add_argument("--port", type=int, help="PACS port (default: [pacs] port)")
        sp.add_argument("--aec", help="PACS AE title (default: [pacs] ae_title)")

    sp = sub.add_parser("echo", help="C-ECHO the PACS")
    pacs_args(sp)
    sp = sub.add_parser("find", help="C-FIND on the PACS (Study Root)")
    pacs_args(sp)
    sp.add_argument("--level", choices=["study", "series"], default="study")
    sp.add_argument(
        "-k",
        "--key",
        action="append",
        default=[],
        metavar="KEYWORD=VALUE",
        help="a matching or return key, e.g. -k PatientID=123 -k StudyDate=20240101-",
    )
    sp.add_argument("--json", action="store_true", help="print matches as DICOM JSON")
    sp = sub.add_parser("move", help="retrieve a study from the PACS into the box")
    pacs_args(sp)
    sp.add_argument("study_uid")
    sp.add_argument("--get", action="store_true", help="use C-GET instead of C-MOVE")
    sp = sub.add_parser("studies", help="list the studies the box holds (newest first)")
    sp.add_argument("--json", action="store_true", help="every field, codes whole (for scripts)")
    sp.add_argument("--limit", type=int, default=50)
    sp = sub.add_parser("quarantine", help="list refused objects kept for review")
    sp.add_argument("--json", action="store_true")
    sp = sub.add_parser(
        "conflicts", help="list second copies of an instance that differed from the first"
    )
    sp.add_argument("--json", action="store_true")
    sp = sub.add_parser("enrol", help="enrol the box with a Medix hub using a pairing code")
    sp.add_argument("--hub", help="the hub's https URL (default: hub.url)")
    sp.add_argument("--ca", type=Path, required=True, help="the hub's CA certificate (PEM)")
    sp.add_argument("--code", required=True, help="the pairing code from the hub's portal")
    sp = sub.add_parser("jobs", help="list the hub's download jobs and their timelines")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--limit", type=int, default=20)
    sub.add_parser("diagnostics", help="run the diagnostics and print the bundle (JSON)")
    sp = sub.add_parser("report-status", help="say which studies have reports (as the hub asks)")
    sp.add_argument("study_uid", nargs="+")
    sp = sub.add_parser(
        "setup-code", help="make the box's setup code (image build): print it for the label"
    )
    sp.add_argument("--force", action="store_true", help="replace an existing setup code")
    sp = sub.add_parser(
        "selftest", help="check the running box (after an update: keep it or roll it back)"
    )
    sp.add_argument(
        "--decide",
        action="store_true",
        help="act on the result: mark the slot good, or after a failed update mark it bad "
        "and reboot into the previous one (afra-selftest.service)",
    )
    sp.add_argument("--json", action="store_true")
    sp = sub.add_parser("update-status", help="where the last system update stands")
    sp.add_argument("--json", action="store_true")
    sp = sub.add_parser("slip", help="print a study's patient slip (HTML) for the reception desk")
    sp.add_argument("study", help="the study's Medis code or Study Instance UID")
    sp.add_argument("--out", type=Path, help="write to this file instead of standard output")
    return p


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def _with_pacs(config: Config, args: argparse.Namespace) -> Config:
    pacs = config.pacs
    if args.host or args.port or args.aec:
        base = pacs.model_dump() if pacs else {"ae_title": "ANY-SCP", "host": "127.0.0.1"}
        for key, value in (("host", args.host), ("port", args.port), ("ae_title", args.aec)):
            if value:
                base[key] = value
        pacs = PacsSettings.model_validate(base)
    if pacs is None:
        raise ConfigError("no PACS configured: add a [pacs] section or give --host/--port/--aec")
    return config.model_copy(update={"pacs": pacs})


def _key_pairs(items: Sequence[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"query key {item!r} must be KEYWORD=VALUE (VALUE may be empty)")
        pairs[key.strip()] = value.strip()
    return pairs


def _port_hint(variable: str) -> str:
    return f"choose another with `make run {variable}=<port>`, or stop what holds it"


def cmd_emulate(config: Config, hub_port: int) -> int:
    """The appliance and a reference hub on loopback, the box enrolled with it once."""
    from afra.uplink.client import enrol
    from afra.uplink.identity import NodeIdentity
    from medix.hub.server import HubServer

    hub = HubServer(DataDir(config.box.data_dir).emulated_hub, port=hub_port)
    try:
        hub.start()
    except OSError:
        raise ConfigError(
            f"port {hub_port} on 127.0.0.1 is already in use, so the reference hub cannot "
            f"start: {_port_hint('HUB_PORT')} (afra emulate --hub-port)"
        ) from None
    try:
        identity = NodeIdentity(DataDir(config.box.data_dir).identity)
        if identity.enrolled and identity.hub_url != hub.url:
            identity.move_hub(hub.url)  # the same local hub, on another port this time
        if not identity.enrolled:
            enrol(
                identity,
                hub_url=hub.url,
                pairing_code=hub.new_pairing_code(),
                ca_file=hub.ca_pem_path,
                node_name=config.box.name,
            )
        print(
            f"Reference hub: {hub.url} (patient page {hub.url}/patient, CA {hub.ca_pem_path},"
            f" admin token in {hub.hub.admin_token_path})",
            flush=True,
        )
        _emulated_label(config, hub)
        return cmd_run(config, emulated=True)
    finally:
        hub.stop()


def _emulated_label(config: Config, hub: Any) -> None:
    """An emulated box has no label: until its wizard has a password, each run makes a fresh
    setup code and prints it (with a pairing code for the wizard's hub step)."""
    if not config.web.enabled:
        return
    from afra.system.provision import admin_password_set, new_setup_code

    if admin_password_set(config.box.data_dir):
        print("Setup wizard: sign in with the admin password you chose", flush=True)
        return
    code = new_setup_code(config.box.data_dir, force=True)
    print(
        f"Setup code (the label of a real box): {code}; for the wizard's hub step: pairing code "
        f"{hub.new_pairing_code()}, CA file {hub.ca_pem_path}",
        flush=True,
    )


def _start_web(appliance: Any, *, emulated: bool = False) -> Any:
    """The setup wizard and dashboard (web-setup/, found as the `web` front end), when
    `web.enabled`."""
    if not appliance.config.web.enabled:
        return None
    from afra.frontends import available

    try:
        start = available().get("web")
        if start is None:
            LOG.error("web.enabled is set but no setup page is installed (the afra_web package)")
            return None
        server = start(appliance)
    except AfraError as exc:
        if emulated:  # `make run` is for the page: say so and stop, naming the way out
            raise ConfigError(f"{exc}: {_port_hint('WEB_PORT')}") from None
        LOG.error("%s", exc)  # a box still receives and uploads without its web page
        return None
    except Exception:  # e.g. out of file descriptors while loading it: the same, logged
        LOG.exception("the setup and dashboard page could not start; the box runs without it")
        return None
    for url in server.urls:
        print(f"Setup wizard and dashboard: open {url}", flush=True)
    return server


def cmd_setup_code(config: Config, force: bool) -> int:
    """At image-build time: make the box's setup code, print it for the label, keep its hash."""
    from afra.system.provision import new_setup_code

    try:
        code = new_setup_code(config.box.data_dir, force=force)
    except FileExistsError as exc:
        raise ConfigError(str(exc)) from None
    print(code)
    return 0


def _take_provisioning(config: Config) -> bool:
    """What the card brought for this box (afra-identity.service moved it onto the data
    partition): checked and put in place before the box starts; whether anything was."""
    from afra.system.provision import take_provisioning

    layout = DataDir(config.box.data_dir)
    return bool(take_provisioning(layout.inbox, layout.root))


def cmd_run(config: Config, *, emulated: bool = False) -> int:
    from afra.app import build_appliance
    from afra.system.notify import Notifier, Watchdog

    notifier = Notifier()
    appliance = build_appliance(config)
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    appliance.on_restart.append(stop.set)  # factory reset: exit, systemd starts us afresh
    try:
        appliance.start()
    except AfraError as exc:
        appliance.close()
        if emulated and "DICOM" in str(exc):
            raise ConfigError(f"{exc}: {_port_hint('DICOM_PORT')}") from None
        raise
    d = config.dicom
    print(
        f"AFRA {__version__} listening: DICOM {d.bind}:{appliance.dicom.port} AE {d.ae_title}; "
        f"data in {config.box.data_dir}",
        flush=True,
    )
    web = None
    watchdog = Watchdog(notifier, appliance.liveness())
    try:
        web = _start_web(appliance, emulated=emulated)
        notifier.ready(
            f"DICOM on port {appliance.dicom.port} as {d.ae_title}"
            + (f", setup page on port {web.port}" if web is not None else "")
        )
        watchdog.start()
        stop.wait()
    finally:
        notifier.stopping()
        watchdog.stop()
        if web is not None:
            web.stop()
        appliance.close()
    if appliance.restart_requested.is_set():
        print("AFRA stopped for a restart (factory reset)", flush=True)
        return EXIT_RESTART
    print("AFRA stopped", flush=True)
    return 0


def cmd_selftest(config: Config, args: argparse.Namespace) -> int:
    from afra.app import audit_source
    from afra.audit import build_audit
    from afra.clock import SystemClock
    from afra.system.release import running_release
    from afra.update.rauc import RaucCli
    from afra.update.selftest import SelfTest, decide, save_report, trial_reason
    from afra.update.status import UpdateRecord, audit_moves
    from afra.uplink.identity import NodeIdentity

    release = running_release()
    directory = DataDir(config.box.data_dir).update
    clock = SystemClock()
    record = UpdateRecord(directory / "status.json", clock)
    # Kept or rolled back is decided here, in its own process: the trail is the box's, and
    # `afra run` sends on what this writes.
    audit = build_audit(
        config.audit,
        config.box.data_dir,
        clock=clock,
        source=lambda: audit_source(
            config.box.data_dir, NodeIdentity(DataDir(config.box.data_dir).identity)
        ),
        hub=None,
    )
    audit_moves(record, audit)
    rauc = RaucCli()
    reason = trial_reason(record, release, directory, rauc if release.image else None)
    if reason is not None:
        print(f"slot {release.slot} ({release.version}) is on trial: {reason}", flush=True)
    test = SelfTest(config, units=("afra.service",) if release.image else ())
    report = test.run(
        timeout=config.update.selftest_timeout,
        # The hub is waited for after an update only: the old system reached it just before.
        hub_wait=config.update.selftest_hub_wait if reason == "update" else 0,
        trial=reason is not None,
    )
    save_report(report, directory)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for check in report.checks:
            print(f"{'ok  ' if check.ok else 'FAIL'} {check.name:<8} {check.detail}")
    if args.decide:
        outcome = decide(report, record=record, rauc=rauc, release=release, directory=directory)
        print(f"verdict: {outcome}", flush=True)
    audit.close()
    return 0 if report.ok else 1


def cmd_update_status(config: Config, as_json: bool) -> int:
    from afra.clock import SystemClock
    from afra.system.release import running_release
    from afra.update.selftest import read_report
    from afra.update.status import UpdateRecord

    directory = DataDir(config.box.data_dir).update
    status = UpdateRecord(directory / "status.json", SystemClock()).current
    release = running_release()
    if as_json:
        doc = {
            "release": asdict(release),
            "update": status.as_dict(),
            "selftest": read_report(directory),
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"running {release.version}" + (f" from slot {release.slot}" if release.slot else ""))
    print(f"update: {status.state} ({status.summary})")
    if status.version:
        print(f"  version {status.version} from {status.source or '?'}: {status.message}")
    return 0


def cmd_status(config: Config, as_json: bool) -> int:
    import time

    from afra.health import box_running, read_status
    from afra.panel.virtual import render_status, status_now

    doc = read_status(config.box.data_dir)
    if doc is None:
        if as_json:
            print(json.dumps({"running": False}))
        else:
            print(f"AFRA is not running (no status in {config.box.data_dir})")
        return 3
    now = time.time()
    running = box_running(doc, now)
    doc = status_now(doc, now, running=running)
    print(json.dumps(doc, indent=2) if as_json else render_status(doc, now))
    return 0 if running else 3


def cmd_discover(args: argparse.Namespace) -> int:
    from afra.mdns import discover, found_as_dict, render_found

    found = discover(args.timeout, args.interface)
    if args.json:
        print(json.dumps([found_as_dict(f) for f in found], indent=2))
    else:
        print(render_found(found))
    return 0


def cmd_enrol(config: Config, args: argparse.Namespace) -> int:
    from afra.uplink.client import enrol
    from afra.uplink.identity import NodeIdentity

    hub_url = args.hub or config.hub.url
    if not hub_url:
        raise ConfigError("no hub URL: give --hub or set hub.url")
    node_id = enrol(
        NodeIdentity(DataDir(config.box.data_dir).identity),
        hub_url=hub_url,
        pairing_code=args.code,
        ca_file=args.ca,
        node_name=config.box.name,
        timeout=config.hub.request_timeout,
    )
    print(f"enrolled with {hub_url} as node {node_id}; restart the box to start uploading")
    return 0


def _open_index(config: Config) -> Any:
    """The box's index for a command that reads it; a sentence, not a traceback, when there
    is none where the configuration says."""
    from afra.store.index import Index

    layout = DataDir(config.box.data_dir)
    if not layout.index.exists():
        raise ConfigError(
            f"no box data in {layout.root} (box.data_dir): give the box's configuration with "
            "--config (relative paths in it are read from its folder), or start the box once "
            "to create it"
        )
    return Index(layout.index)


def _local_time(at: float | None) -> str:
    if not at:
        return "-"
    return datetime.fromtimestamp(at, UTC).astimezone().strftime("%Y-%m-%d %H:%M")


def _masked(code: str | None) -> str:
    """A Medis code as the dashboard shows it before a reveal: its last group only."""
    if not code:
        return "-"
    from afra.medis.codes import format_code

    groups = format_code(code).split("-")
    return "-".join(["••••"] * (len(groups) - 1) + groups[-1:])


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def cmd_studies(config: Config, args: argparse.Namespace) -> int:
    """The studies the box holds: a table for people (codes masked), or JSON for scripts."""
    from medix.l10n import dicom_date, person_name

    index = _open_index(config)
    try:
        rows = index.studies(args.limit)
    finally:
        index.close()
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    if not rows:
        print(f"no studies in {config.box.data_dir}")
        return 0
    table = [["RECEIVED", "PATIENT", "STUDY DATE", "IMAGES", "STATE", "CODE"]]
    for r in rows:
        state = r.state if not r.last_error else f"{r.state} (retrying: {r.last_error[:40]})"
        table.append(
            [
                _local_time(r.last_received_at),
                (person_name(r.patient_name) or "-")[:32],
                dicom_date(r.study_date, "en") or "-",
                str(r.instance_count),
                state,
                _masked(r.medis_code),
            ]
        )
    print(_table(table))
    noun = "study" if len(rows) == 1 else "studies"
    print(f"{len(rows)} {noun}; codes masked (the dashboard reveals one)")
    return 0


def cmd_slip(config: Config, args: argparse.Namespace) -> int:
    from afra.medis.codes import InvalidCodeError, parse_code
    from afra.medis.slip import render_slip
    from afra.uplink.identity import NodeIdentity

    index = _open_index(config)
    try:
        wanted = parse_code(args.study)
    except InvalidCodeError:
        wanted = args.study
    rows = [
        r for r in index.studies(100000) if r.medis_code and wanted in (r.study_uid, r.medis_code)
    ]
    if not rows:
        raise ConfigError(f"no study with a Medis code matches {args.study!r}")
    study = rows[0]
    upload = index.upload_study(study.id)
    description = upload.study_description if upload is not None else ""
    identity = NodeIdentity(DataDir(config.box.data_dir).identity)
    hub_url = config.hub.url or (identity.hub_url if identity.enrolled else "")
    patient_url = config.hub.patient_url or (f"{hub_url}/patient" if hub_url else "")
    if not patient_url:
        raise ConfigError("the hub's patient page is unknown: set hub.patient_url or enrol")
    html = render_slip(
        code=study.medis_code or "",
        patient_name=study.patient_name,  # a DICOM name: the slip writes it Given Family
        study_date=study.study_date,
        study_description=description,
        center_name=config.box.name,
        hub_patient_url=patient_url,
    )
    if args.out:
        args.out.write_text(html, encoding="utf-8")
        print(f"slip written to {args.out}")
    else:
        print(html)
    return 0


def _open_pacs(config: Config, with_receiver: bool) -> Any:
    from afra.clock import SystemClock
    from afra.dicom.receive import Receiver
    from afra.dicom.scu import PacsClient, configure_pynetdicom
    from afra.dicom.spool import Spool
    from afra.store.index import Index

    assert config.pacs is not None
    receiver = None
    if with_receiver:
        spool = Spool(config.box.data_dir, one_flush=None if config.storage.one_flush else False)
        configure_pynetdicom(spool.tmp_dir)
        index = Index(DataDir(config.box.data_dir).index)
        receiver = Receiver(
            spool, index, min_free_bytes=config.storage.min_free_mb * 2**20, clock=SystemClock()
        )
    return PacsClient(config.pacs, config.dicom, receiver=receiver)


def cmd_jobs(config: Config, args: argparse.Namespace) -> int:
    from afra.node.jobstore import JobStore

    path = DataDir(config.box.data_dir).jobs_db
    if not path.exists():
        print("no download jobs yet")
        return 0
    store = JobStore(path)
    try:
        jobs = store.jobs(args.limit)
    finally:
        store.close()
    if args.json:
        print(json.dumps([job.as_dict() for job in jobs], indent=2))
        return 0
    for job in jobs:
        print(
            f"{job.id}  {job.state:<7}  {DownloadStatus(job.status).name:<16}  {job.subject}  "
            f"user={job.userid}  via {job.source}"
        )
        for event in job.events:
            when = datetime.fromtimestamp(event.at).strftime("%H:%M:%S")
            print(f"    {when}  {event.status:>3} {event.name:<16} {event.detail}")
        if job.file_url:
            print(f"    file: {job.file_url}")
    if not jobs:
        print("no download jobs yet")
    return 0


def cmd_node(config: Config, args: argparse.Namespace) -> int:
    """Diagnostics and report status, from a box built on the same data (not started)."""
    from afra.app import build_appliance
    from medix.models import ReportStatusRequest

    box = build_appliance(config)
    try:
        if args.command == "diagnostics":
            print(json.dumps(box.diagnostics(), indent=2))
            return 0
        assert box.reports is not None
        answer = box.reports.answer(ReportStatusRequest(StudyInstanceUIDs=tuple(args.study_uid)))
        print(answer.model_dump_json(indent=2))
        return 0
    finally:
        box.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config, cli_overrides=args.overrides)
        _setup_logging(config.box.log_level)
        if args.command == "run":
            if _take_provisioning(config):  # the card's settings are read with the rest
                config = load_config(args.config, cli_overrides=args.overrides)
            return cmd_run(config)
        if args.command == "emulate":
            return cmd_emulate(config, args.hub_port)
        if args.command == "status":
            return cmd_status(config, args.json)
        if args.command == "discover":
            return cmd_discover(args)
        if args.command == "check-config":
            print(json.dumps(config.model_dump(mode="json"), indent=2))
            return 0
        if args.command in ("echo", "find", "move"):
            config = _with_pacs(config, args)
        if args.command == "echo":
            status = _open_pacs(config, False).echo()
            print(f"C-ECHO {config.pacs.ae_title if config.pacs else ''}: status 0x{status:04X}")
            return 0 if status == 0 else 1
        if args.command == "find":
            matches = _open_pacs(config, False).find(args.level.upper(), _key_pairs(args.key))
            if args.json:
                print(json.dumps([m.to_json_dict() for m in matches], indent=2))
            else:
                for m in matches:
                    print("  ".join(f"{e.keyword}={e.value}" for e in m if e.keyword))
                print(f"{len(matches)} match(es)")
            return 0
        if args.command == "move":
            client = _open_pacs(config, True)
            result = client.get(args.study_uid) if args.get else client.retrieve(args.study_uid)
            print(
                f"{result.method}: status 0x{result.status:04X}, completed {result.completed}, "
                f"failed {result.failed}, warning {result.warning}"
            )
            for note in result.notes:
                print(f"  {note}")
            return 0 if result.ok else 1
        if args.command == "enrol":
            return cmd_enrol(config, args)
        if args.command == "slip":
            return cmd_slip(config, args)
        if args.command == "setup-code":
            return cmd_setup_code(config, args.force)
        if args.command == "selftest":
            return cmd_selftest(config, args)
        if args.command == "update-status":
            return cmd_update_status(config, args.json)
        if args.command == "jobs":
            return cmd_jobs(config, args)
        if args.command in ("diagnostics", "report-status"):
            return cmd_node(config, args)
        if args.command == "studies":
            return cmd_studies(config, args)
        if args.command in ("quarantine", "conflicts"):
            index = _open_index(config)
            rows: list[Any] = (
                index.quarantine() if args.command == "quarantine" else index.conflicts()
            )
            if args.json:
                print(json.dumps([asdict(r) for r in rows], indent=2))
            else:
                for r in rows:
                    print("  ".join(f"{k}={v}" for k, v in asdict(r).items()))
            return 0
    except ConfigError as exc:
        print(f"afra: {exc}", file=sys.stderr)
        return 2
    except AfraError as exc:
        print(f"afra: error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"afra: error: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
