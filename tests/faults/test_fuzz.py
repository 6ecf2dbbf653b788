"""Fuzz: the data set parser and the DICOM port, with hypothesis. No crash, memory bounded, the
right answer (a header, a refusal with its reason, an A-ASSOCIATE-RJ or A-ABORT, a close).

Inputs are valid objects and PDUs (pydicom's and pynetdicom's encoders) with bytes flipped,
cut, repeated and length fields set to hostile values, plus plain noise, HTTP and TLS hellos
on the DICOM port, and deflate bombs. `make test` runs a few hundred cases of each part; `make
test-faults` the issue's hundred thousand.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import tracemalloc
import warnings
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from afra.app import Appliance
from afra.dicom.header import DEFLATED, header_from_head, parse_head, read_header
from afra.errors import InvalidInstanceError
from tests.conftest import LOOPBACK, BoxFactory
from tests.dicom.conftest import (
    INVALID_PARAMETER,
    UNEXPECTED_PDU,
    UNRECOGNIZED_PDU,
    provider_abort,
    until_closed,
)
from tests.dicomgen import make_instance
from tests.faults.conftest import FIGURES, count
from tests.faults.harness import dataset_bytes
from tests.peers import echoscu

CASES: dict[str, int] = {}
pytestmark = pytest.mark.timeout(3600)  # the full counts take minutes


def figures() -> None:
    total = sum(CASES.values())
    crashes = CASES.get("crashes", 0)
    FIGURES["fuzz"] = [f"fuzz_cases={total - crashes} fuzz_crashes={crashes}"]


# -- the data set parser -------------------------------------------------------------------

EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    base = tmp_path_factory.mktemp("seeds")
    return {
        ts: dataset_bytes(make_instance(base / f"{ts}.dcm", transfer_syntax=ts).read_bytes())
        for ts in (EXPLICIT, IMPLICIT)
    }


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "cut", "repeat", "length", "insert"]))
        if not data:
            kind = "insert"
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 64))] * draw(st.integers(1, 50))
        elif kind == "length":  # a hostile element or item length
            value = draw(st.sampled_from([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF]))
            data[at : at + 4] = struct.pack("<I", value)
        else:
            data[at:at] = draw(st.binary(max_size=64))
    return bytes(data)


def parse_one(tmp: Path, data: bytes, ts: str) -> None:
    """What the receive path does with a data set: the head, else the file. Only refusals.

    pydicom's warnings about odd values are what a box logs, not failures (the suite runs
    with warnings as errors, the box does not)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        walked = parse_head(data[: 64 * 1024], ts)
        if walked is not None:
            with contextlib.suppress(InvalidInstanceError):
                header_from_head(walked, len(data))
        path = tmp / "case.dcm"
        path.write_bytes(b"\0" * 128 + b"DICM" + meta(ts) + data)
        with contextlib.suppress(InvalidInstanceError):
            read_header(path)


def meta(ts: str) -> bytes:
    value = ts.encode() + (b"\0" if len(ts) % 2 else b"")
    element = b"\x02\x00\x10\x00UI" + struct.pack("<H", len(value)) + value
    return b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<I", len(element)) + element


def test_the_data_set_parser_refuses_what_it_cannot_read_and_never_crashes(
    seeds: dict[str, bytes], tmp_path: Path
) -> None:
    cases = count(reduced=600, full=80_000)

    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def case(data: st.DataObject) -> None:
        ts = data.draw(st.sampled_from([EXPLICIT, IMPLICIT]))
        body = data.draw(st.one_of(mutated(seeds[ts]), st.binary(max_size=2048)))
        CASES["parser"] = CASES.get("parser", 0) + 1
        try:
            parse_one(tmp_path, body, ts)
        except Exception:
            CASES["crashes"] = CASES.get("crashes", 0) + 1
            raise

    case()
    figures()


def test_a_deflate_bomb_is_refused_within_bounded_memory(tmp_path: Path) -> None:
    # 1 GiB of zeros deflated to about a megabyte: an element claiming all of it.
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    element = b"\x09\x00\x10\x00OB\x00\x00" + struct.pack("<I", 1 << 30)
    chunks = [bomb.compress(element)]
    zero = bytes(1 << 20)
    for _ in range(1024):
        chunks.append(bomb.compress(zero))
    chunks.append(bomb.flush())
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInstanceError):
            path = tmp_path / "bomb.dcm"
            path.write_bytes(b"\0" * 128 + b"DICM" + meta(DEFLATED) + b"".join(chunks))
            read_header(path)
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"the parser held {peak // 2**20} MiB for a deflate bomb"
    CASES["bomb"] = 1
    figures()


# -- the DICOM port ------------------------------------------------------------------------


def associate_rq(calling: str = "FUZZ") -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = "AFRA"
    context = build_context("1.2.840.10008.1.1", [EXPLICIT])
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    primitive.user_information = [length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


HOSTILE = [
    b"GET / HTTP/1.1\r\nHost: afra\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),  # a TLS ClientHello
    b"\x01\x00\xff\xff\xff\xff",  # an A-ASSOCIATE-RQ claiming 4 GiB
    b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x02\x01\x03",  # P-DATA before any association
    b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00",  # A-ABORT out of the blue
]
# What the box answers each of them (afra.dicom.acceptor, before any association): an A-ABORT
# from the service provider with the reason, then it hangs up; to an A-ABORT only the hang-up
# (PS3.8 Sta2, AA-2: close the transport, nothing sent).
HOSTILE_ANSWERS = dict(
    zip(
        HOSTILE,
        [
            UNRECOGNIZED_PDU,  # "G" is no PDU type
            UNRECOGNIZED_PDU,  # nor is 0x16
            INVALID_PARAMETER,  # a length beyond any honest A-ASSOCIATE-RQ
            UNEXPECTED_PDU,  # a whole PDU, but not the A-ASSOCIATE-RQ the box waits for
            None,  # an A-ABORT is not answered
        ],
        strict=True,
    )
)


@pytest.fixture(scope="module")
def fuzz_box(tmp_path_factory: pytest.TempPathFactory) -> object:
    from afra.app import build_appliance
    from tests.conftest import make_config
    from tests.fakes import FakeClock

    config = make_config(
        tmp_path_factory.mktemp("fuzzbox"),
        dicom={"allow_any_peer": True, "acse_timeout": 2, "max_associations": 64},
        storage={"min_free_mb": 0},
    )
    box = build_appliance(config, clock=FakeClock())
    box.start()
    yield box
    box.close()


def exchange(port: int, data: bytes) -> bytes:
    """Send `data`, half-close, read what the box answers until it closes (or 3 s pass)."""
    with socket.create_connection((LOOPBACK, port), timeout=3) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while len(answer) < 1 << 16:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except OSError:  # reset, not connected, timed out: the box hung up on it
            return b""
    return answer


def test_the_dicom_port_answers_hostile_bytes_and_keeps_serving(
    fuzz_box: Appliance, caplog: pytest.LogCaptureFixture
) -> None:
    box = fuzz_box
    valid = associate_rq()
    cases = count(reduced=150, full=20_000)

    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        data=st.one_of(
            mutated(valid),
            st.binary(max_size=512),
            st.sampled_from(HOSTILE),
            st.builds(lambda rq, tail: rq + tail, st.just(valid), st.binary(max_size=256)),
        )
    )
    def case(data: bytes) -> None:
        CASES["port"] = CASES.get("port", 0) + 1
        answer = exchange(box.dicom.port, data)
        # Whatever it says is a whole PDU of a type the upper layer defines, or nothing.
        if answer:
            assert answer[0] in (0x02, 0x03, 0x04, 0x06, 0x07), answer[:16]

    caplog.set_level(logging.ERROR, logger="afra")
    case()
    crashed = [r for r in caplog.records if r.exc_info and r.name.startswith("afra")]
    CASES["crashes"] = CASES.get("crashes", 0) + len(crashed)
    figures()
    assert crashed == [], crashed[0].getMessage()
    assert echoscu(LOOPBACK, box.dicom.port).returncode == 0  # still serving


@pytest.mark.attack
@pytest.mark.parametrize("garbage", HOSTILE)
def test_each_hostile_opening_is_aborted_then_closed(make_box: BoxFactory, garbage: bytes) -> None:
    box = make_box(dicom={"allow_any_peer": True, "acse_timeout": 2})
    with socket.create_connection((LOOPBACK, box.dicom.port), timeout=10) as sock:
        sock.sendall(garbage)
        # The box may have answered and hung up already (it reads 6 bytes and knows): then
        # the half-close finds the connection reset, and the answer is still there to read.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        # Everything up to the close, kept also when the close is a reset (bytes left unread).
        answer = until_closed(sock)
    reason = HOSTILE_ANSWERS[garbage]
    assert answer == (b"" if reason is None else provider_abort(reason))
    assert echoscu(LOOPBACK, box.dicom.port).returncode == 0


def test_a_head_that_ends_inside_a_length_field_is_left_to_the_file(
    seeds: dict[str, bytes],
) -> None:
    """Found by the fuzzing: the first 64 KiB of a data set may end inside an explicit VR
    element's 4-byte length; pydicom then raised struct.error out of the receive path."""
    data = seeds[EXPLICIT]
    pixels = data.index(b"\xe0\x7f\x10\x00OW")  # (7FE0,0010) OW
    head = data[: pixels + 4 + 2 + 2 + 2]  # tag, VR, reserved, and half the 4-byte length
    assert parse_head(head, EXPLICIT) is None  # not a crash: the file walk decides
