"""The box's SCU against a PACS that answers at once (pydicom/pynetdicom#875).

pynetdicom's association reactor and the thread that sent a request both take decoded messages
off one queue. When a request follows another on the same association, the reactor can take
the first response and drop it ("Received unexpected C-FIND service message"), and the C-FIND
ends one match short with a success status. The box sends one request per association; here
its own PacsClient runs hundreds of times against a raw-socket PACS that sends all its answers
in a single write (and then releases or aborts at once), and every study found and every
sub-operation must arrive.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, CTImageStorage
from pynetdicom import evt
from pynetdicom.dimse_messages import (
    C_ECHO_RSP,
    C_FIND_RSP,
    C_GET_RSP,
    C_MOVE_RSP,
    C_STORE_RQ,
    DIMSEMessage,
)
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import (
    A_ABORT_RQ,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    P_DATA_TF,
)
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import build_context, negotiate_as_acceptor
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from afra.app import Appliance
from afra.config import DicomSettings, PacsSettings
from afra.dicom import scu
from afra.dicom.scu import PacsClient
from afra.errors import AssociationFailedError, PeerReplyError
from tests.conftest import BoxFactory
from tests.dicomgen import dataset_bytes_hash, make_ct_series

LOOPBACK = "127.0.0.1"
STUDY = "1.2.826.0.1.3680043.10.511.1"
MATCHES = 5  # studies the PACS finds for every C-FIND
SUBOPS = 4  # sub-operations of every C-MOVE
# Rounds of each loop. Back-to-back requests on one association lose a response about once in
# 150 (measured); the loops also check that no association carries a second request, which
# catches that pattern on its first round.
ROUNDS = 100  # 500 each in the measurement (docs/ARCHITECTURE.md): none lost
GET_ROUNDS = 15
ENDING_ROUNDS = 4  # each may cost the ACSE timeout (see below)

PENDING = 0xFF00
Ending = str  # "box" (the box releases), "release" or "abort" (the PACS, right after answering)


def pdus(message: DIMSEMessage, context_id: int, max_pdu: int) -> bytes:
    """A DIMSE message as P-DATA-TF PDUs, by pynetdicom's own encoders."""
    out = bytearray()
    for primitive in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        out += pdu.encode()
    return bytes(out)


@dataclass
class Link:
    """One association as the fast PACS sees it."""

    sock: socket.socket
    contexts: dict[int, tuple[UID, UID]] = field(default_factory=dict)  # id -> (class, syntax)
    max_pdu: int = 16384
    requests: list[str] = field(default_factory=list)

    def read_pdu(self) -> tuple[int, bytes] | None:
        header = self._exact(6)
        if header is None:
            return None
        kind, _, length = struct.unpack(">BBI", header)
        body = self._exact(length)
        return None if body is None else (kind, header + body)

    def _exact(self, n: int) -> bytes | None:
        data = bytearray()
        while len(data) < n:
            # No delayed ACK: pynetdicom writes a command and its data set as two small PDUs,
            # and Nagle would hold the second for our ACK (40 ms a request, not a fast PACS).
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return bytes(data)

    def encode(self, context_id: int, rsp: Any, kind: type[DIMSEMessage]) -> bytes:
        message = kind()
        message.primitive_to_message(rsp)
        return pdus(message, context_id, self.max_pdu)

    def read_message(self) -> Any:
        """The next whole DIMSE message the box sends (a C-GET's C-STORE responses)."""
        message = DIMSEMessage()
        while (got := self.read_pdu()) is not None:
            kind, data = got
            if kind != 0x04:
                raise ConnectionError(f"the box sent PDU type {kind} in the middle of a C-GET")
            pdu = P_DATA_TF()
            pdu.decode(data)
            if message.decode_msg(pdu.to_primitive()):
                return message.message_to_primitive()
        raise ConnectionError("the box hung up in the middle of a C-GET")

    def data_set(self, context_id: int, ds: Dataset) -> BytesIO:
        ts = self.contexts[context_id][1]
        raw = encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
        assert raw is not None
        return BytesIO(raw)


def ending_pdu(ending: Ending) -> bytes:
    if ending == "release":
        return bytes(A_RELEASE_RQ().encode())
    if ending == "abort":
        pdu = A_ABORT_RQ()
        pdu.source = 0x00
        pdu.reason_diagnostic = 0x00
        return bytes(pdu.encode())
    return b""


# What the PACS does with one request: (link, context id, request) -> keep the association?
Answer = Callable[[Link, int, Any], bool]


class FastPacs:
    """A Q/R SCP on loopback with no think time: each answer leaves in one write."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.links: list[Link] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._server = socket.create_server((LOOPBACK, 0))
        self.port: int = self._server.getsockname()[1]
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def close(self) -> None:
        self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self._accepting.join(timeout=10)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=10)
        assert not self.errors, self.errors

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._server.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = Link(sock)
            thread = threading.Thread(target=self._serve, args=(link,), daemon=True)
            with self._lock:
                self.links.append(link)
                self._threads.append(thread)
            thread.start()

    def _serve(self, link: Link) -> None:
        try:
            with link.sock:
                if self._negotiate(link):
                    self._dimse(link)
        except ConnectionError:
            pass  # the box aborted: its side of the story is what the tests check
        except BaseException as exc:  # a broken fake must fail the test, not hang it
            self.errors.append(exc)

    def _negotiate(self, link: Link) -> bool:
        got = link.read_pdu()
        if got is None:
            return False
        rq = A_ASSOCIATE_RQ()
        rq.decode(got[1])
        asked = rq.to_primitive()
        roles: dict[UID, tuple[bool | None, bool | None]] = {}
        for item in asked.user_information:
            if isinstance(item, MaximumLengthNotification):
                link.max_pdu = int(item.maximum_length_received or 16384) or 16384
            elif isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid:
                roles[UID(str(item.sop_class_uid))] = (item.scu_role, item.scp_role)
        requested = list(asked.presentation_context_definition_list)
        supported = []
        for cx in requested:
            ours = build_context(cx.abstract_syntax, cx.transfer_syntax)
            ours.scu_role = ours.scp_role = True  # C-GET: the PACS sends C-STOREs
            supported.append(ours)
        results, ac_roles = negotiate_as_acceptor(requested, supported, roles or None)
        for cx in results:
            if cx.result == 0x00 and cx.context_id is not None:
                link.contexts[int(cx.context_id)] = (
                    UID(str(cx.abstract_syntax)),
                    UID(str(cx.transfer_syntax[0])),
                )
        ac = A_ASSOCIATE()
        ac.application_context_name = "1.2.840.10008.3.1.1.1"
        ac.calling_ae_title = asked.calling_ae_title
        ac.called_ae_title = asked.called_ae_title
        ac.result = 0x00
        ac.result_source = 0x01
        ac.presentation_context_definition_results_list = results
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = 1 << 20
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = "1.2.826.0.1.3680043.10.511.9"
        ac.user_information = [max_length, implementation, *ac_roles]
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(ac)
        link.sock.sendall(pdu.encode())
        return True

    def _dimse(self, link: Link) -> None:
        message = DIMSEMessage()
        while (got := link.read_pdu()) is not None:
            kind, data = got
            if kind == 0x05:  # A-RELEASE-RQ (also the box's side of a release collision)
                link.sock.sendall(A_RELEASE_RP().encode())
                return
            if kind != 0x04:  # A-RELEASE-RP to our own request, A-ABORT
                return
            pdu = P_DATA_TF()
            pdu.decode(data)
            if not message.decode_msg(pdu.to_primitive()):
                continue
            context_id = int(message.context_id or 0)
            request = message.message_to_primitive()
            message = DIMSEMessage()
            if isinstance(request, C_ECHO):  # the box's health check may ask meanwhile
                link.requests.append("C-ECHO")
                rsp = C_ECHO()
                rsp.MessageIDBeingRespondedTo = request.MessageID
                rsp.AffectedSOPClassUID = request.AffectedSOPClassUID
                rsp.Status = 0x0000
                link.sock.sendall(link.encode(context_id, rsp, C_ECHO_RSP))
                continue
            link.requests.append(type(request).__name__.replace("_", "-"))
            if not self.answer(link, context_id, request):
                return


@pytest.fixture
def fast_pacs() -> Iterator[Callable[[Answer], FastPacs]]:
    started: list[FastPacs] = []

    def start(answer: Answer) -> FastPacs:
        pacs = FastPacs(answer)
        started.append(pacs)
        return pacs

    yield start
    for pacs in started:
        pacs.close()


def box_for(make_box: BoxFactory, pacs: FastPacs) -> Appliance:
    # A lost final response would otherwise cost the DIMSE timeout (60 s) per round.
    return make_box(
        dicom={"dimse_timeout": 5, "acse_timeout": 5},
        pacs={"ae_title": "FASTPACS", "host": LOOPBACK, "port": pacs.port},
    )


def study_match(n: int, uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = uid or f"{STUDY}.{n}"
    ds.PatientID = "FAST"
    ds.NumberOfStudyRelatedInstances = "3"
    ds.SOPClassesInStudy = CTImageStorage
    return ds


def find_answer(
    matches: list[Dataset],
    *,
    ending: Callable[[int], Ending] = lambda _n: "box",
    answered: int | None = None,
    final: bool = True,
) -> Answer:
    """Every match and the final response in one write, then at once the `ending`."""
    rounds = iter(range(1 << 30))

    def answer(link: Link, context_id: int, rq: Any) -> bool:
        assert isinstance(rq, C_FIND)
        out = bytearray()
        for ds in matches:
            rsp = C_FIND()
            rsp.MessageIDBeingRespondedTo = answered or rq.MessageID
            rsp.AffectedSOPClassUID = rq.AffectedSOPClassUID
            rsp.Status = PENDING
            rsp.Identifier = link.data_set(context_id, ds)
            out += link.encode(context_id, rsp, C_FIND_RSP)
        if final:
            rsp = C_FIND()
            rsp.MessageIDBeingRespondedTo = answered or rq.MessageID
            rsp.AffectedSOPClassUID = rq.AffectedSOPClassUID
            rsp.Status = 0x0000
            out += link.encode(context_id, rsp, C_FIND_RSP)
        end = ending(next(rounds)) if final else "abort"
        link.sock.sendall(bytes(out) + ending_pdu(end))
        return end == "box"

    return answer


def move_answer(
    count: int, *, ending: Callable[[int], Ending] = lambda _n: "box", answered: int | None = None
) -> Answer:
    """Every pending C-MOVE response and the final one (with its counts) in one write."""
    rounds = iter(range(1 << 30))

    def answer(link: Link, context_id: int, rq: Any) -> bool:
        assert isinstance(rq, C_MOVE)
        out = bytearray()
        for done in range(count + 1):
            rsp = C_MOVE()
            rsp.MessageIDBeingRespondedTo = answered or rq.MessageID
            rsp.AffectedSOPClassUID = rq.AffectedSOPClassUID
            rsp.Status = PENDING if done < count else 0x0000
            if done < count:
                rsp.NumberOfRemainingSuboperations = count - done
            rsp.NumberOfCompletedSuboperations = done
            rsp.NumberOfFailedSuboperations = 0
            rsp.NumberOfWarningSuboperations = 0
            out += link.encode(context_id, rsp, C_MOVE_RSP)
        end = ending(next(rounds))
        link.sock.sendall(bytes(out) + ending_pdu(end))
        return end == "box"

    return answer


def get_answer(files: list[Path], *, claims: int | None = None) -> Answer:
    """A C-GET with no think time: each C-STORE goes out with the pending response before it,
    as soon as the box has answered the last; the final response follows the last answer."""
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    find = find_answer([study_match(0, study_uid)])

    def answer(link: Link, context_id: int, rq: Any) -> bool:
        if isinstance(rq, C_FIND):  # the box asks which SOP classes the study holds
            return find(link, context_id, rq)
        assert isinstance(rq, C_GET)
        completed = 0
        out = bytearray()
        for n, path in enumerate(files, start=1):
            ds = dcmread(path)
            store_cx = next(
                cx for cx, (abstract, _ts) in link.contexts.items() if abstract == ds.SOPClassUID
            )
            store = C_STORE()
            store.MessageID = n
            store.AffectedSOPClassUID = ds.SOPClassUID
            store.AffectedSOPInstanceUID = ds.SOPInstanceUID
            store.Priority = 2
            store.DataSet = link.data_set(store_cx, ds)
            link.sock.sendall(bytes(out) + link.encode(store_cx, store, C_STORE_RQ))
            stored = link.read_message()
            assert isinstance(stored, C_STORE) and stored.MessageIDBeingRespondedTo == n
            completed += stored.Status == 0x0000
            rsp = C_GET()
            rsp.MessageIDBeingRespondedTo = rq.MessageID
            rsp.AffectedSOPClassUID = rq.AffectedSOPClassUID
            rsp.Status = PENDING
            rsp.NumberOfRemainingSuboperations = len(files) - n
            rsp.NumberOfCompletedSuboperations = completed
            rsp.NumberOfFailedSuboperations = n - completed
            rsp.NumberOfWarningSuboperations = 0
            out = bytearray(link.encode(context_id, rsp, C_GET_RSP))
        rsp = C_GET()
        rsp.MessageIDBeingRespondedTo = rq.MessageID
        rsp.AffectedSOPClassUID = rq.AffectedSOPClassUID
        rsp.Status = 0x0000
        rsp.NumberOfCompletedSuboperations = completed if claims is None else claims
        rsp.NumberOfFailedSuboperations = len(files) - completed
        rsp.NumberOfWarningSuboperations = 0
        link.sock.sendall(bytes(out) + link.encode(context_id, rsp, C_GET_RSP))
        return True

    return answer


def one_request_each(pacs: FastPacs, kind: str) -> None:
    """Every association carried one request: the condition #875 needs never arises."""
    mine = [link.requests for link in pacs.links if link.requests != ["C-ECHO"]]
    assert mine and all(requests == [kind] for requests in mine), mine


def test_every_study_found_arrives(
    make_box: BoxFactory, fast_pacs: Callable[[Answer], FastPacs]
) -> None:
    matches = [study_match(n) for n in range(MATCHES)]
    pacs = fast_pacs(find_answer(matches))
    box = box_for(make_box, pacs)
    assert box.pacs is not None
    short = []
    for n in range(ROUNDS):
        found = [m.StudyInstanceUID for m in box.pacs.find("STUDY", {"PatientID": "FAST"})]
        if found != [m.StudyInstanceUID for m in matches]:
            short.append((n, found))
    assert short == [], f"{len(short)} of {ROUNDS} C-FINDs came back short"
    one_request_each(pacs, "C-FIND")


def test_every_sub_operation_is_counted(
    make_box: BoxFactory, fast_pacs: Callable[[Answer], FastPacs]
) -> None:
    pacs = fast_pacs(move_answer(SUBOPS))
    box = box_for(make_box, pacs)
    assert box.pacs is not None
    wrong = []
    for n in range(ROUNDS):
        result = box.pacs.move(STUDY, msg_id=n % 60000 + 2)
        if not (result.ok and result.completed == SUBOPS and result.failed == 0):
            wrong.append((n, result))
    assert wrong == [], f"{len(wrong)} of {ROUNDS} C-MOVEs lost their count"
    one_request_each(pacs, "C-MOVE")


def test_every_instance_arrives_by_c_get(
    make_box: BoxFactory, fast_pacs: Callable[[Answer], FastPacs], tmp_path: Path
) -> None:
    files = make_ct_series(tmp_path / "GET", n=3, rows=16, cols=16, patient_id="FASTGET")
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    pacs = fast_pacs(get_answer(files))
    box = box_for(make_box, pacs)
    assert box.pacs is not None
    wrong = []
    for n in range(GET_ROUNDS):
        result = box.pacs.get(study_uid)
        if not (result.ok and result.completed == len(files) and result.missing == 0):
            wrong.append((n, result))
    assert wrong == [], f"{len(wrong)} of {GET_ROUNDS} C-GETs lost an instance or its count"
    assert box.index.study_total(study_uid) == len(files)
    for sent in files:
        ds = dcmread(sent, stop_before_pixels=True)
        kept = box.spool.absolute(box.spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID))
        assert dataset_bytes_hash(kept) == dataset_bytes_hash(sent)
    for link in pacs.links:
        assert link.requests in (["C-FIND"], ["C-GET"], ["C-ECHO"]), link.requests  # one each


def test_a_sub_operation_counted_but_never_sent_fails_the_c_get(
    make_box: BoxFactory, fast_pacs: Callable[[Answer], FastPacs], tmp_path: Path
) -> None:
    files = make_ct_series(tmp_path / "LIAR", n=2, rows=16, cols=16, patient_id="LIAR")
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    pacs = fast_pacs(get_answer(files, claims=len(files) + 1))
    box = box_for(make_box, pacs)
    assert box.pacs is not None
    result = box.pacs.get(study_uid)
    assert not result.ok and result.missing == 1
    assert any("3 sub-operations done; 2 arrived" in note for note in result.notes), result


def test_a_response_to_another_message_is_not_taken(
    make_box: BoxFactory, fast_pacs: Callable[[Answer], FastPacs]
) -> None:
    pacs = fast_pacs(find_answer([study_match(1)], answered=9))
    box = box_for(make_box, pacs)
    assert box.pacs is not None
    with pytest.raises(PeerReplyError, match="answered message 9 during the C-FIND of message 1"):
        box.pacs.find("STUDY", {})
    moving = fast_pacs(move_answer(2, answered=9))
    client = PacsClient(
        PacsSettings(ae_title="FASTPACS", host=LOOPBACK, port=moving.port), box.config.dicom
    )
    with pytest.raises(PeerReplyError, match="answered message 9 during the C-MOVE of message 5"):
        client.move(STUDY, msg_id=5)


def test_no_final_response_is_a_failure(
    make_box: BoxFactory, fast_pacs: Callable[[Answer], FastPacs]
) -> None:
    pacs = fast_pacs(find_answer([study_match(1), study_match(2)], final=False))
    box = box_for(make_box, pacs)
    assert box.pacs is not None
    with pytest.raises(AssociationFailedError, match="stopped answering"):
        box.pacs.find("STUDY", {})


# The PACS ending the association right after its last answer races pynetdicom's own release
# (pydicom/pynetdicom#269): an A-RELEASE-RQ decoded just before the box's release goes out is
# an event its state machine refuses (Evt11 in Sta8) and its DUL thread ends with that
# exception; an A-ABORT the reactor reads first leaves the release waiting. Either way the
# release waits out the ACSE timeout, with every answer already in hand: that they all
# arrive is what this test checks.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("ending", ["release", "abort"])
def test_a_pacs_ending_the_association_at_once_loses_nothing(
    make_box: BoxFactory, fast_pacs: Callable[[Answer], FastPacs], ending: Ending
) -> None:
    matches = [study_match(n) for n in range(MATCHES)]
    pacs = fast_pacs(find_answer(matches, ending=lambda _n: ending))
    moving = fast_pacs(move_answer(SUBOPS, ending=lambda _n: ending))
    box = make_box(
        dicom={"dimse_timeout": 5, "acse_timeout": 1},
        pacs={"ae_title": "FASTPACS", "host": LOOPBACK, "port": pacs.port},
    )
    assert box.pacs is not None
    mover = PacsClient(
        PacsSettings(ae_title="FASTPACS", host=LOOPBACK, port=moving.port), box.config.dicom
    )
    for n in range(ENDING_ROUNDS):
        found = box.pacs.find("STUDY", {"PatientID": "FAST"})
        assert [m.StudyInstanceUID for m in found] == [m.StudyInstanceUID for m in matches]
        result = mover.move(STUDY, msg_id=n + 2)
        assert result.ok and result.completed == SUBOPS, result


def test_the_box_notices_when_pynetdicom_drops_a_response(
    fast_pacs: Callable[[Answer], FastPacs],
) -> None:
    """The upstream race itself, provoked the only way it is known to happen: C-FINDs back
    to back on one association (which the box never does). Whenever pynetdicom delivers
    fewer matches than the PACS sent, the box's count of what was decoded must say so."""
    matches = [study_match(n) for n in range(3)]
    pacs = fast_pacs(find_answer(matches))
    client = PacsClient(
        PacsSettings(ae_title="FASTPACS", host=LOOPBACK, port=pacs.port),
        DicomSettings(ae_title="AFRA", dimse_timeout=5),
    )
    query = scu.parse_keys({}, "STUDY")
    dropped = disagreements = 0
    # Measured: about 1 request in 150 loses its first response this way; the box's own
    # threads make it rarer still, so no box runs here.
    with client._associate([StudyRootQueryRetrieveInformationModelFind]) as (assoc, _wire):
        for n in range(1, 1001):
            wire = scu._Wire()
            assoc.bind(evt.EVT_DIMSE_RECV, wire.received)
            try:
                found, lost = scu._find_on(assoc, wire, query, "StudyInstanceUID", 100, msg_id=n)
            except AssociationFailedError:
                # The race took the final status too (seen on a loaded machine): the box gave
                # no result at all, which is saying so; the association is spent.
                dropped += 1
                break
            assoc.unbind(evt.EVT_DIMSE_RECV, wire.received)
            disagreements += lost != len(matches) - len(found)
            if lost:
                dropped += 1
                break
    # A run without a drop checks only that nothing was counted lost wrongly; one with a
    # drop (most runs, within a second or two) checks that the box saw it.
    assert disagreements == 0, f"the box miscounted ({dropped} drop(s) seen)"
