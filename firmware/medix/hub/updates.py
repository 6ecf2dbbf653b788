"""The system updates a hub offers its nodes: signed RAUC bundles kept by their SHA-256.

The administrator uploads a bundle (`PUT /admin/updates?version=..&compatible=..`) and gets
the `UpdateOffer` to put into a policy; nodes fetch it (`GET /medix/v1/updates/<sha256>`,
mutual TLS, byte ranges for a resumed download). The hub neither opens nor trusts the
bundle: each node checks the hash, the signature against the key in its own image, the
compatible string and the version before installing anything.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from pathlib import Path

from medix.durable import replace_durably, write_stream
from medix.models import UpdateOffer

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_BUNDLE_BYTES = 4 * 2**30


class UpdateShelf:
    """The bundles under `directory`, each as `<sha256>.raucb`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def add(
        self, chunks: Iterable[bytes], *, version: str, compatible: str, limit: int
    ) -> UpdateOffer:
        """Store a bundle streamed in `chunks`; the offer that names it. ValueError when it
        is empty or over `limit` bytes, or the version or compatible string is malformed."""
        tmp = self.directory / f".incoming-{secrets.token_hex(8)}"
        try:
            size, sha256 = write_stream(
                tmp,
                chunks,
                limit=limit,
                too_large=lambda: ValueError(f"the bundle is larger than {limit} bytes"),
            )
            if size == 0:
                raise ValueError("the bundle is empty")
            offer = UpdateOffer(version=version, compatible=compatible, sha256=sha256, size=size)
            replace_durably(tmp, self.path_of(offer.sha256))
        finally:
            tmp.unlink(missing_ok=True)
        return offer

    def path_of(self, sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise ValueError("not a SHA-256")
        return self.directory / f"{sha256}.raucb"

    def find(self, sha256: str) -> Path | None:
        try:
            path = self.path_of(sha256)
        except ValueError:
            return None
        return path if path.is_file() else None
