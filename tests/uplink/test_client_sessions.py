"""The hub client's kept-alive sessions: one per live thread, not one per thread ever run."""

from __future__ import annotations

import threading
from pathlib import Path

from afra.uplink.client import HubClient, enrol
from afra.uplink.identity import NodeIdentity
from medix.hub.server import HubServer


def test_threads_that_ended_leave_no_session_behind(tmp_path: Path, hub: HubServer) -> None:
    identity = NodeIdentity(tmp_path / "identity")
    enrol(
        identity,
        hub_url=hub.url,
        pairing_code=hub.new_pairing_code(),
        ca_file=Path(hub.ca_pem_path),
        node_name="afra-test",
    )
    client = HubClient(identity, timeout=10)
    try:
        # A download job's threads: each calls the hub once and ends (40 jobs' worth).
        for _ in range(40):
            worker = threading.Thread(target=client.commands, args=(0,))
            worker.start()
            worker.join()
        client.commands(0)  # this thread's own session sweeps the ended ones
        assert client.open_sessions == 1
    finally:
        client.close()
    assert client.open_sessions == 0
