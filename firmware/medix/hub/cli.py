"""`medix-hub`: run the reference hub from a shell until SIGTERM or Ctrl-C.

Prints where it listens, where the CA certificate is (give it to the node's installer) and,
with --pairing-code, a fresh one-time pairing code.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from medix.hub.ca import read_or_make_token
from medix.hub.server import HubServer


def _admin_token(path: Path | None) -> str | None:
    """The token in `path`, made (mode 0600) when the file does not exist yet."""
    if path is None:
        return None
    try:
        return read_or_make_token(path)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medix-hub", description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path("data/hub"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument(
        "--admin-token-file",
        type=Path,
        help="file holding the admin bearer token (made if missing); "
        "default: <data-dir>/admin-token",
    )
    parser.add_argument("--hub-name", default="Reference hub")
    parser.add_argument("--pairing-code", action="store_true", help="print a fresh pairing code")
    parser.add_argument("--plain-http", action="store_true", help="no TLS (debugging only)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    server = HubServer(
        args.data_dir,
        host=args.host,
        port=args.port,
        admin_token=_admin_token(args.admin_token_file),
        hub_name=args.hub_name,
        tls=not args.plain_http,
    )
    with server:
        token_file = args.admin_token_file or server.hub.admin_token_path
        print(f"url: {server.url}")
        print(f"ca: {server.ca_pem_path}")
        print(f"admin token file: {token_file}")
        if args.pairing_code:
            print(f"pairing code: {server.new_pairing_code()}")
        sys.stdout.flush()
        while not stop.wait(1.0):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
