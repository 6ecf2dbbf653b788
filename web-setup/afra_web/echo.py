"""The "Test" button: a C-ECHO to the PACS, with the reason in words when it fails.

A plain TCP connection is tried first: "nothing answers at that address and port" is the
commonest mistake and deserves its own message (it also spares pynetdicom a socket it would
leave to the garbage collector on a refused connection).
"""

from __future__ import annotations

import socket
import time

from afra.config import DicomSettings, PacsSettings
from afra.dicom.scu import PacsClient
from afra.errors import AfraError
from afra_web.forms import Msg

CONNECT_TIMEOUT_S = 5.0


def echo(pacs: PacsSettings, local: DicomSettings) -> tuple[bool, Msg]:
    started = time.monotonic()
    try:
        with socket.create_connection((pacs.host, pacs.port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        return False, Msg(
            "Nothing answers at {host} port {port} ({why}). Check the address and port, and "
            "that the PACS is on.",
            {"host": pacs.host, "port": pacs.port, "why": exc.strerror or str(exc)},
        )
    try:
        status = PacsClient(pacs, local).echo()
    except (AfraError, OSError, RuntimeError) as exc:
        return False, Msg("No answer: {why}", {"why": str(exc)})
    ms = int((time.monotonic() - started) * 1000)
    return status == 0, Msg(
        "The PACS answered the C-ECHO with status 0x{status} in {ms} ms.",
        {"status": f"{status:04X}", "ms": ms},
    )
