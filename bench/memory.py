"""Memory benchmark: peak RSS of the AFRA box while it ingests (i) one ~1 GiB instance and
(ii) a 3,000-instance study of small (64x64) instances.

Run as ``.venv/bin/python bench/memory.py`` (``make bench-memory``). The box is started fresh
for each case (``.venv/bin/afra --config <toml> run``, empty data_dir); the data is sent with
one DCMTK storescu (one association) and the RSS of the box's whole process tree is sampled
every 50 ms from just before the send until storescu exits. The box must then hold 1 and
3,000 instances respectively. Data is generated once into ``bench/out/`` (about 1 GiB + 30
MiB) and reused. Needs 4 GiB free on the disk holding ``bench/out``.

stdout: ``memory_peak_rss_mb_large_object=``, ``memory_peak_rss_mb_3000_study=`` and, last,
``memory_peak_rss_mb=<the larger>`` (MiB). ``--receive-processes N`` sets the box's
dicom.receive_processes (its workers are in the process tree measured).
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from common import (
    MIB,
    OUT_DIR,
    BenchError,
    BoxReceiver,
    RunResult,
    ensure_ct_series,
    ensure_large_object,
    log,
    prepare_tmp_root,
    run_fresh,
    warm_page_cache,
)

LARGE_OBJECT = OUT_DIR / "large-1gib.dcm"
LARGE_SIZE = 1024 * MIB
STUDY_DIR = OUT_DIR / "study3000"
STUDY_N = 3000
STUDY_ROWS = STUDY_COLS = 64
MIN_FREE_BYTES = 4 * 1024 * MIB
SEND_TIMEOUT_S = 1200.0
# One C-STORE of 1 GiB: the box may take a while (write, fsync, index) before it answers.
DIMSE_TIMEOUT_S = 600


def check_disk() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(OUT_DIR).free
    if free < MIN_FREE_BYTES:
        raise SystemExit(
            f"bench-memory needs at least {MIN_FREE_BYTES / 2**30:.0f} GiB free on the disk "
            f"holding {OUT_DIR} (1 GiB test object + the box's copy of it + the 3,000-instance "
            f"study); only {free / 2**30:.2f} GiB free. Free some space (e.g. `rm -rf "
            f"{OUT_DIR}/tmp`) and retry."
        )


def measure(label: str, files: Sequence[Path], receive_processes: int | None) -> RunResult:
    log(f"{label}: sending {len(files)} file(s) to a fresh box")
    result = run_fresh(
        functools.partial(BoxReceiver, receive_processes=receive_processes),
        [list(files)],
        timeout=SEND_TIMEOUT_S,
        dimse_timeout=DIMSE_TIMEOUT_S,
    )
    log(
        f"{label}: {result.wall_s:.2f}s, peak RSS {result.peak_rss_bytes / MIB:.1f} MiB, "
        f"cpu {result.cpu_s:.2f}s"
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--receive-processes",
        type=int,
        default=None,
        help="the box's dicom.receive_processes (default: the box's default)",
    )
    args = ap.parse_args(argv)
    check_disk()
    prepare_tmp_root()
    large = ensure_large_object(LARGE_OBJECT, LARGE_SIZE)
    study = ensure_ct_series(
        STUDY_DIR, STUDY_N, STUDY_ROWS, STUDY_COLS, patient_id="SYN3000", seed=3000
    )
    warm_page_cache(study)
    try:
        processes = args.receive_processes
        large_peak = measure("large object", [large], processes).peak_rss_bytes / MIB
        print(f"memory_peak_rss_mb_large_object={large_peak:.1f}", flush=True)
        study_peak = measure("3000-instance study", study, processes).peak_rss_bytes / MIB
        print(f"memory_peak_rss_mb_3000_study={study_peak:.1f}", flush=True)
    except BenchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        prepare_tmp_root()
    print(f"memory_peak_rss_mb={max(large_peak, study_peak):.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
