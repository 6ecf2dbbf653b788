"""Helpers for the DICOM tests: a raw sender that can send what storescu refuses to."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, _config

LOOPBACK = "127.0.0.1"


@contextmanager
def chunked_send() -> Iterator[None]:
    """Make pynetdicom send a file's bytes as they are, without decoding them first."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


def send_raw(
    port: int, path: Path, *, aet: str = "RAWSCU", context_class: str | None = None
) -> int:
    """C-STORE one file's bytes as they are (even a broken file); return the status."""
    meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
    abstract = context_class or str(meta.MediaStorageSOPClassUID)
    ae = AE(ae_title=aet)
    ae.add_requested_context(abstract, [str(meta.TransferSyntaxUID)])
    assoc = ae.associate(LOOPBACK, port, ae_title="AFRA")
    assert assoc.is_established, "the box refused the association"
    try:
        with chunked_send(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the bad UIDs we mean to send
            status = assoc.send_c_store(path)
    finally:
        assoc.release()
    return int(status.Status)
