"""Ingest benchmark: how fast does each receiver take a 300-instance CT series?

Run as ``.venv/bin/python bench/ingest.py`` (``make bench-ingest``).

Receivers: DCMTK storescp (reference), Orthanc 1.10 (durable default) and the AFRA box
(``.venv/bin/afra --config <toml> run``). Each run starts a fresh receiver with empty storage,
sends the series with DCMTK storescu (TCP_NODELAY=1, one association per storescu) and stops
the receiver. Runs are interleaved across receivers (rep 1 of each, then rep 2, ...) so slow
drift of the machine hits all receivers alike; the reported figures are medians of 3 runs
(peak RSS: max over runs). Then the same with 4 storescu processes at once, 75 files each.

stdout carries only result lines; progress goes to stderr. Last lines:
``ingest_vs_orthanc=``, ``ingest_vs_storescp=``, ``ingest4_vs_orthanc=``,
``ingest4_vs_storescp=`` (box / other, instances per second) and
``box_cpu_ms_per_instance=`` (one association: the CPU of all the box's processes, median
over the runs, per instance). Before them, ``machine_cpus=`` (the CPUs the runs shared), and
each receiver's line ends with ``machine_busy=``: the whole machine's busy share during its
runs (receiver, senders and kernel; 1.00 is every CPU busy), which says whether a receiver
was bound by the CPUs it shared with its senders. Exit status 1 if any run fails (after
printing what was measured). ``--receive-processes N`` sets the box's
dicom.receive_processes (default: the box's own default; ``make bench-ingest
INGEST_ARGS="--receive-processes 0"`` gives one process per core, as on a Pi 4).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from common import (
    RECEIVERS,
    BenchError,
    BoxReceiver,
    Receiver,
    RunResult,
    Summary,
    ct300,
    log,
    prepare_tmp_root,
    run_fresh,
    split,
    summarize,
    warm_page_cache,
)

RUNS = 3
SENDERS = 4
# Per storescu process; a whole 300-instance run normally takes seconds.
SEND_TIMEOUT_S = 600.0


def bench(
    receivers: Sequence[str],
    files: Sequence[Path],
    senders: int,
    runs: int,
    factories: dict[str, Callable[[], Receiver]] = RECEIVERS,
) -> tuple[dict[str, Summary], dict[str, str]]:
    """Measure each receiver ``runs`` times (interleaved). Returns summaries and errors."""
    batches = split(files, senders) if senders > 1 else [list(files)]
    results: dict[str, list[RunResult]] = {name: [] for name in receivers}
    errors: dict[str, str] = {}
    for rep in range(1, runs + 1):
        for name in receivers:
            if name in errors:
                continue
            try:
                r = run_fresh(factories[name], batches, timeout=SEND_TIMEOUT_S)
            except (BenchError, OSError) as exc:
                errors[name] = str(exc)
                log(f"{name} x{senders} run {rep} FAILED: {exc}")
                continue
            results[name].append(r)
            log(
                f"{name} x{senders} run {rep}: {r.wall_s:.3f}s "
                f"({r.instances / r.wall_s:.1f} inst/s, cpu {r.cpu_s:.2f}s, "
                f"rss {r.peak_rss_bytes / 2**20:.0f} MiB)"
            )
    summaries = {name: summarize(rs) for name, rs in results.items() if rs and name not in errors}
    return summaries, errors


def ratio(a: Summary | None, b: Summary | None) -> str | None:
    if a is None or b is None:
        return None
    return f"{a.instances_per_s / b.instances_per_s:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--receivers",
        default="storescp,orthanc,box",
        help="comma-separated subset of storescp,orthanc,box (default: all)",
    )
    ap.add_argument("--runs", type=int, default=RUNS, help="runs per receiver (median)")
    ap.add_argument(
        "--receive-processes",
        type=int,
        default=None,
        help="the box's dicom.receive_processes (default: the box's default)",
    )
    args = ap.parse_args(argv)
    factories = dict(RECEIVERS)
    if args.receive_processes is not None:
        factories["box"] = functools.partial(BoxReceiver, receive_processes=args.receive_processes)
    receivers = [r.strip() for r in args.receivers.split(",") if r.strip()]
    unknown = [r for r in receivers if r not in RECEIVERS]
    if unknown or args.runs < 1:
        ap.error(f"unknown receivers {unknown}" if unknown else "--runs must be >= 1")

    prepare_tmp_root()
    files = ct300()
    warm_page_cache(files)
    log(f"series: {len(files)} files, {sum(f.stat().st_size for f in files) / 2**20:.1f} MiB")

    single, err1 = bench(receivers, files, 1, args.runs, factories)
    for name in receivers:
        if name in single:
            print(single[name].line(), flush=True)
    multi, err4 = bench(receivers, files, SENDERS, args.runs, factories)
    for name in receivers:
        if name in multi:
            print(multi[name].line(f"{name}_{SENDERS}senders"), flush=True)

    prepare_tmp_root()
    errors = {
        **{f"{k} x1": v for k, v in err1.items()},
        **{f"{k} x{SENDERS}": v for k, v in err4.items()},
    }
    lines = [
        ("ingest_vs_orthanc", ratio(single.get("box"), single.get("orthanc"))),
        ("ingest_vs_storescp", ratio(single.get("box"), single.get("storescp"))),
        ("ingest4_vs_orthanc", ratio(multi.get("box"), multi.get("orthanc"))),
        ("ingest4_vs_storescp", ratio(multi.get("box"), multi.get("storescp"))),
        (
            "box_cpu_ms_per_instance",
            f"{single['box'].cpu_ms_per_instance:.2f}" if "box" in single else None,
        ),
    ]
    if errors:
        for what, msg in errors.items():
            print(f"FAILED {what}: {msg}", file=sys.stderr)
        return 1
    if all(value is not None for _, value in lines):
        print(f"machine_cpus={os.cpu_count()}", flush=True)
        for key, value in lines:
            print(f"{key}={value}", flush=True)
    else:
        log("ratios need box, orthanc and storescp; not printed for a subset of receivers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
