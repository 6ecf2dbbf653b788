"""Fakes for what CI cannot have for real: the clock, and an A/B disk with a reboot (RAUC)."""

from __future__ import annotations

import threading
from typing import Any


class FakeClock:
    """A clock the test moves by hand. sleep() does not advance time; it only yields."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._mono = 1000.0
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def time(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
            self._mono += seconds

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        if stop is None:
            return False
        return stop.wait(0.01)


class FakeRauc:
    """RAUC and the reboot, for the update flow: CI has no A/B disk to write and no machine
    to restart. Records what the box asked for; the bundle check can be the real `rauc info`
    (pass `info`), the rest is scripted."""

    def __init__(
        self,
        *,
        booted: str = "A",
        info=None,
        install_error: str = "",
        bad: tuple[str, ...] = (),
        primary: str = "",
    ) -> None:
        from afra.update.rauc import RaucStatus, SlotState

        self.booted = booted
        self.calls: list[tuple[str, ...]] = []
        self._info = info
        self.install_error = install_error
        self.installed: list[bytes] = []
        self._status = lambda: RaucStatus(
            compatible="afra-rpi4-arm64",
            booted=self.booted,
            primary=primary or self.booted,
            slots=tuple(
                SlotState(f"rootfs.{i}", name, "booted" if name == self.booted else "inactive",
                          "bad" if name in bad else "good", "")
                for i, name in enumerate("AB")
            ),
        )  # fmt: skip

    def info(self, bundle):
        self.calls.append(("info", bundle.name))
        if self._info is None:
            raise AssertionError("no bundle check scripted")
        return self._info(bundle)

    def install(self, bundle, progress):
        from afra.update.rauc import InstallFailed

        self.calls.append(("install", bundle.name))
        progress(40, "Copying image to rootfs.1")
        if self.install_error:
            raise InstallFailed(self.install_error)
        self.installed.append(bundle.read_bytes())
        progress(100, "Installing done.")

    def status(self):
        return self._status()

    def mark(self, verdict: str, slot: str = "booted") -> None:
        self.calls.append(("mark", verdict, slot))

    def reboot(self) -> None:
        self.calls.append(("reboot",))


def self_signed_pem(key: Any, not_after: float) -> str:
    """A self-signed certificate for `key` (CN afra-test) valid for a year up to `not_after`."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "afra-test")])
    end = dt.datetime.fromtimestamp(not_after, dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(end - dt.timedelta(days=365))
        .not_valid_after(end)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
