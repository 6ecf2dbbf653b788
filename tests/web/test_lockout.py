"""The lockout and the session list on their own: per client, atomic, bounded, persistent,
and what a damaged file or a disk that will not take writes does to them."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from afra_web.state import SESSION_MAX_S, Lockout, Sessions, client_key
from tests.fakes import FakeClock


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("", "unknown"),
        ("not an address", "not an address"),
        ("x" * 500, "x" * 64),
    ],
)
def test_whose_guesses_these_are(address: str, key: str) -> None:
    assert client_key(address) == key


def wrong(lockout: Lockout, address: str) -> float:
    return lockout.guess(address, lambda: False).wait


def test_parallel_guesses_get_at_most_the_free_tries(tmp_path: Path) -> None:
    lockout = Lockout(tmp_path / "lockout.json", FakeClock())
    checked = []
    start = threading.Barrier(40)

    def slow_wrong_check() -> bool:
        checked.append(1)
        time.sleep(0.02)  # scrypt takes this long and more: the window a race would use
        return False

    def guess() -> None:
        start.wait()
        lockout.guess("192.0.2.66", slow_wrong_check)

    threads = [threading.Thread(target=guess) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(checked) == Lockout.FREE_TRIES
    assert lockout.remaining("192.0.2.66") == Lockout.BASE_S
    assert lockout.remaining("192.0.2.20") == 0


def test_waits_double_to_the_cap_and_the_right_secret_ends_them(tmp_path: Path) -> None:
    clock = FakeClock()
    lockout = Lockout(tmp_path / "lockout.json", clock)
    waits = [wrong(lockout, "192.0.2.66") for _ in range(Lockout.FREE_TRIES)]
    assert waits == [0, 0, 0, 0, 60]
    for expected in (120, 240, 480, 960, 1920, 3600, 3600):
        clock.advance(3600)
        assert wrong(lockout, "192.0.2.66") == expected
    refused = lockout.guess("192.0.2.66", lambda: True)
    assert not refused.checked and not refused.right  # locked: even the right one waits
    clock.advance(3600)
    assert lockout.guess("192.0.2.66", lambda: True).right
    assert wrong(lockout, "192.0.2.66") == 0  # a fresh run of free tries


def test_once_many_clients_guessed_newcomers_share_one_count(tmp_path: Path) -> None:
    class Small(Lockout):
        MAX_CLIENTS = 3

    clock = FakeClock()
    lockout = Small(tmp_path / "lockout.json", clock)
    for i in range(3):
        wrong(lockout, f"192.0.2.{i}")
    # Hundreds of addresses do not push the known ones out (that would give them fresh tries):
    for i in range(100, 100 + Lockout.FREE_TRIES):
        wrong(lockout, f"198.51.100.{i}")
    assert lockout.remaining("198.51.100.250") == Lockout.BASE_S  # a newcomer: shared count
    assert lockout.remaining("192.0.2.1") == 0  # a known client keeps its own
    assert lockout.guess("192.0.2.1", lambda: True).right
    data = json.loads((tmp_path / "lockout.json").read_text())
    assert len(data["clients"]) <= Small.MAX_CLIENTS + 1
    # A day of quiet forgets clients whose wait is over, and makes room again.
    clock.advance(Lockout.FORGET_S + 1)
    assert wrong(lockout, "198.51.100.250") == 0
    assert set(json.loads((tmp_path / "lockout.json").read_text())["clients"]) == {"198.51.100.250"}


def test_the_counts_survive_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "lockout.json"
    lockout = Lockout(path, clock)
    for _ in range(Lockout.FREE_TRIES):
        wrong(lockout, "192.0.2.66")
    wrong(lockout, "192.0.2.20")
    restarted = Lockout(path, clock)
    assert restarted.remaining("192.0.2.66") == Lockout.BASE_S
    clock.advance(Lockout.BASE_S)
    assert wrong(restarted, "192.0.2.66") == 2 * Lockout.BASE_S  # the count went on
    assert wrong(restarted, "192.0.2.20") == 0  # two of five used


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00\xff not json",
        b"[]",
        b'{"failures": 9, "locked_until": 4000000000}',  # the old, shared format
        b'{"schema": 2, "clients": []}',
        b'{"schema": 2, "clients": {"192.0.2.66": "x"}}',
        b'{"schema": 2, "clients": {"192.0.2.66": [1, 2]}}',
        b'{"schema": 2, "clients": {"192.0.2.66": ["a", 0, 0]}}',
    ],
)
def test_a_damaged_lockout_file_starts_the_count_again(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "lockout.json"
    path.write_bytes(content)
    lockout = Lockout(path, FakeClock())
    assert lockout.remaining("192.0.2.66") == 0
    assert wrong(lockout, "192.0.2.66") == 0


def test_a_lock_from_a_clock_far_ahead_is_no_longer_than_the_cap(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "lockout.json"
    far = clock.time() + 10 * 365 * 86400
    path.write_text(json.dumps({"schema": 2, "clients": {"192.0.2.66": [9, far, far]}}))
    assert Lockout(path, clock).remaining("192.0.2.66") == Lockout.CAP_S


def test_a_disk_that_takes_no_writes_keeps_the_counts_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "web"
    blocked.write_text("a file where the folder should be")
    clock = FakeClock()
    lockout = Lockout(blocked / "lockout.json", clock)
    for _ in range(Lockout.FREE_TRIES + 3):
        wrong(lockout, "192.0.2.66")
    assert lockout.remaining("192.0.2.66") == Lockout.BASE_S
    errors = [r for r in caplog.records if "lockout" in r.getMessage()]
    assert len(errors) == 1  # once a minute, not once a guess


# -- sessions -------------------------------------------------------------------------------------


def test_sessions_end_one_by_one_or_all_and_are_kept_hashed(tmp_path: Path) -> None:
    clock = FakeClock()
    sessions = Sessions(tmp_path / "sessions.json", clock)
    a, b = sessions.start(), sessions.start()
    assert sessions.alive(a) and sessions.alive(b)
    stored = (tmp_path / "sessions.json").read_text()
    assert a not in stored and b not in stored
    sessions.end(a)
    assert not sessions.alive(a) and sessions.alive(b)
    assert Sessions(tmp_path / "sessions.json", clock).alive(b)  # a restart keeps it
    sessions.end_all()
    assert not sessions.alive(b)
    assert not sessions.alive("") and not sessions.alive("guessed")


def test_sessions_are_bounded_in_number_and_age(tmp_path: Path) -> None:
    clock = FakeClock()
    sessions = Sessions(tmp_path / "sessions.json", clock)
    first = sessions.start()
    clock.advance(1)
    later = [sessions.start() for _ in range(Sessions.MAX)]
    assert not sessions.alive(first)  # the oldest went to make room
    assert all(sessions.alive(s) for s in later)
    clock.advance(SESSION_MAX_S + 1)
    assert not any(sessions.alive(s) for s in later)


def test_a_removed_or_damaged_session_file_ends_every_session(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    sessions = Sessions(path, FakeClock())
    sid = sessions.start()
    path.unlink()  # the factory reset removes web/
    assert not sessions.alive(sid)
    sid = sessions.start()
    path.write_bytes(b"\x00garbage")
    assert not sessions.alive(sid)


def test_sign_in_works_when_the_session_file_cannot_be_written(tmp_path: Path) -> None:
    blocked = tmp_path / "web"
    blocked.write_text("a file where the folder should be")
    sessions = Sessions(blocked / "sessions.json", FakeClock())
    sid = sessions.start()
    assert sessions.alive(sid)  # held in memory: the technician can see why the disk fails
    sessions.end(sid)
    assert not sessions.alive(sid)
