"""`make image-test`: the appliance image, booted under qemu, checked from the host.

1. The image (built by `make image` when build/ has none), written onto a card image with
   afra-flash: a box id, a setup code and pre-staged settings that admit this test as a DICOM
   sender. A reference hub runs on the host's loopback; the guest reaches it as 10.0.2.2.
2. Boot: C-ECHO until it is answered (boot_to_echo_s, from qemu's start), the setup page,
   the wizard walked over HTTP with the label's code (password, DICOM, enrolment with the
   hub), health in the dashboard's status, and a study sent with DCMTK's storescu that must
   reach the hub byte for byte: that study is the data partition's marker.
3. A good bundle (a newer version) offered by the hub's policy: downloaded, installed into
   the other slot, booted, kept after its self-test.
4. A bundle whose system does not work (its afra.service cannot start), uploaded on the
   dashboard: installed, booted, failed its self-test, and the box back on the previous
   slot by itself, the marker study still there.
5. A bundle signed with another key, uploaded on the dashboard and offered by the hub:
   refused with a clear message, nothing installed.

It ends with exactly the lines the issue asks for (and writes the console log, timings and
the hub's view into build/imagetest/).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import requests
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from afra import __version__
from afra_image.flash import flash
from afra_image.qemu import Machine, free_port, prepare_disk
from medix.hub.server import HubServer
from medix.models import UpdateOffer

TOP = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("AFRA_BUILD_DIR", TOP / "build"))
COMPATIBLE = "afra-rpi4-arm64"
TEST_AE = "IMAGETEST"
HOST_FROM_GUEST = "10.0.2.2"  # qemu's user network: the host, as the guest sees it
PASSWORD = "Imagetest-Pass-42"
T = TypeVar("T")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def wait_until(what: str, timeout: float, probe: Callable[[], T | None], every: float = 3.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except Exception as exc:  # the box is rebooting, the port is not up yet, ...
            value = None
            last = f"{exc.__class__.__name__}: {exc}"
        else:
            last = "not yet"
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s ({last})")
        time.sleep(every)


# -- bundles ---------------------------------------------------------------------------------


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def make_bundle(
    work: Path,
    name: str,
    version: str,
    *,
    keys: Path,
    root_image: Path | None = None,
    tweak: Callable[[Path], None] | None = None,
) -> Path:
    """A bundle of build/root with its version set (and `tweak` applied), signed by `keys`."""
    bundle_dir = work / f"bundle-{name}"
    shutil.rmtree(bundle_dir, ignore_errors=True)
    bundle_dir.mkdir(parents=True)
    if root_image is None:
        root = work / f"root-{name}"
        shutil.rmtree(root, ignore_errors=True)
        _run(["cp", "-a", "--reflink=auto", str(BUILD / "root"), str(root)])
        os_release = root / "usr/lib/os-release"
        text = re.sub(r"(?m)^IMAGE_VERSION=.*$", f"IMAGE_VERSION={version}", os_release.read_text())
        os_release.write_text(text)
        release = root / "etc/afra-release"
        words = release.read_text().split()
        release.write_text(" ".join([words[0], version, *words[2:]]) + "\n")
        if tweak is not None:
            tweak(root)
        root_image = bundle_dir / "root.img"
        _run(["mkfs.erofs", "-zlz4hc", "--quiet", str(root_image), str(root)])
        shutil.rmtree(root)
    else:
        shutil.copy(root_image, bundle_dir / "root.img")
    shutil.copy(BUILD / "parts/kernel.vfat", bundle_dir / "kernel.img")
    (bundle_dir / "manifest.raucm").write_text(
        f"[update]\ncompatible={COMPATIBLE}\nversion={version}\n"
        f"description=AFRA {version} (image-test: {name})\n\n"
        "[bundle]\nformat=verity\n\n[image.rootfs]\nfilename=root.img\n\n"
        "[image.kernel]\nfilename=kernel.img\n"
    )
    conf = work / f"rauc-{name}.conf"
    conf.write_text(
        f"[system]\ncompatible={COMPATIBLE}\nbootloader=noop\n"
        f"[keyring]\npath={keys / 'ca.pem'}\ncheck-purpose=codesign\n"
    )
    out = work / f"afra-{version}-{name}.raucb"
    out.unlink(missing_ok=True)
    _run(
        [
            "rauc", f"--conf={conf}", "bundle", f"--cert={keys / 'signing.pem'}",
            f"--key={keys / 'signing.key'}", str(bundle_dir), str(out),
        ]
    )  # fmt: skip
    shutil.rmtree(bundle_dir)
    return out


def break_the_service(root: Path) -> None:
    """A system whose afra.service cannot start (a release gone wrong); `afra selftest`
    itself still runs, and must see it."""
    unit = root / "etc/systemd/system/afra.service"
    text = unit.read_text().replace("ExecStart=/opt/afra/venv/bin/afra run", "ExecStart=/bin/false")
    unit.write_text(text)


# -- the box, from outside ----------------------------------------------------------------------


def echo(port: int, timeout: float = 5.0) -> bool:
    ae = AE(ae_title=TEST_AE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="AFRA")
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    return getattr(status, "Status", None) == 0


class Web:
    """The setup page over HTTP, as a browser would use it (session cookie, CSRF tokens)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.session = requests.Session()
        self.session.trust_env = False

    def get(self, path: str) -> requests.Response:
        return self.session.get(self.base + path, timeout=60, allow_redirects=False)

    def _token(self, page: str) -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', page)
        if found is None:
            raise AssertionError("no CSRF token on the page")
        return found.group(1)

    def post(
        self, path: str, data: dict[str, str], *, form_page: str | None = None, **kw: Any
    ) -> requests.Response:
        page = self.session.get(self.base + (form_page or path), timeout=60).text
        data = {**data, "csrf_token": self._token(page)}
        return self.session.post(
            self.base + path, data=data, timeout=kw.pop("timeout", 60), allow_redirects=False, **kw
        )


def walk_wizard(web: Web, code: str, hub: HubServer) -> None:
    steps: list[tuple[str, dict[str, str]]] = [
        ("/claim", {"name": "Image Test", "code": code, "action": "code"}),
        ("/setup/password", {"password": PASSWORD, "confirm": PASSWORD}),
        ("/setup/network", {"action": "keep"}),
        (
            "/setup/dicom",
            {
                "ae_title": "AFRA",
                "port": "11112",
                "pacs_host": HOST_FROM_GUEST,
                "pacs_port": "104",
                "pacs_ae": "PACS",
                "senders": f"{TEST_AE} {HOST_FROM_GUEST}",
                "action": "save",
            },
        ),
    ]
    for path, data in steps:
        answer = web.post(path, data)
        if answer.status_code != 302:
            raise AssertionError(f"{path}: {answer.status_code} {_visible(answer.text)[:300]}")
    url = f"https://{HOST_FROM_GUEST}:{hub.port}"
    answer = web.post(
        "/setup/hub",
        {"url": url, "code": hub.new_pairing_code(), "ca_text": hub.ca_pem_path.read_text()},
        timeout=120,
    )
    if answer.status_code != 200 or "Continue" not in answer.text:
        raise AssertionError(f"enrolment: {answer.status_code} {_visible(answer.text)[:400]}")
    answer = web.post("/setup/summary", {})
    if answer.status_code != 302 or not answer.headers["Location"].endswith("/dashboard"):
        raise AssertionError(f"summary: {answer.status_code}")


def sign_in(web: Web) -> None:
    answer = web.post("/login", {"name": "Image Test", "password": PASSWORD})
    if answer.status_code != 302:
        raise AssertionError(f"sign-in: {answer.status_code} {_visible(answer.text)[:300]}")


def _visible(page: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def upload(web: Web, bundle: Path) -> requests.Response:
    page = web.session.get(web.base + "/settings", timeout=60).text
    if 'name="bundle"' not in page:
        raise AssertionError(f"no update form on the settings page: {_visible(page)[:300]}")
    with bundle.open("rb") as fp:
        return web.session.post(
            web.base + "/settings/update",
            data={"csrf_token": web._token(page), "update_password": PASSWORD},
            files={"bundle": (bundle.name, fp, "application/octet-stream")},
            timeout=900,
            allow_redirects=False,
        )


def data_set(part10: bytes) -> bytes:
    """A Part 10 file's data set: what a sender sends and a store-and-forward box must keep."""
    assert part10[128:132] == b"DICM", "not a Part 10 file"
    group_length = int.from_bytes(part10[140:144], "little")  # (0002,0000) UL, explicit VR
    return part10[144 + group_length :]


def publish(hub: HubServer, bundle: Path, version: str) -> UpdateOffer:
    """The bundle stored on the hub and offered to every node by a new policy."""
    with bundle.open("rb") as fp:
        offer = hub.hub.add_update(
            iter(lambda: fp.read(1 << 20), b""), version=version, compatible=COMPATIBLE,
            limit=4 * 2**30,
        )  # fmt: skip
    hub.hub.publish_update(offer)
    return offer


def box_up(web: Web, port: int) -> bool:
    """The box answers DICOM and serves its page (the page starts a little after DICOM)."""
    return echo(port) and web.get("/login").status_code in (200, 302)


def node_view(hub: HubServer) -> dict[str, Any]:
    nodes = hub.hub.nodes().nodes
    return nodes[0].model_dump(mode="json") if nodes else {}


def update_state(hub: HubServer) -> tuple[str, str, str]:
    """(state of the node's last update, the version it runs, the update's message)."""
    node = node_view(hub)
    update = node.get("update") or {}
    return (
        str(update.get("state", "")),
        str(node.get("software_version", "")),
        str(update.get("message", "")),
    )


# -- the run ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default=os.environ.get("AFRA_IMAGE_VERSION", __version__))
    parser.add_argument("--boot-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    version = args.version
    image = BUILD / f"afra-{version}-arm64.img"
    if not image.exists():
        log(f"{image} is missing: building it (make image)")
        subprocess.run([str(TOP / "image-build/build.sh")], check=True)
    work = BUILD / "imagetest"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results = {"image_boot_ok": 0, "update_kept": 0, "rollback_ok": 0, "bad_bundle_refused": 0}
    timings: dict[str, float] = {}
    boot_to_echo = -1.0

    log("bundles: a good one, one whose system does not start, one signed with another key")
    good_v, bad_v, foreign_v = f"{version}+test.1", f"{version}+test.2", f"{version}+test.3"
    keys = BUILD / "keys"
    other_keys = work / "other-keys"
    subprocess.run([str(TOP / "image-build/devkeys.sh"), str(other_keys), "Not AFRA"], check=True)
    good = make_bundle(work, "good", good_v, keys=keys)
    bad = make_bundle(work, "bad", bad_v, keys=keys, tweak=break_the_service)
    foreign = make_bundle(
        work, "foreign", foreign_v, keys=other_keys, root_image=BUILD / "parts/root.erofs"
    )
    timings["bundles_s"] = time.monotonic() - started

    log("the card: afra-flash with pre-staged settings")
    settings = work / "site.toml"
    settings.write_text(
        "[dicom]\n"
        f'peers = [{{ ae_title = "{TEST_AE}", host = "{HOST_FROM_GUEST}" }}]\n'
        "[study]\nstable_age = 5\n"
        "[storage]\nmin_free_mb = 256\n"
        "[update]\ncheck_interval = 5\nselftest_timeout = 180\nselftest_hub_wait = 120\n"
    )
    card = work / "card.img"
    box, _png, _pdf = flash(image, card, labels=work / "labels", settings=settings)
    prepare_disk(card, work / "disk.img", 8)
    card.unlink()

    hub = HubServer(work / "hub", host="127.0.0.1", server_names=(HOST_FROM_GUEST,))
    hub.start()
    ports = {11112: free_port(), 80: free_port()}
    machine = Machine(work / "disk.img", work / "console.log", forwards=ports)
    web = Web(ports[80])
    try:
        # -- 2. boot ------------------------------------------------------------------------------
        log(f"booting box afra-{box.box_id} under qemu (TCG)")
        t0 = machine.start()
        wait_until("C-ECHO", args.boot_timeout, lambda: echo(ports[11112]), every=1.0)
        boot_to_echo = time.monotonic() - t0
        log(f"C-ECHO answered {boot_to_echo:.1f} s after qemu started")
        claim = wait_until("the setup page", 120, lambda: web.get("/claim"))
        assert claim.status_code == 200 and "Set up this box" in claim.text, claim.status_code
        log(f"setup page served {time.monotonic() - t0:.1f} s after qemu started")
        walk_wizard(web, box.setup_code, hub)
        status = web.get("/api/status").json()
        assert status["health"]["state"], status
        log(f"health reported: {status['health']['state']} ({status['update']['version']})")
        series = work / "study"
        from tests.dicomgen import make_ct_series

        files = make_ct_series(series, n=4, rows=64, cols=64, patient_name="Imagetest^Marker")
        sent = subprocess.run(
            ["storescu", "-aet", TEST_AE, "-aec", "AFRA", "127.0.0.1", str(ports[11112]),
             *map(str, files)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        study_uid = str(dcmread(files[0]).StudyInstanceUID)

        def delivered() -> Any:
            for study in hub.hub.studies().studies:
                if study.study_uid == study_uid and study.state == "committed":
                    return study
            return None

        study = wait_until("the study at the hub", 300, delivered)
        for path in files:
            ds = dcmread(path)
            held = hub.hub.instance_bytes(study.upload_id, str(ds.SOPInstanceUID))
            assert data_set(held) == data_set(path.read_bytes()), f"{path.name} differs at the hub"
        results["image_boot_ok"] = 1
        timings["first_boot_checked_s"] = time.monotonic() - t0
        log(f"study stored, delivered byte for byte (Medis code {study.medis_code})")

        # -- 3. a good update from the hub ------------------------------------------------------
        t1 = time.monotonic()
        offer = publish(hub, good, good_v)
        log(f"the hub offers {good_v} ({offer.size} bytes)")
        wait_until(
            "the good update kept",
            1200,
            lambda: update_state(hub)[:2] == ("kept", good_v),
            every=5,
        )
        results["update_kept"] = 1
        timings["update_kept_s"] = time.monotonic() - t1
        log(f"{good_v} installed, booted and kept ({timings['update_kept_s']:.0f} s)")

        # -- 4. a bundle whose system fails its self-test ----------------------------------------
        t2 = time.monotonic()
        wait_until("the box back up", 300, lambda: box_up(web, ports[11112]))
        sign_in(web)
        answer = upload(web, bad)
        assert answer.status_code == 302, _visible(answer.text)[:400]
        log(f"{bad_v} uploaded and accepted; waiting for its trial and the way back")
        rolled = wait_until(
            "the rollback", 1500, lambda: update_state(hub)[0] == "rolled_back" or None, every=5
        )
        assert rolled
        wait_until("the box back on the kept system", 600, lambda: box_up(web, ports[11112]))
        state, running, message = update_state(hub)
        assert running == good_v, (running, message)
        # U-Boot's view of it: the kept slot B was marked (3 attempts again) before A was
        # tried, and A was marked bad (0 left) when it failed.
        boots = re.findall(r"^afra: booting slot .*$", machine.text(), re.M)
        assert "afra: booting slot A (A 2 left, B 3 left)" in boots, boots
        assert "afra: booting slot B (A 0 left, B 2 left)" in boots, boots
        sign_in(web)
        dashboard = web.get("/dashboard").text
        assert "Imagetest" in dashboard, "the marker study is gone from the dashboard"
        status = web.get("/api/status").json()
        assert status["update"]["version"] == good_v, status["update"]
        results["rollback_ok"] = 1
        timings["rollback_s"] = time.monotonic() - t2
        log(f"rolled back to {running} by itself: {message}")

        # -- 5. a bundle signed with another key ------------------------------------------------
        answer = upload(web, foreign)
        refused = answer.status_code == 400 and "not signed with this box" in answer.text
        log(
            f"foreign bundle on the dashboard: {answer.status_code}: "
            + re.sub(r".*(The update was refused[^.]*\.).*", r"\1", _visible(answer.text))[:200]
        )
        publish(hub, foreign, foreign_v)
        state, running, message = wait_until(
            "the hub's foreign offer refused",
            600,
            lambda: update_state(hub) if update_state(hub)[0] == "refused" else None,
            every=5,
        )
        log(f"foreign bundle from the hub: {state}: {message}")
        if refused and running == good_v and "not signed" in message:
            results["bad_bundle_refused"] = 1
    except (AssertionError, TimeoutError, RuntimeError, requests.RequestException) as exc:
        log(f"FAILED: {exc.__class__.__name__}: {exc}")
    finally:
        machine.stop()
        (work / "hub-nodes.json").write_text(json.dumps(node_view(hub), indent=2))
        hub.stop()
        timings["total_s"] = time.monotonic() - started
        (work / "timings.json").write_text(json.dumps(timings, indent=2))
        log(f"console: {work / 'console.log'}; timings: {json.dumps(timings)}")
    print(f"image_boot_ok={results['image_boot_ok']}")
    print(f"boot_to_echo_s={boot_to_echo:.1f}")
    print(f"update_kept={results['update_kept']}")
    print(f"rollback_ok={results['rollback_ok']}")
    print(f"bad_bundle_refused={results['bad_bundle_refused']}")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
