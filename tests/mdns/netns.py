"""Network namespaces the tests make for themselves: two "LANs' hosts" joined by a veth pair.

mDNS is multicast; these tests never send it on the machine's own network. Each test gets
two fresh namespaces (box A and box B) joined by one virtual cable, with addresses from the
benchmarking range 198.18.0.0/15 that exist only inside them, and removes them afterwards.
Code runs inside a namespace on a thread that entered it (setns applies to one thread, and
threads it starts inherit it): sockets made there live in that namespace.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

ADDRESS_A = "198.18.0.1"
ADDRESS_B = "198.18.0.2"


def ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", netns, "ip", *args] if netns else ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


def run_in(netns: str, fn: Callable[[], T]) -> T:
    """Run `fn` on a thread inside `netns` and return its result (or raise its error)."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"setns {netns}: {os.strerror(errno)}")
        finally:
            os.close(fd)
        try:
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name=f"in-{netns}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


@dataclass(frozen=True)
class Lan:
    a: str  # namespace names
    b: str
    veth_b: str

    def move_b(self, new_address: str) -> None:
        """Box B's address changes (a DHCP renewal, a cable moved to another port)."""
        ip("addr", "del", f"{ADDRESS_B}/24", "dev", self.veth_b, netns=self.b)
        ip("addr", "add", f"{new_address}/24", "dev", self.veth_b, netns=self.b)


@contextmanager
def lan() -> Iterator[Lan]:
    tag = secrets.token_hex(3)
    a, b = f"afra-mdns-{tag}-a", f"afra-mdns-{tag}-b"
    va, vb = f"va{tag}", f"vb{tag}"
    made: list[str] = []
    try:
        for name in (a, b):
            ip("netns", "add", name)
            made.append(name)
            ip("link", "set", "lo", "up", netns=name)
        ip("link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
        for ns, dev, addr in ((a, va, ADDRESS_A), (b, vb, ADDRESS_B)):
            ip("addr", "add", f"{addr}/24", "dev", dev, netns=ns)
            ip("link", "set", dev, "up", netns=ns)
        yield Lan(a=a, b=b, veth_b=vb)
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
