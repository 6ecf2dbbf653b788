"""What the web app keeps on disk, under `<data_dir>/web/`, and nothing else.

    setup-code.hash   the label's setup code, hashed (written when the image is made)
    admin.hash        the admin password, hashed
    secret.key        the key that signs session cookies
    progress.json     the wizard's progress, with a schema version (a reboot resumes)
    lockout.json      failed guesses of the setup code or password (a reboot does not reset)
    audit.sqlite      the audit log (audit.py)

Secrets are hashed with scrypt from the standard library: memory-hard, so a stolen card is
slow to attack on GPUs, and no compiled dependency to build for the Pi (argon2 would be the
choice if a dependency were free). Every file is written whole (temp, fsync, rename), mode 0600.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from afra.clock import Clock
from afra.medis.codes import format_code, new_code, parse_code
from medix.hub import ca

WEB_DIR = "web"
SCHEMA_VERSION = 1
# The wizard's steps after the claim, in order. "hub" may be skipped and done later.
STEPS = ("password", "network", "dicom", "hub", "summary")
SETUP_CODE_FILE = "setup-code.hash"
ADMIN_FILE = "admin.hash"

# scrypt cost: 16 MiB and about 0.05 s on a laptop, 0.2-0.3 s on a Raspberry Pi 4.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1


def web_dir(data_dir: Path) -> Path:
    return data_dir / WEB_DIR


def write_private(path: Path, data: bytes) -> None:
    """Write a whole file durably with mode 0600, in a folder only the box's user reads."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca.write_private(path, data)


def hash_secret(secret: str, *, n: int = SCRYPT_N) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        secret.encode("utf-8"), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_secret(secret: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.strip().split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            secret.encode("utf-8"),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def new_setup_code(data_dir: Path, *, force: bool = False) -> str:
    """Make the box's setup code, keep only its hash; return it grouped for the label.

    The code has the Medis code's form (12 symbols without look-alikes, the last a check
    symbol), so a typo is caught before it counts as a wrong guess."""
    path = web_dir(data_dir) / SETUP_CODE_FILE
    if path.exists() and not force:
        raise FileExistsError(
            f"{path} already holds a setup code; the label shows it (--force makes a new one)"
        )
    code = new_code()
    write_private(path, (hash_secret(code) + "\n").encode("ascii"))
    return format_code(code)


def admin_password_set(data_dir: Path) -> bool:
    return (web_dir(data_dir) / ADMIN_FILE).exists()


@dataclass
class Progress:
    """The wizard's progress; `epoch` changes when the password does (old sessions end)."""

    schema: int = SCHEMA_VERSION
    claimed_at: float | None = None
    steps_done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    finished_at: float | None = None
    wizard_open: bool = True
    epoch: int = 0

    @property
    def next_step(self) -> str:
        for step in STEPS:
            if step not in self.steps_done:
                return step
        return "summary"


class Lockout:
    """Wrong setup codes and passwords: a few free tries, then waits that double to a cap.

    Persisted, so a reboot (or pulling the plug) does not give an attacker fresh tries."""

    FREE_TRIES = 5
    BASE_S = 60.0
    CAP_S = 3600.0

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self.clock = clock

    def _read(self) -> tuple[int, float]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return int(data["failures"]), float(data["locked_until"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0, 0.0

    def remaining(self) -> float:
        """Seconds until the next guess is heard (0: now)."""
        return max(0.0, self._read()[1] - self.clock.time())

    def failure(self) -> float:
        failures, until = self._read()
        failures += 1
        if failures >= self.FREE_TRIES:
            wait = min(self.CAP_S, self.BASE_S * 2 ** (failures - self.FREE_TRIES))
            until = self.clock.time() + wait
        write_private(self.path, json.dumps({"failures": failures, "locked_until": until}).encode())
        return self.remaining()

    def success(self) -> None:
        self.path.unlink(missing_ok=True)


class WebState:
    def __init__(self, data_dir: Path, clock: Clock) -> None:
        self.data_dir = data_dir
        self.directory = web_dir(data_dir)
        self.clock = clock
        self.lockout = Lockout(self.directory / "lockout.json", clock)
        self._progress_path = self.directory / "progress.json"
        self._admin_path = self.directory / ADMIN_FILE
        self._code_path = self.directory / SETUP_CODE_FILE

    # -- secrets ---------------------------------------------------------------------------

    def secret_key(self) -> bytes:
        path = self.directory / "secret.key"
        try:
            key = path.read_bytes()
            if len(key) >= 32:
                return key
        except FileNotFoundError:
            pass
        key = secrets.token_bytes(32)
        write_private(path, key)
        return key

    @property
    def has_setup_code(self) -> bool:
        return self._code_path.exists()

    def check_setup_code(self, code: str) -> bool:
        """InvalidCodeError when the text is not a well-formed code (a typo, not a guess)."""
        canonical = parse_code(code)
        try:
            stored = self._code_path.read_text(encoding="ascii")
        except FileNotFoundError:
            return False
        return verify_secret(canonical, stored)

    @property
    def has_password(self) -> bool:
        return self._admin_path.exists()

    def set_password(self, password: str) -> None:
        write_private(self._admin_path, (hash_secret(password) + "\n").encode("ascii"))
        progress = self.progress()
        progress.epoch += 1
        self.save(progress)

    def check_password(self, password: str) -> bool:
        try:
            stored = self._admin_path.read_text(encoding="ascii")
        except FileNotFoundError:
            return False
        return verify_secret(password, stored)

    # -- progress --------------------------------------------------------------------------

    def progress(self) -> Progress:
        try:
            data = json.loads(self._progress_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Progress()
        except (OSError, ValueError):
            return Progress()  # unreadable: start the wizard again rather than lock people out
        if not isinstance(data, dict) or data.get("schema") != SCHEMA_VERSION:
            return Progress()  # no older schema exists yet; later versions migrate here
        known = {k: v for k, v in data.items() if k in Progress.__dataclass_fields__}
        try:
            return Progress(**known)
        except TypeError:
            return Progress()

    def save(self, progress: Progress) -> None:
        write_private(self._progress_path, json.dumps(asdict(progress), indent=2).encode())

    def mark_claimed(self) -> Progress:
        progress = self.progress()
        if progress.claimed_at is None:
            progress.claimed_at = self.clock.time()
            self.save(progress)
        return progress

    def step_done(self, step: str, *, skipped: bool = False) -> Progress:
        progress = self.progress()
        if step not in progress.steps_done:
            progress.steps_done.append(step)
        if skipped and step not in progress.skipped:
            progress.skipped.append(step)
        if not skipped and step in progress.skipped:
            progress.skipped.remove(step)
        self.save(progress)
        return progress

    def finish(self) -> Progress:
        progress = self.progress()
        if "summary" not in progress.steps_done:
            progress.steps_done.append("summary")
        progress.finished_at = self.clock.time()
        progress.wizard_open = False
        self.save(progress)
        return progress

    def reopen(self) -> Progress:
        progress = self.progress()
        progress.wizard_open = True
        self.save(progress)
        return progress

    @property
    def setup_finished(self) -> bool:
        return self.progress().finished_at is not None
