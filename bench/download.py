"""make bench-download: a study download the hub asks for, against the same work done by hand.

Orthanc (the PACS) holds the synthetic CT series; a reference hub (`medix-hub` process) and
the box (`afra run` process, enrolled, Orthanc as its PACS) run on loopback. In the same run:

- by hand: DCMTK `movescu` retrieves the study from Orthanc into a folder (its own storage
  SCP), `zip -r` packs the folder, and curl uploads the zip to the reference hub's file API
  with the node's certificate (register, the parts in one connection, commit);
- the box: the hub queues a `download` command; timed from the command until the hub's
  webhook log holds DownloadSaved (the box moves, zips and uploads, overlapping the steps).

Both runs are repeated (`--runs`, alternating) and the medians compared. Last line exactly:
    download_vs_manual=<box seconds / manual seconds>   (target <= 1.0)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import TMP_ROOT, HubAdmin, afra_process, ct300, log, reference_hub
from tests.peers import Orthanc, free_port

MB = 1 << 20
PART = 8 * MB


@contextlib.contextmanager
def box_process(
    work: Path, hub: str, ca: Path, admin: HubAdmin, orthanc: Orthanc, port: int
) -> Iterator[Path]:
    from afra.uplink.client import enrol
    from afra.uplink.identity import NodeIdentity

    data = work / "box"
    enrol(
        NodeIdentity(data / "identity"),
        hub_url=hub,
        pairing_code=admin.pairing_code(),
        ca_file=ca,
        node_name="afra-bench",
    )
    config = (
        f'[box]\ndata_dir = "{data}"\nlog_level = "WARNING"\n'
        f'[dicom]\nae_title = "AFRA"\nbind = "127.0.0.1"\nport = {port}\nallow_any_peer = true\n'
        f'[pacs]\nae_title = "{orthanc.aet}"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
        "[storage]\nmin_free_mb = 0\n"
        "[hub]\nheartbeat_interval = 3600\ncommand_poll_s = 25\n"
        '[downloads]\nallow_addresses = ["127.0.0.0/8"]\n'
        "[web]\nenabled = false\n"
    )
    with afra_process(data, config):
        time.sleep(1.0)  # the command long poll is open
        yield data


def box_download(admin: HubAdmin, hub: str, study_uid: str, run: int) -> float:
    node = admin.call("GET", "/admin/nodes")["nodes"][0]["id"]
    userid = f"bench-{run}"
    args = {
        "StudyInstanceUID": study_uid,
        "WebhookUri": f"{hub}/webhook/v1/pacs/afra",
        "WebhookHeaders": {"authorization": "bench", "userid": userid, "kcode": "BENCH"},
    }
    start = time.perf_counter()
    admin.call("POST", f"/admin/nodes/{node}/commands", {"type": "download", "args": args})
    while True:
        posts = [
            w["body"]
            for w in admin.call("GET", "/admin/webhooks")["webhooks"]
            if w["body"].get("headers", {}).get("userid") == userid
        ]
        statuses = [int(p["Status"]) for p in posts]
        if 7 in statuses:
            took = time.perf_counter() - start
            saved = [f for f in admin.call("GET", "/admin/files")["files"] if f["state"] == "saved"]
            log(f"box: {took:.2f} s ({(saved[-1]['size'] or 0) / MB:.0f} MB zip)")
            return took
        if any(s < 0 for s in statuses):
            raise RuntimeError(f"the box's download failed: {statuses}")
        if time.perf_counter() - start > 600:
            raise RuntimeError("the box's download took over 10 minutes")
        time.sleep(0.05)


def manual_download(
    work: Path,
    orthanc: Orthanc,
    move_port: int,
    study_uid: str,
    hub: str,
    ca: Path,
    box: Path,
    run: int,
) -> float:
    folder = work / f"manual-{run}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    archive = work / f"manual-{run}.zip"
    archive.unlink(missing_ok=True)
    cert = [
        "--cert",
        str(box / "identity" / "node.crt"),
        "--key",
        str(box / "identity" / "node.key"),
    ]
    start = time.perf_counter()
    subprocess.run(
        [
            "movescu",
            "-q",
            "-S",
            "-aet",
            "MOVESCU",
            "-aem",
            "MOVESCU",
            "-aec",
            orthanc.aet,
            "--port",
            str(move_port),
            "-od",
            str(folder),
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study_uid}",
            "127.0.0.1",
            str(orthanc.dicom_port),
        ],
        check=True,
    )
    moved = time.perf_counter()
    subprocess.run(["zip", "-r", "-q", str(archive), "."], cwd=folder, check=True)
    zipped = time.perf_counter()
    size = archive.stat().st_size
    registered = subprocess.run(
        [
            "curl",
            "-s",
            "-S",
            "-f",
            "--cacert",
            str(ca),
            *cert,
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps({"job_id": f"manual-{run}", "name": "study.zip", "part_size": PART}),
            f"{hub}/medix/v1/files",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    file_id = json.loads(registered.stdout)["file_id"]
    config = work / f"curl-{run}.cfg"
    lines: list[str] = []
    parts = max(1, -(-size // PART))
    whole = hashlib.sha256()
    with archive.open("rb") as fp:
        for n in range(parts):
            chunk = fp.read(PART)
            whole.update(chunk)
            part = work / f"part-{run}-{n}"
            part.write_bytes(chunk)
            if lines:
                lines.append("next")
            lines += [
                f'url = "{hub}/medix/v1/files/{file_id}/parts/{n}"',
                f'upload-file = "{part}"',
                f'header = "X-Medix-Part-SHA256: {hashlib.sha256(chunk).hexdigest()}"',
                'header = "Content-Encoding: identity"',
                f'cacert = "{ca}"',
                f'cert = "{cert[1]}"',
                f'key = "{cert[3]}"',
                'output = "/dev/null"',
                "fail",
                "silent",
                "show-error",
            ]
    config.write_text("\n".join(lines) + "\n")
    subprocess.run(["curl", "--config", str(config)], check=True)
    digest = whole.hexdigest()
    subprocess.run(
        [
            "curl",
            "-s",
            "-S",
            "-f",
            "-o",
            "/dev/null",
            "--cacert",
            str(ca),
            *cert,
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps({"size": size, "sha256": digest, "parts": parts}),
            f"{hub}/medix/v1/files/{file_id}/commit",
        ],
        check=True,
    )
    end = time.perf_counter()
    log(
        f"by hand: movescu {moved - start:.2f} s, zip {zipped - moved:.2f} s, "
        f"curl {end - zipped:.2f} s ({size / MB:.0f} MB zip)"
    )
    return end - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200, help="instances of the series")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    series = ct300()[: args.instances]
    from pydicom import dcmread

    study_uid = str(dcmread(series[0], stop_before_pixels=True).StudyInstanceUID)
    size = sum(f.stat().st_size for f in series)
    TMP_ROOT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="download-", dir=TMP_ROOT))
    try:
        box_port, move_port = free_port(), free_port()
        with (
            Orthanc(
                aet="ORTHANC",
                modalities={
                    "AFRA": ("AFRA", "127.0.0.1", box_port),
                    "MOVESCU": ("MOVESCU", "127.0.0.1", move_port),
                },
                tmp_root=work,
            ) as orthanc,
            reference_hub(work) as (hub, ca, admin),
        ):
            orthanc.upload_many(series)
            with box_process(work, hub, ca, admin, orthanc, box_port) as box:
                manual, boxed = [], []
                for run in range(args.runs):
                    manual.append(
                        manual_download(work, orthanc, move_port, study_uid, hub, ca, box, run)
                    )
                    boxed.append(box_download(admin, hub, study_uid, run))
                    log(
                        f"run {run}: {len(series)} instances, {size / MB:.0f} MB; "
                        f"by hand {manual[-1]:.2f} s, box {boxed[-1]:.2f} s"
                    )
        m, b = statistics.median(manual), statistics.median(boxed)
        print(f"by hand (movescu, zip -r, curl): median {m:.2f} s over {args.runs} runs")
        print(f"box (C-MOVE, zip and upload overlapped): median {b:.2f} s")
        print(f"download_vs_manual={b / m:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
