"""`make test-power`: power cuts on the appliance image under qemu, and the books afterwards.

The kill suite's check (tests/faults/harness.py) on the real image: the "kill" is SIGKILL to
qemu, so the guest's page cache is lost as in a power cut. What the guest flushed, qemu has
written to the disk image; what it did not is gone. (Writes qemu had already made to the
image without a flush survive too, as on a card without a volatile write cache.)

1. A card written by afra-flash with pre-staged settings (this host as a DICOM peer at
   10.0.2.2, a short study.stable_age, quick upload retries), a reference hub on the host's
   loopback, one boot: the wizard walked over HTTP, enrolment with the hub, and a study
   sent and delivered. That boot sets the cut windows: the boot-to-echo time, how long a
   study takes to send, how long from its last acknowledgement to its commit at the hub.
2. N rounds on the same disk, the phases in turn, each cut at a random moment of a seeded
   random.Random:
   - boot: from qemu's start up to the last measured boot-to-echo time;
   - receive: once C-ECHO answers, a modality (pynetdicom, one association, the files' own
     bytes) sends a new study and the cut comes while it sends; every C-STORE answered
     0x0000 goes into the books with its data set bytes;
   - upload: after a study was acknowledged whole, while the box completes and uploads it.
   Every boot after a cut must answer C-ECHO within the boot timeout: a box that does not
   come back is a failure, reported with its console's tail. After each cut the data and
   boot file systems are checked on a copy, as the box's boot checks them (the console
   cannot say: systemd-fsck writes to the journal, which is in RAM and lost at the cut).
3. One more boot, until every acknowledged instance is in a committed upload at the hub (or
   the wait ends), then the books, by the kill suite's rules: every acknowledged instance
   byte-exact at the hub (the box's own store is on the guest's disk, so here it must be
   delivered), none in two committed uploads, no committed upload short of instances or
   with bytes other than those acknowledged.

It ends with the line `power_cuts=<n> power_cut_acked_lost=<n>`; the consoles (one per boot),
the rounds and the summary are in build/powercut/.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
from pydicom import dcmread
from tests.dicomgen import make_ct_series
from tests.faults.harness import PHASES, Books, dataset_bytes, send_study

from afra import __version__
from afra_image.flash import flash
from afra_image.imagetest import (
    BUILD,
    HOST_FROM_GUEST,
    TEST_AE,
    Web,
    echo,
    log,
    wait_until,
    walk_wizard,
)
from afra_image.qemu import Machine, free_port, prepare_disk
from medix.hub.server import HubServer

INSTANCES = 12  # a small study: long enough on the wire for a cut to land inside it
SETTINGS = (
    "[dicom]\n"
    f'peers = [{{ ae_title = "{TEST_AE}", host = "{HOST_FROM_GUEST}" }}]\n'
    "[study]\nstable_age = 2\nscan_interval = 1\n"
    "[storage]\nmin_free_mb = 256\n"
    # the retry state is in the index, so it outlives the cuts: keep it short
    "[hub]\nretry_base = 1\nretry_cap = 10\n"
)
# What the console says about a disk after a cut (the kernel's lines; systemd-fsck's own go
# to the journal, which is in RAM) and which slot U-Boot chose.
CONSOLE_NOTES = re.compile(
    r"recovery complete|recovering journal|orphan|EXT4-fs (error|warning)|FAT-fs|Dirty bit|"
    r"fsck\.(fat|vfat|ext4)|with errors|UNEXPECTED INCONSISTENCY|I/O error|"
    r"(?-i:FAILED)|Timed out|Dependency failed|"
    r"afra: (bootstate|no readable|no slot|slot . cannot|booting slot)",
    re.IGNORECASE,
)
TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s*")
ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]?|\[[0-9;]*m|\r")
KERNEL_TIME = re.compile(r"^\[\s*(\d+\.\d+)\]", re.MULTILINE)


# What e2fsck and fsck.fat say of a file system after any power cut: a journal to replay, the
# dirty bit a rw-mounted FAT carries, orphans (files unlinked while open). Any other line is a
# repair, and a finding.
FSCK_EXPECTED = re.compile(
    r"^(e2fsck \d|fsck\.fat \d|Pass \d|\S+: recovering journal|\S+: \d+/\d+ files|"
    r"\S+: \d+ files, \d+/\d+ clusters|(\S+: )?(Clearing|Truncating) orphaned inode|"
    r"(0x41: )?Dirty bit is set|Fs was not properly unmounted|Automatically removing dirty bit|"
    # a consequence, not a repair of its own: those have lines of their own ("Fix? yes")
    r"\*\*\* Filesystem was changed \*\*\*|Writing changes\.|\S+: \*+ FILE SYSTEM WAS MODIFIED|$)"
)
SECTOR = 512


class BootFailure(RuntimeError):
    """A boot after a cut that did not answer C-ECHO in time: the box did not come back."""


@dataclass
class Round:
    number: int
    phase: str
    cut_after_s: float = 0.0  # from qemu's start
    boot_to_echo_s: float | None = None
    acked: int = 0
    sent: int = 0
    detail: str = ""
    console: list[str] = field(default_factory=list)  # the notes of this boot's console
    fsck: list[str] = field(default_factory=list)  # what e2fsck / fsck.fat said after the cut
    took_s: float = 0.0


def console_lines(text: str) -> list[str]:
    """The console as plain lines: no colours, no cursor moves, no empty lines."""
    lines = (ESCAPES.sub("", line).strip() for line in text.splitlines())
    return [line for line in lines if line]


def console_notes(text: str) -> list[str]:
    """The console's lines about file systems, units that failed and the boot state, without
    time stamps."""
    lines = (TIMESTAMP.sub("", line) for line in console_lines(text))
    return [line for line in lines if CONSOLE_NOTES.search(line)]


def console_tail(text: str, lines: int = 30) -> str:
    return "\n".join(console_lines(text)[-lines:])


def copy_partition(disk: Path, name: str, to: Path) -> None:
    """Partition `name` of `disk` into the file `to`, holes kept (only data is read)."""
    table = subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, check=True)
    parts = json.loads(table.stdout)["partitiontable"]["partitions"]
    part = next(p for p in parts if p.get("name") == name)
    start, end = int(part["start"]) * SECTOR, (int(part["start"]) + int(part["size"])) * SECTOR
    with disk.open("rb") as src, to.open("wb") as out:
        out.truncate(end - start)
        pos = start
        while pos < end:
            try:
                data = os.lseek(src.fileno(), pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            if data >= end:
                break
            hole = min(os.lseek(src.fileno(), data, os.SEEK_HOLE), end)
            src.seek(data)
            out.seek(data - start)
            while data < hole:
                chunk = src.read(min(hole - data, 1 << 20))
                out.write(chunk)
                data += len(chunk)
            pos = hole


def check_disk(disk: Path, scratch: Path) -> list[str]:
    """The data and boot file systems as a cut left them, checked and repaired on a copy
    (the box's own boot repairs the real ones): what e2fsck and fsck.fat said, each line
    marked `REPAIR:` when it is more than a power cut always leaves."""
    said: list[str] = []
    # as systemd-fsck runs them at boot (-a, for e2fsck -p: only what is safe without a
    # person), e2fsck also forced (-f) through a file system the journal left marked clean
    for name, check in (("afra-data", ["e2fsck", "-fp"]), ("afra-boot", ["fsck.fat", "-a"])):
        copy = scratch / f"{name}.img"
        copy_partition(disk, name, copy)
        done = subprocess.run([*check, str(copy)], capture_output=True, text=True, check=False)
        for line in (done.stdout + done.stderr).splitlines():
            line = line.strip().replace(str(copy), name)
            if line and not line.startswith(("e2fsck 1.", "fsck.fat 4.")):
                said.append(line if FSCK_EXPECTED.match(line) else f"REPAIR: {line}")
        if done.returncode not in (0, 1):  # 1: corrected (its lines say what); 4: left for a
            # person, and the box's boot would stop there ("UNEXPECTED INCONSISTENCY")
            said.append(f"REPAIR: {name}: {check[0]} exited {done.returncode}")
        copy.unlink()
    return said


def fsck_summary(said: list[str]) -> str:
    """One line for the log: the repairs, or only what every cut leaves."""
    repairs = [line for line in said if line.startswith("REPAIR:")]
    if repairs:
        return "; ".join(repairs)
    usual = [n for n in ("recovering journal", "orphan", "Dirty bit") if any(n in x for x in said)]
    return ("usual: " + ", ".join(usual)) if usual else "clean"


class PowerCuts:
    def __init__(self, work: Path, hub: HubServer, *, seed: int, boot_timeout: float) -> None:
        self.work = work
        self.hub = hub
        self.rng = random.Random(seed)  # noqa: S311 - reproducible cut moments, not secrets
        self.boot_timeout = boot_timeout
        self.books = Books()
        self.round_of: dict[str, int] = {}  # SOP Instance UID -> the round that sent it
        self.ports = {11112: free_port(), 80: free_port()}
        self.disk = work / "disk.img"
        self.rounds: list[Round] = []
        self.other_fsck: dict[str, list[str]] = {}  # after the setup and the last boot's cuts
        self.boots = 0
        self._studies = 0
        # the cut windows, measured on the setup boot (boot-to-echo again at every boot)
        self.boot_window = 0.0
        self.send_window = 0.0
        self.upload_window = 0.0

    # -- the machine ----------------------------------------------------------------------

    def power_on(self, name: str) -> Machine:
        self.boots += 1
        machine = Machine(
            self.disk, self.work / f"console-{self.boots:03d}-{name}.log", forwards=self.ports
        )
        machine.start()
        return machine

    def cut(self, machine: Machine) -> float:
        """SIGKILL to qemu: the power cut. Returns the time since qemu started."""
        proc = machine.proc
        assert proc is not None
        at = time.monotonic() - machine.started
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        return at

    def wait_echo(self, machine: Machine) -> float:
        """Seconds from qemu's start to the first C-ECHO answered; BootFailure if none comes
        within the boot timeout (a watchdog reset on the way is the box's own business)."""
        deadline = machine.started + self.boot_timeout
        while True:
            try:
                if echo(self.ports[11112]):
                    break
            except Exception:  # noqa: S110 - not listening yet: the box is still booting
                pass
            proc = machine.proc
            gone = proc is not None and proc.poll() is not None
            if gone or time.monotonic() > deadline:
                why = "qemu exited" if gone else f"no C-ECHO within {self.boot_timeout:.0f} s"
                text = machine.text()
                notes = "\n".join(console_notes(text))
                raise BootFailure(
                    f"{why}; console {machine.console.name}, its notes:\n{notes}\n"
                    f"and its tail:\n{console_tail(text)}"
                )
            time.sleep(1.0)  # polling: the next C-ECHO attempt
        took = time.monotonic() - machine.started
        self.boot_window = took
        return took

    # -- a modality --------------------------------------------------------------------------

    def new_study(self) -> list[Path]:
        self._studies += 1
        name = f"power-{self._studies:04d}"
        return make_ct_series(
            self.work / "sent" / name,
            n=INSTANCES,
            rows=64,
            cols=64,
            patient_id=name,
            patient_name=f"Powercut^{self._studies:04d}",
            seed=self._studies,
        )

    def send(self, files: list[Path], round_number: int) -> int:
        """`files` on one association, as the kill harness sends them; each 0x0000 is
        written in the books. Returns how many were acknowledged."""
        return send_study(
            "127.0.0.1",
            self.ports[11112],
            files,
            self.books,
            aet=TEST_AE,
            timeout=30,
            acked_one=lambda uid: self.round_of.__setitem__(uid, round_number),
        )

    # -- the hub's view ----------------------------------------------------------------------

    def committed(self) -> dict[str, list[bytes]]:
        """SOP Instance UID -> the data set of each copy in a committed upload."""
        at_hub: dict[str, list[bytes]] = {}
        for upload in self.hub.studies():
            if upload["state"] != "committed":
                continue
            for row in self.hub.hub.store.instances(upload["upload_id"]):
                data = self.hub.instance_bytes(upload["upload_id"], row.sop_instance_uid)
                at_hub.setdefault(row.sop_instance_uid, []).append(dataset_bytes(data))
        return at_hub

    def study_at_hub(self, study_uid: str) -> str:
        states = [s["state"] for s in self.hub.studies() if s["study_uid"] == study_uid]
        return ",".join(states) or "none"

    def all_delivered(self) -> bool:
        return set(self.books.acked) <= set(self.committed())

    # -- the setup boot ----------------------------------------------------------------------

    def setup(self, code: str) -> None:
        machine = self.power_on("setup")
        try:
            log("setup boot: C-ECHO, the wizard, enrolment, one study to the hub")
            echo_s = self.wait_echo(machine)
            log(f"C-ECHO answered {echo_s:.1f} s after qemu started")
            web = Web(self.ports[80])
            wait_until("the setup page", 180, lambda: web.get("/claim").status_code == 200)
            walk_wizard(web, code, self.hub)
            files = self.new_study()
            t0 = time.monotonic()
            acked = self.send(files, 0)
            t1 = time.monotonic()
            if acked != len(files):
                raise AssertionError(f"setup study: {acked} of {len(files)} acknowledged")
            wanted = set(self.books.acked)
            wait_until("the setup study at the hub", 600, lambda: wanted <= set(self.committed()))
            t2 = time.monotonic()
            self.send_window, self.upload_window = t1 - t0, t2 - t1
            log(
                f"enrolled; setup study sent in {self.send_window:.1f} s, committed at the hub "
                f"{self.upload_window:.1f} s after its last acknowledgement"
            )
        finally:
            self.cut(machine)  # the end of the setup boot is a cut too (not counted)
            self.other_fsck["setup"] = check_disk(self.disk, self.work)

    # -- one round -------------------------------------------------------------------------

    def round(self, number: int) -> Round:
        phase = PHASES[(number - 1) % len(PHASES)]
        this = Round(number, phase)
        started = time.monotonic()
        machine = self.power_on(phase)
        cut = False
        try:
            if phase == "boot":
                delay = self.rng.uniform(0.0, self.boot_window)
                threading.Event().wait(delay)  # the random moment: the point of it, not a wait
                this.cut_after_s = self.cut(machine)
                this.detail = f"cut {delay:.1f} s into the boot ({where(machine.text())})"
            else:
                this.boot_to_echo_s = self.wait_echo(machine)
                files = self.new_study()
                this.sent = len(files)
                study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
                if phase == "receive":
                    delay = self.rng.uniform(0.0, self.send_window)
                    cut_at: list[float] = []
                    timer = threading.Timer(delay, lambda: cut_at.append(self.cut(machine)))
                    sent_at = time.monotonic()
                    timer.start()
                    this.acked = self.send(files, number)
                    finished = time.monotonic() - sent_at
                    timer.join()
                    this.cut_after_s = cut_at[0]
                    late = " (after the send had ended)" if finished < delay else ""
                    this.detail = (
                        f"cut {delay:.2f} s into the send{late}, "
                        f"{this.acked}/{this.sent} acknowledged"
                    )
                else:
                    sent_at = time.monotonic()
                    this.acked = self.send(files, number)
                    if this.acked == this.sent:  # a whole send just after boot: the next
                        self.send_window = time.monotonic() - sent_at  # receive cut's window
                    delay = self.rng.uniform(0.0, self.upload_window)
                    threading.Event().wait(delay)  # the random moment
                    this.cut_after_s = self.cut(machine)
                    this.detail = (
                        f"{this.acked}/{this.sent} acknowledged, cut {delay:.1f} s later "
                        f"(the study at the hub: {self.study_at_hub(study_uid)})"
                    )
            cut = True
        finally:
            if machine.proc is not None and machine.proc.poll() is None:
                self.cut(machine)
            this.console = console_notes(machine.text())
            this.fsck = check_disk(self.disk, self.work)
            this.took_s = time.monotonic() - started
            if cut:  # a round whose boot failed had no cut of its own
                self.books.kills += 1
                self.books.by_phase[phase] += 1
            self.rounds.append(this)
        return this

    # -- the end ------------------------------------------------------------------------------

    def settle(self, timeout: float) -> tuple[float, list[str]]:
        """The last boot, until every acknowledged instance is committed at the hub or the
        wait ends. Returns the boot-to-echo time and this boot's console notes."""
        machine = self.power_on("settle")
        try:
            echo_s = self.wait_echo(machine)
            log(f"last boot: C-ECHO after {echo_s:.1f} s; waiting for every delivery")
            try:
                wait_until("every acknowledged instance at the hub", timeout, self.all_delivered)
            except TimeoutError as exc:
                log(str(exc))
            return echo_s, console_notes(machine.text())
        finally:
            self.cut(machine)
            self.other_fsck["last boot"] = check_disk(self.disk, self.work)

    def verdict(self) -> dict[str, Any]:
        """The kill suite's rules (tests/faults/harness.py KillHarness.verdict), with the hub
        as the only place an acknowledged instance may be."""
        at_hub = self.committed()
        partial = 0
        for upload in self.hub.studies():
            if upload["state"] == "committed" and (
                upload["stored_instances"] != upload["instance_count"]
            ):
                partial += 1
        duplicates = sum(len(copies) - 1 for copies in at_hub.values() if len(copies) > 1)
        lost: list[str] = []
        for uid, sent in self.books.acked.items():
            copies = at_hub.get(uid)
            if not copies:
                lost.append(uid)
            elif any(copy != sent for copy in copies):
                partial += 1
        return {
            "acked": len(self.books.acked),
            "acked_lost": len(lost),
            "hub_duplicates": duplicates,
            "partial_uploads": partial,
            "lost": [
                {"sop": uid, "study": self.books.study_of[uid], "round": self.round_of[uid]}
                for uid in lost
            ],
        }


def where(text: str) -> str:
    """How far a boot got, by its console: the kernel's clock and the last line."""
    stamps = KERNEL_TIME.findall(text)
    if not stamps:
        return "in U-Boot" if "afra: booting slot" in text else "before U-Boot's script"
    last = TIMESTAMP.sub("", console_lines(text)[-1])[:72]
    return f"kernel clock {float(stamps[-1]):.1f} s, console: {last}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cuts", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--version", default=os.environ.get("AFRA_IMAGE_VERSION", __version__))
    parser.add_argument("--boot-timeout", type=float, default=420.0)
    parser.add_argument("--settle-timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    started = time.monotonic()
    image = BUILD / f"afra-{args.version}-arm64.img"
    if not image.exists():
        print(f"{image} is missing: make image first", file=sys.stderr)
        return 2
    work = BUILD / "powercut"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # the hub's log (a cut ends its connections mid-request) goes to a file, not the terminal
    logging.basicConfig(
        filename=work / "host.log", level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    log(f"seed {seed}; {args.cuts} cuts; work in {work}")

    settings = work / "site.toml"
    settings.write_text(SETTINGS)
    card = work / "card.img"
    box, _png, _pdf = flash(image, card, labels=work / "labels", settings=settings)
    prepare_disk(card, work / "disk.img", 8)
    card.unlink()

    hub = HubServer(work / "hub", host="127.0.0.1", server_names=(HOST_FROM_GUEST,))
    hub.start()
    run = PowerCuts(work, hub, seed=seed, boot_timeout=args.boot_timeout)
    failures: list[str] = []
    settle_echo: float | None = None
    verdict: dict[str, Any] = {}
    try:
        log(f"box afra-{box.box_id}")
        run.setup(box.setup_code)
        for number in range(1, args.cuts + 1):
            this = run.round(number)
            boot = f"echo {this.boot_to_echo_s:.1f} s; " if this.boot_to_echo_s else ""
            notes = "; ".join(this.console) or "-"
            log(
                f"cut {number}/{args.cuts} {this.phase}: {boot}{this.detail}; console: {notes}; "
                f"fsck after the cut: {fsck_summary(this.fsck)}"
            )
        settle_echo, last_notes = run.settle(args.settle_timeout)
        log(f"last boot's console: {'; '.join(last_notes) or '-'}")
    except BootFailure as exc:
        after = f"cut {run.books.kills}" if run.books.kills else "flashing (the setup boot)"
        failures.append(f"the box did not come back after {after}: {exc}")
    except (AssertionError, TimeoutError, RuntimeError, requests.RequestException) as exc:
        failures.append(f"{exc.__class__.__name__}: {exc}")
    finally:
        try:
            verdict = run.verdict()
        finally:
            hub.stop()
    for failure in failures:
        log(f"FAILED: {failure}")
    took = time.monotonic() - started
    cuts = run.books.kills
    per_cut = [r.took_s for r in run.rounds]
    echoes = [r.boot_to_echo_s for r in run.rounds if r.boot_to_echo_s]
    summary = {
        "seed": seed,
        "cuts": cuts,
        "by_phase": run.books.by_phase,
        "windows_s": {
            "boot": run.boot_window,
            "send": run.send_window,
            "upload": run.upload_window,
        },
        "verdict": verdict,
        "failures": failures,
        "duration_s": took,
        "rounds": [asdict(r) for r in run.rounds],
        "last_boot_to_echo_s": settle_echo,
        "fsck_after_setup_and_last_boot": run.other_fsck,
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    for lost in verdict.get("lost", []):
        log(f"lost: {lost['sop']} of study {lost['study']} (sent in cut round {lost['round']})")
    print(f"seed={seed}")
    print(" ".join(f"cuts_{phase}={n}" for phase, n in run.books.by_phase.items()))
    print(f"acked={verdict.get('acked', 0)} boots_failed={sum('come back' in f for f in failures)}")
    print(
        f"hub_duplicates={verdict.get('hub_duplicates', 0)} "
        f"partial_uploads={verdict.get('partial_uploads', 0)}"
    )
    if echoes:
        print(f"boot_to_echo_s min={min(echoes):.1f} max={max(echoes):.1f}")
    if per_cut:
        by_phase = {phase: [r.took_s for r in run.rounds if r.phase == phase] for phase in PHASES}
        print(
            f"per_cut_s mean={sum(per_cut) / len(per_cut):.1f} max={max(per_cut):.1f} "
            + " ".join(f"{p}={sum(t) / len(t):.1f}" for p, t in by_phase.items() if t)
        )
    checks = [(f"cut {r.number}", r.fsck) for r in run.rounds] + list(run.other_fsck.items())
    repairs = [(when, x) for when, said in checks for x in said if x.startswith("REPAIR:")]
    for when, line in repairs:
        log(f"after {when}: {line}")
    replays = sum(any("recovering journal" in x for x in r.fsck) for r in run.rounds)
    print(f"fsck_journal_replays={replays} fsck_repairs={len(repairs)}")
    print(f"duration_s={took:.0f}")
    lost_count = int(verdict.get("acked_lost", len(run.books.acked)))
    print(f"power_cuts={cuts} power_cut_acked_lost={lost_count}")
    bad = failures or lost_count or verdict.get("hub_duplicates") or verdict.get("partial_uploads")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
