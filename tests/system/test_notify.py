"""systemd's notification protocol: what `afra run` tells systemd (Type=notify, WatchdogSec),
read from a real datagram socket as systemd's manager reads it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from afra.system.notify import Notifier, Watchdog


@pytest.fixture
def systemd_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(60)
    yield path, sock
    sock.close()


def messages(sock: socket.socket, until: bytes) -> list[bytes]:
    got = []
    while True:
        data = sock.recv(4096)
        got.append(data)
        if until in data:
            return got


def test_ready_status_and_pings_reach_systemd(systemd_socket: tuple[str, socket.socket]) -> None:
    path, sock = systemd_socket
    notifier = Notifier(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert notifier.watchdog_s == 30.0
    assert notifier.ready("DICOM on port 104")
    assert sock.recv(4096) == b"READY=1\nSTATUS=DICOM on port 104"
    assert notifier.ping()
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_an_abstract_socket_name_is_understood() -> None:
    name = f"afra-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).stopping()
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"


def test_outside_systemd_nothing_is_sent_and_nothing_fails() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and not notifier.ready("up") and notifier.watchdog_s is None


def test_a_watchdog_meant_for_another_process_is_not_fed() -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert notifier.watchdog_s is None


def test_the_watchdog_is_fed_only_while_every_part_of_the_box_is_alive(
    systemd_socket: tuple[str, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    path, sock = systemd_socket
    alive = {"dicom": True}
    dog = Watchdog(
        Notifier({"NOTIFY_SOCKET": path}), [("the DICOM service", lambda: alive["dicom"])]
    )
    assert dog.beat() and sock.recv(4096) == b"WATCHDOG=1"
    alive["dicom"] = False
    assert not dog.beat() and not dog.beat()  # systemd restarts the box once WatchdogSec passes
    assert caplog.text.count("the DICOM service is not running") == 1  # said once, not per beat
    alive["dicom"] = True
    assert dog.beat() and sock.recv(4096) == b"WATCHDOG=1"


def test_afra_run_says_ready_once_it_serves_pings_while_it_runs_and_says_stopping(
    systemd_socket: tuple[str, socket.socket], tmp_path: Path
) -> None:
    path, sock = systemd_socket
    config = tmp_path / "afra.toml"
    config.write_text(
        f'[box]\ndata_dir = "{tmp_path / "data"}"\n[dicom]\nbind = "127.0.0.1"\nport = 0\n'
        '[panel]\npin_factory = "mock"\n'
    )
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    afra = str(Path(sys.executable).parent / "afra")
    proc = subprocess.Popen(
        [afra, "--config", str(config), "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ready = messages(sock, b"READY=1")[-1].decode()
        assert "DICOM on port" in ready and "setup page on port" in ready
        assert messages(sock, b"WATCHDOG=1")  # fed every half second while alive
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
    assert b"STOPPING=1" in b"".join(messages(sock, b"STOPPING=1"))
