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
from pathlib import Path
from typing import Any

from afra import __version__
from afra.config import Config, PacsSettings, load_config
from afra.errors import AfraError, ConfigError

LOG = logging.getLogger("afra")


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
    sp = sub.add_parser("studies", help="list the studies the box holds")
    sp.add_argument("--json", action="store_true")
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


def cmd_emulate(config: Config, hub_port: int) -> int:
    """The appliance and a reference hub on loopback, the box enrolled with it once."""
    from afra.uplink.client import enrol
    from afra.uplink.identity import NodeIdentity
    from medix.hub.server import HubServer

    hub = HubServer(config.box.data_dir / "hub", port=hub_port)
    hub.start()
    try:
        identity = NodeIdentity(config.box.data_dir / "identity")
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
            f" admin token in {config.box.data_dir / 'hub' / 'admin-token'})",
            flush=True,
        )
        return cmd_run(config)
    finally:
        hub.stop()


def cmd_run(config: Config) -> int:
    from afra.app import build_appliance

    appliance = build_appliance(config)
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    appliance.start()
    d = config.dicom
    print(
        f"AFRA {__version__} listening: DICOM {d.bind}:{appliance.dicom.port} AE {d.ae_title}; "
        f"data in {config.box.data_dir}",
        flush=True,
    )
    try:
        stop.wait()
    finally:
        appliance.close()
    print("AFRA stopped", flush=True)
    return 0


def cmd_enrol(config: Config, args: argparse.Namespace) -> int:
    from afra.uplink.client import enrol
    from afra.uplink.identity import NodeIdentity

    hub_url = args.hub or config.hub.url
    if not hub_url:
        raise ConfigError("no hub URL: give --hub or set hub.url")
    node_id = enrol(
        NodeIdentity(config.box.data_dir / "identity"),
        hub_url=hub_url,
        pairing_code=args.code,
        ca_file=args.ca,
        node_name=config.box.name,
        timeout=config.hub.request_timeout,
    )
    print(f"enrolled with {hub_url} as node {node_id}; restart the box to start uploading")
    return 0


def cmd_slip(config: Config, args: argparse.Namespace) -> int:
    from afra.medis.codes import InvalidCodeError, parse_code
    from afra.medis.slip import render_slip
    from afra.store.index import Index
    from afra.uplink.identity import NodeIdentity

    index = Index(config.box.data_dir / "index.sqlite")
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
    identity = NodeIdentity(config.box.data_dir / "identity")
    hub_url = config.hub.url or (identity.hub_url if identity.enrolled else "")
    patient_url = config.hub.patient_url or (f"{hub_url}/patient" if hub_url else "")
    if not patient_url:
        raise ConfigError("the hub's patient page is unknown: set hub.patient_url or enrol")
    html = render_slip(
        code=study.medis_code or "",
        patient_name=study.patient_name.replace("^", " ").strip(),
        study_date=study.study_date,
        study_description="",
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
        spool = Spool(config.box.data_dir)
        configure_pynetdicom(spool.tmp_dir)
        index = Index(config.box.data_dir / "index.sqlite")
        receiver = Receiver(
            spool, index, min_free_bytes=config.storage.min_free_mb * 2**20, clock=SystemClock()
        )
    return PacsClient(config.pacs, config.dicom, receiver=receiver)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config, cli_overrides=args.overrides)
        _setup_logging(config.box.log_level)
        if args.command == "run":
            return cmd_run(config)
        if args.command == "emulate":
            return cmd_emulate(config, args.hub_port)
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
        if args.command in ("studies", "quarantine", "conflicts"):
            from afra.store.index import Index

            index = Index(config.box.data_dir / "index.sqlite")
            if args.command == "studies":
                rows: list[Any] = index.studies(args.limit)
            elif args.command == "quarantine":
                rows = index.quarantine()
            else:
                rows = index.conflicts()
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
