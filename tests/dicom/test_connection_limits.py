"""Idle and greedy DICOM clients against the acceptor's limits (docs/conformance.md 2.2.1.2.2).

Real sockets on loopback: each peer binds its own 127.0.0.x source address. With the default
`dicom.max_associations = 8`, one address may hold 4 associations and 6 connections, and
addresses no peer entry covers 4 associations between them.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable, Iterator

import pytest
from pynetdicom import AE
from pynetdicom.association import Association

from afra.app import Appliance
from tests.conftest import BoxFactory, wait_for
from tests.dicom.conftest import LOOPBACK, closed_by_box, refusal

pytestmark = pytest.mark.attack  # filling the DICOM port with idle and silent connections

VERIFICATION = "1.2.840.10008.1.1"
PACS = ("PACS", "127.0.0.3")  # a configured peer, one address
CT_NETWORK = "127.0.0.16/28"  # the modalities' configured network ...
INSIDE = "127.0.0.17"  # ... and one address in it that misbehaves
PER_ADDRESS_ASSOCIATIONS = 4  # half of max_associations (8)
PER_ADDRESS_CONNECTIONS = 6  # those, and 2 more still negotiating
UNKNOWN_ASSOCIATIONS = 4  # half of max_associations, for every unconfigured address together
REJECTED_TRANSIENT, SERVICE_PROVIDER_PRESENTATION, LOCAL_LIMIT_EXCEEDED = 2, 3, 2

PEERS = [
    {"ae_title": PACS[0], "host": PACS[1]},
    {"ae_title": "CT", "host": CT_NETWORK},
]


def associate(port: int, aet: str, source: str) -> Association:
    ae = AE(ae_title=aet)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = 30
    return ae.associate(LOOPBACK, port, ae_title="AFRA", bind_address=(source, 0))


def echo(port: int, aet: str, source: str) -> int:
    """A full C-ECHO from `source`; its status, or -1 when no association was made."""
    assoc = associate(port, aet, source)
    if not assoc.is_established:
        return -1
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


Idle = Callable[[int, str, int], list[socket.socket]]


@pytest.fixture
def idle() -> Iterator[Idle]:
    """Open TCP connections from one source address that never send anything."""
    opened: list[socket.socket] = []

    def connect(port: int, source: str, count: int) -> list[socket.socket]:
        batch = [
            socket.create_connection((LOOPBACK, port), timeout=10, source_address=(source, 0))
            for _ in range(count)
        ]
        opened.extend(batch)
        return batch

    yield connect
    for sock in opened:
        sock.close()


@pytest.fixture
def held() -> Iterator[list[Association]]:
    """Associations a test keeps open; released at the end."""
    assocs: list[Association] = []
    yield assocs
    for assoc in assocs:
        if assoc.is_established:
            assoc.release()


def limited_box(make_box: BoxFactory, **dicom: object) -> Appliance:
    return make_box(dicom={"allow_any_peer": False, "peers": PEERS, "acse_timeout": 60, **dicom})


def assert_busy(port: int, aet: str, source: str) -> None:
    """One more association from `source` is refused as over the limit."""
    assert refusal(port, aet, source=source) == (
        REJECTED_TRANSIENT,
        SERVICE_PROVIDER_PRESENTATION,
        LOCAL_LIMIT_EXCEEDED,
    )


@pytest.mark.parametrize("allow_any_peer", [False, True])
def test_idle_connections_from_one_address_leave_room_for_the_pacs(
    make_box: BoxFactory, idle: Idle, allow_any_peer: bool
) -> None:
    box = limited_box(make_box, allow_any_peer=allow_any_peer)
    idle(box.dicom.port, INSIDE, 200)
    assert echo(box.dicom.port, *PACS) == 0x0000
    assert echo(box.dicom.port, "CT", "127.0.0.18") == 0x0000  # another modality


def test_connections_beyond_the_per_address_limit_are_closed_at_once(
    make_box: BoxFactory, idle: Idle
) -> None:
    box = limited_box(make_box)  # ARTIM (acse_timeout) 60 s: only the excess is closed
    flood = idle(box.dicom.port, INSIDE, 20)
    wait_for(
        lambda: sum(closed_by_box(s) for s in flood) == len(flood) - PER_ADDRESS_CONNECTIONS,
        timeout=10,
        what="the connections beyond the per-address limit closed",
    )
    assert not any(closed_by_box(s) for s in flood[:PER_ADDRESS_CONNECTIONS])


def test_one_address_holds_at_most_half_the_associations(
    make_box: BoxFactory, held: list[Association]
) -> None:
    box = limited_box(make_box)
    for _ in range(PER_ADDRESS_ASSOCIATIONS):
        held.append(associate(box.dicom.port, "CT", INSIDE))
        assert held[-1].is_established
    assert_busy(box.dicom.port, "CT", INSIDE)
    assert echo(box.dicom.port, *PACS) == 0x0000
    assert echo(box.dicom.port, "CT", "127.0.0.18") == 0x0000


def test_unconfigured_addresses_share_half_the_pool(
    make_box: BoxFactory, held: list[Association]
) -> None:
    box = limited_box(make_box, allow_any_peer=True)
    strangers = [f"127.0.0.{100 + n}" for n in range(UNKNOWN_ASSOCIATIONS + 1)]
    for source in strangers[:-1]:
        held.append(associate(box.dicom.port, "STRANGER", source))
        assert held[-1].is_established
    assert_busy(box.dicom.port, "STRANGER", strangers[-1])
    for _ in range(2):  # the configured peers still have the other half
        held.append(associate(box.dicom.port, "CT", "127.0.0.18"))
        assert held[-1].is_established
    assert echo(box.dicom.port, *PACS) == 0x0000


def test_a_connection_without_an_association_request_is_closed_after_artim(
    make_box: BoxFactory, idle: Idle
) -> None:
    box = limited_box(make_box, acse_timeout=0.5)
    silent = idle(box.dicom.port, INSIDE, PER_ADDRESS_CONNECTIONS)
    wait_for(
        lambda: all(readable(s) for s in silent),
        timeout=10,
        what="the box acting on the silent connections (ARTIM)",
    )
    for sock in silent:  # PS3.8 Sta2 + ARTIM expired: AA-2, close the transport connection
        assert sock.recv(100) == b"", "closed without a PDU (no A-ABORT before an association)"
    # The address's places are free again.
    assert echo(box.dicom.port, "CT", INSIDE) == 0x0000
