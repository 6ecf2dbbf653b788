"""make bench-uplink: the box's upload to the reference hub against curl, over a throttled link.

Both go through the same loopback proxy (tests/netproxy.py) at 5 and at 50 Mb/s, in the same
run: curl uploads the series' files as they are, one connection, plain HTTP PUTs to a sink;
the box uploads the same study to the reference hub (a `medix-hub` process) over mutual TLS,
in parts, compressed when that pays. Then one more box run at 50 Mb/s with the connection cut
once in the middle measures what the cut made the box send twice.

Last lines:
    uplink_vs_curl_5mbps=<box study-bytes/s / curl's>
    uplink_vs_curl_50mbps=<same at 50 Mb/s>
    uplink_resent_after_cut=<MB sent twice after one forced cut mid-study>
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    TMP_ROOT,
    HubAdmin,
    afra_process,
    ct300,
    log,
    reference_hub,
)
from tests.netproxy import Proxy
from tests.peers import free_port, storescu

MB = 1 << 20


class _Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_PUT(self) -> None:
        remaining = int(self.headers.get("Content-Length", "0"))
        while remaining:
            remaining -= len(self.rfile.read(min(remaining, 1 << 16)))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def sink() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def curl_upload(files: list[Path], rate_bps: float, work: Path) -> float:
    """Seconds curl takes to PUT every file through the throttled proxy (one connection)."""
    with sink() as port, Proxy(("127.0.0.1", port), rate_bps=rate_bps) as proxy:
        config = work / "curl.cfg"
        config.write_text(
            "".join(
                f'upload-file = "{f}"\nurl = "http://127.0.0.1:{proxy.port}/sink/{f.name}"\n'
                for f in files
            )
        )
        t0 = time.perf_counter()
        subprocess.run(
            ["curl", "-s", "-S", "-o", "/dev/null", "--config", str(config)],
            check=True,
            timeout=3600,
        )
        return time.perf_counter() - t0


def box_upload(
    files: list[Path],
    rate_bps: float,
    work: Path,
    hub: tuple[str, Path, HubAdmin],
    *,
    cut_at: float | None = None,
) -> tuple[float, int]:
    """Seconds from the study's code to the hub's receipt, and bytes that went upstream."""
    from afra.uplink.client import enrol
    from afra.uplink.identity import NodeIdentity

    hub_url, ca, admin = hub
    host_port = hub_url.removeprefix("https://").split(":")
    data = work / f"box-{int(rate_bps)}-{'cut' if cut_at else 'plain'}"
    with Proxy((host_port[0], int(host_port[1])), rate_bps=rate_bps) as proxy:
        enrol(
            NodeIdentity(data / "identity"),
            hub_url=f"https://127.0.0.1:{proxy.port}",
            pairing_code=admin.pairing_code(),
            ca_file=ca,
            node_name="afra-bench",
        )
        dicom_port = free_port()
        config = (
            f'[box]\ndata_dir = "{data}"\nlog_level = "WARNING"\n'
            f'[dicom]\nbind = "127.0.0.1"\nport = {dicom_port}\nallow_any_peer = true\n'
            "[storage]\nmin_free_mb = 0\n[study]\nstable_age = 1\nscan_interval = 0.2\n"
            "[hub]\nheartbeat_interval = 3600\nretry_base = 0.5\nretry_cap = 2\n"
            f'[web]\nbind = "127.0.0.1"\nport = {free_port()}\n'
        )
        with afra_process(data, config) as box:
            storescu("127.0.0.1", dicom_port, files)
            db = sqlite3.connect(f"file:{data / 'index.sqlite'}?mode=ro", uri=True)
            try:
                started: float | None = None
                up_at_start = 0
                while True:
                    states = [r[0] for r in db.execute("SELECT state FROM studies")]
                    if started is None and states and states[0] in ("queued", "uploading"):
                        started = time.perf_counter()
                        up_at_start = proxy.bytes_up
                        if cut_at is not None:
                            # About mid-study on the wire (the series compresses ~2.6:1).
                            total = sum(f.stat().st_size for f in files)
                            proxy.cut_after(int(total * cut_at / 2.6))
                    if states == ["delivered"]:
                        assert started is not None
                        return time.perf_counter() - started, proxy.bytes_up - up_at_start
                    if box.poll() is not None:
                        raise RuntimeError(f"the box stopped:\n{(data / 'box.log').read_text()}")
                    time.sleep(0.05)
            finally:
                db.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300, help="how much of the series")
    args = parser.parse_args()
    series = ct300()[: args.instances]
    size = sum(f.stat().st_size for f in series)
    TMP_ROOT.mkdir(parents=True, exist_ok=True)
    results: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(_tempdir()))
        hub = stack.enter_context(reference_hub(work))
        uncut_bytes = 0
        for label, rate in (("5mbps", 5e6), ("50mbps", 50e6)):
            curl_s = curl_upload(series, rate, work)
            box_s, sent = box_upload(series, rate, work, hub)
            log(
                f"{label}: {size / MB:.1f} MB study; curl {curl_s:.1f} s "
                f"({size / curl_s / MB:.2f} MB/s), box {box_s:.1f} s ({size / box_s / MB:.2f} "
                f"MB/s, {sent / MB:.1f} MB on the wire, ratio {size / max(sent, 1):.2f})"
            )
            results[label] = curl_s / box_s
            if label == "50mbps":
                uncut_bytes = sent
        _cut_s, cut_bytes = box_upload(series, 50e6, work, hub, cut_at=0.5)
        resent = max(cut_bytes - uncut_bytes, 0) / MB
        log(f"cut run: {cut_bytes / MB:.1f} MB on the wire against {uncut_bytes / MB:.1f} MB")
    print(f"uplink_vs_curl_5mbps={results['5mbps']:.2f}")
    print(f"uplink_vs_curl_50mbps={results['50mbps']:.2f}")
    print(f"uplink_resent_after_cut={resent:.2f}")
    return 0


@contextlib.contextmanager
def _tempdir() -> Iterator[str]:
    import tempfile

    path = tempfile.mkdtemp(prefix="uplink-", dir=TMP_ROOT)
    try:
        yield path
    finally:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
