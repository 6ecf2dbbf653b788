"""Load: four modalities sending large studies at once into the box as a subprocess; every
instance stored, and the box's memory stays bounded (sampled from outside, as the OS sees it).
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import psutil
import pytest

from afra.store.index import Index
from medix.hub.server import HubServer
from tests.faults.conftest import count
from tests.faults.harness import KillHarness
from tests.peers import scu_env, storescu_command

MB = 2**20
RSS_BOUND_MB = 220  # the box idles near 100 MB; a study held in memory would be 60 MB more each


def test_four_modalities_at_once_are_all_stored_within_bounded_memory(
    hub: HubServer, tmp_path: Path
) -> None:
    from tests.dicomgen import make_ct_series

    per_study = count(reduced=12, full=60)
    studies = [
        make_ct_series(
            tmp_path / f"m{n}", n=per_study, rows=512, cols=512, patient_id=f"LOAD{n}", seed=n
        )
        for n in range(4)
    ]
    harness = KillHarness(tmp_path / "run", hub, seed=4)
    proc = harness.spawn()
    peak = {"rss": 0}
    done = threading.Event()

    def sample() -> None:
        box = psutil.Process(proc.pid)
        while not done.wait(0.02):
            try:
                peak["rss"] = max(peak["rss"], box.memory_info().rss)
            except psutil.NoSuchProcess:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        harness.notify.wait_ready(proc)
        sampler.start()
        senders = [
            subprocess.Popen(
                storescu_command("127.0.0.1", harness.port, files, aet=f"MOD{n}"),
                env=scu_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for n, files in enumerate(studies)
        ]
        results = [(s.communicate(timeout=600)[1], s.returncode) for s in senders]
    finally:
        done.set()
        proc.terminate()
        proc.wait(timeout=60)
        harness.close()
    assert [code for _err, code in results] == [0, 0, 0, 0], results
    index = Index(harness.data / "index.sqlite")
    try:
        held = sum(s.instance_count for s in index.studies(limit=100))
    finally:
        index.close()
    assert held == 4 * per_study
    print(f"four modalities, {4 * per_study} instances: box peak RSS {peak['rss'] // MB} MB")
    assert peak["rss"] > 0
    assert peak["rss"] < RSS_BOUND_MB * MB, f"the box reached {peak['rss'] // MB} MB"


pytestmark = pytest.mark.timeout(900)
