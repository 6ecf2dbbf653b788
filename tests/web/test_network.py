"""The network seam's real side: reading the kernel's view, recording in emulation."""

from __future__ import annotations

import json
from pathlib import Path

from afra_web.network import EmulatedNetwork, StaticAddress, SystemNetwork, parse_static

ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0102000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0002000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
"""


def test_the_gateway_and_dns_come_from_the_kernel_files(tmp_path: Path) -> None:
    (tmp_path / "route").write_text(ROUTE)
    (tmp_path / "resolv.conf").write_text("# comment\nnameserver 10.0.2.53\nnameserver 9.9.9.9\n")
    (tmp_path / "net" / "eth0").mkdir(parents=True)
    (tmp_path / "net" / "eth0" / "speed").write_text("1000\n")
    info = SystemNetwork(
        proc_route=tmp_path / "route",
        resolv_conf=tmp_path / "resolv.conf",
        sys_net=tmp_path / "net",
    ).read()
    assert info.interface == "eth0"
    assert info.gateway == "10.0.2.1"
    assert info.dns == ("10.0.2.53", "9.9.9.9")
    assert info.link_speed_mbps == 1000


def test_without_a_default_route_nothing_is_guessed(tmp_path: Path) -> None:
    (tmp_path / "route").write_text(ROUTE.splitlines()[0] + "\n")
    info = SystemNetwork(proc_route=tmp_path / "route", resolv_conf=tmp_path / "none").read()
    assert (info.interface, info.gateway, info.dns, info.link_speed_mbps) == ("", "", (), None)


def test_emulation_records_instead_of_applying(tmp_path: Path) -> None:
    record = tmp_path / "network.json"
    network = EmulatedNetwork(record)
    network.apply(StaticAddress("10.0.0.7/24", "10.0.0.1", ("10.0.0.53",)))
    assert json.loads(record.read_text())["address"] == "10.0.0.7/24"
    assert "requested: 10.0.0.7/24 via 10.0.0.1" in network.read().note
    network.apply(None)
    assert json.loads(record.read_text()) == {}


def test_a_valid_static_address() -> None:
    static, errors = parse_static(" 10.0.0.7 ", "24", "10.0.0.1", "10.0.0.53, 1.1.1.1")
    assert errors == {}
    assert static == StaticAddress("10.0.0.7/24", "10.0.0.1", ("10.0.0.53", "1.1.1.1"))
    assert static is not None and static.ip == "10.0.0.7"
