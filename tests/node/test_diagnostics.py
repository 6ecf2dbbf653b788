"""The diagnostics bundle from explicit parts (no appliance), and its certificate rule."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from afra.health import Health, IdentityProbe
from afra.node import diagnostics
from medix.models import Heartbeat
from tests.fakes import FakeClock, self_signed_pem


@dataclass
class Identity:
    """An enrolled node, as the bundle and the identity check read it."""

    cert_path: Path
    ca_path: Path
    enrolled: bool = True
    node_id: str = "n1"
    hub_url: str = "https://127.0.0.1:1"  # nothing listens: the hub checks fail fast


class Queue:
    def queue_stats(self, now: float) -> tuple[int, float, int]:
        return 2, 30.4, 4096


def _cert(path: Path, not_after: float) -> Path:
    path.write_text(self_signed_pem(ec.generate_private_key(ec.SECP256R1()), not_after))
    return path


def _sources(tmp_path: Path, clock: FakeClock, warning_days: int) -> diagnostics.Sources:
    def no_heartbeat() -> Heartbeat:
        raise AssertionError("no hub: no heartbeat is built")

    return diagnostics.Sources(
        box_name="Radiology 1",
        clock=clock,
        identity=Identity(
            cert_path=_cert(tmp_path / "node.crt", clock.time() + 10 * 86400),
            ca_path=tmp_path / "missing-ca.pem",
        ),
        policy_version=7,
        pacs=(lambda: 0, "PACS@127.0.0.1:104"),
        hub=None,
        heartbeat=no_heartbeat,
        data_dir=tmp_path,
        min_free_bytes=2**20,
        cert_warning_days=warning_days,
        queue=Queue(),
    )


def test_the_bundle_is_collected_from_its_parts(tmp_path: Path, clock: FakeClock) -> None:
    bundle = diagnostics.collect(_sources(tmp_path, clock, warning_days=14))
    assert (bundle["box_name"], bundle["policy_version"], bundle["node_id"]) == (
        "Radiology 1",
        7,
        "n1",
    )
    assert bundle["pacs_echo"]["ok"] and bundle["pacs_echo"]["peer"] == "PACS@127.0.0.1:104"
    assert bundle["pacs_echo"]["status"] == "0x0000"
    assert bundle["hub_dns"]["addresses"] == ["127.0.0.1"]
    assert bundle["hub_tls"]["ok"] is False  # a failing check is a result, not an exception
    assert bundle["clock"] == {"ok": False, "error": "not enrolled", "ms": bundle["clock"]["ms"]}
    assert bundle["disk"]["floor_mb"] == 1 and bundle["disk"]["free_mb"] > 0
    assert bundle["queue"]["studies_waiting"] == 2 and bundle["queue"]["oldest_waiting_s"] == 30
    assert bundle["recent_log"] == []


@pytest.mark.parametrize(("warning_days", "good"), [(14, False), (10, False), (9, True)])
def test_the_certificate_is_judged_as_the_health_check_judges_it(
    tmp_path: Path, clock: FakeClock, warning_days: int, good: bool
) -> None:
    sources = _sources(tmp_path, clock, warning_days)
    certificate = diagnostics.collect(sources)["certificate"]
    assert certificate["ok"] is good and certificate["days_left"] == 10.0

    health = Health(clock)
    IdentityProbe(sources.identity, clock=clock, warning_days=warning_days).check(health)
    assert health.is_active("cert_expiring") is not good
