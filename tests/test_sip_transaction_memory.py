"""What a transaction keeps once it only waits out retransmissions (RFC 3261 17.1.2.2, 17.2.1,
17.2.2; RFC 6026 section 7).

A registrar answers each REGISTER at once, then its non-INVITE server transaction stays in
Completed for Timer J (64*T1 = 32 s over UDP): at a few hundred registrations a second, that is
thousands of transactions. Each must keep only what the rest of its life needs, while every
retransmission rule still holds.
"""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from ims.sip.errors import LocalProtocolError
from ims.sip.message import Headers, Request, parse_message, serialize
from ims.sip.transaction import (
    AckReceived,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    State,
    TransactionLayer,
    TransactionTerminated,
    TransportFailure,
    server_key,
)
from ims.sip.uri import SipUri
from tests.test_sip_transaction import (
    UAC_UDP,
    UAS_UDP,
    drain,
    kinds,
    request,
    response_to,
    run_until,
)

# A REGISTER as sipp's digest scenario sends it, received from the wire.
_REGISTER = (
    "REGISTER sip:alpha.example SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-{i}-2;rport\r\n"
    "From: <sip:user{i}@alpha.example>;tag={i}SIPpTag001\r\n"
    "To: <sip:user{i}@alpha.example>\r\n"
    "Call-ID: {i}-4242@127.0.0.1\r\n"
    "CSeq: 2 REGISTER\r\n"
    "Contact: <sip:user{i}@127.0.0.1:5060>;expires=3600\r\n"
    "Max-Forwards: 70\r\n"
    "Expires: 3600\r\n"
    'Authorization: Digest username="user{i}", realm="alpha.example", '
    'nonce="0123456789abcdef0123456789abcdef{i}", uri="sip:alpha.example", '
    'response="0123456789abcdef0123456789abcdef", algorithm=MD5\r\n'
    "User-Agent: SIPp\r\n"
    "Content-Length: 0\r\n\r\n"
)


def _register(i: int) -> Request:
    message = parse_message(_REGISTER.format(i=i).encode())
    assert isinstance(message, Request)
    return message


def test_rfc3261_17_2_2_completed_keeps_the_final_response_not_the_request() -> None:
    layer = TransactionLayer()
    register = request("REGISTER")
    layer.receive(register, UAC_UDP, 0.0)
    key = server_key(register)
    drain(layer)
    assert layer.request_of(key) == register  # Trying: the TU is answering it
    ok = response_to(register, 200)
    layer.send_response(key, ok, 0.1)
    assert drain(layer) == [SendMessage(ok, UAC_UDP)]
    assert layer.state(key) is State.COMPLETED and layer.request_of(key) is None
    # 17.2.2: every retransmission of the request gets the final response again, the same
    # bytes on the wire, until Timer J.
    for at in (1.0, 5.0, 30.0):
        layer.receive(register, UAC_UDP, at)
        (again,) = drain(layer)
        assert isinstance(again, SendMessage) and again.destination == UAC_UDP
        assert serialize(again.message) == serialize(ok)
    assert kinds(run_until(layer, 100.0)) == [(32.1, "TransactionTerminated")]


def test_rfc3261_17_2_2_completed_server_transactions_hold_little_memory() -> None:
    """The registrar's case: 300 REGISTERs answered 200, all in Completed. Each keeps its key,
    its timer and the response as bytes: well under the 5 KB a parsed REGISTER and its parsed
    response took."""
    count = 300
    registers = [_register(i) for i in range(count)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        layer = TransactionLayer()
        for i, register in enumerate(registers):
            layer.receive(register, UAC_UDP, i * 0.01)
            (event,) = drain(layer)
            assert not isinstance(event, SendMessage)
            ok = response_to(register, 200).with_headers(
                response_to(register, 200).headers.appended("Contact", "<sip:u@127.0.0.1>")
            )
            layer.send_response(server_key(register), ok, i * 0.01)
            drain(layer)
        registers.clear()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(layer) == count
    assert held / count < 1800, f"{held / count:.0f} bytes per completed transaction"


def test_rfc3261_17_2_4_transport_error_in_completed_informs_the_tu() -> None:
    layer = TransactionLayer()
    register = request("REGISTER")
    layer.receive(register, UAC_UDP, 0.0)
    key = server_key(register)
    drain(layer)
    layer.send_response(key, response_to(register, 200), 0.1)
    drain(layer)
    layer.receive(register, UAC_UDP, 1.0)  # the retransmitted 200 cannot be sent
    drain(layer)
    layer.transport_error(key, 1.0)
    failure, terminated = drain(layer)
    assert terminated == TransactionTerminated(key)
    # Figure 8: "Trnsprt Err / Inform TU" from Completed. The request is rebuilt from the
    # response, which copied its Via, From, Call-ID and CSeq (8.2.6.2).
    assert isinstance(failure, TransportFailure) and failure.key == key
    for name in ("Via", "From", "Call-ID", "CSeq"):
        assert failure.request.headers.get(name) == register.headers.get(name)
    assert failure.request.method == "REGISTER"
    assert server_key(failure.request) == key


def test_rfc3261_17_1_2_2_completed_client_absorbs_responses_without_the_request() -> None:
    layer = TransactionLayer()
    register = request("REGISTER")
    key = layer.send_request(register, UAS_UDP, 0.0)
    drain(layer)
    ok = response_to(register, 200)
    layer.receive(ok, UAS_UDP, 0.1)
    assert drain(layer) == [ResponseReceived(ok, key)]
    assert layer.state(key) is State.COMPLETED and layer.request_of(key) is None
    layer.receive(ok, UAS_UDP, 0.2)  # a retransmission: absorbed (17.1.2.2)
    assert drain(layer) == [] and layer.stats.retransmissions_absorbed == 1
    # Figure 6: Completed sends nothing, so it has no transport error transition; a late
    # report about the request the peer has answered changes nothing.
    layer.transport_error(key, 0.3)
    assert drain(layer) == [] and layer.state(key) is State.COMPLETED
    assert kinds(run_until(layer, 10.0)) == [(5.1, "TransactionTerminated")]  # Timer K = T4


def test_rfc6026_7_2_accepted_client_passes_2xx_without_the_request() -> None:
    layer = TransactionLayer()
    invite = request()
    key = layer.send_request(invite, UAS_UDP, 0.0)
    drain(layer)
    first = response_to(invite, 200, "a")
    other = response_to(invite, 200, "b")
    layer.receive(first, UAS_UDP, 0.1)
    assert drain(layer) == [ResponseReceived(first, key)]
    assert layer.state(key) is State.ACCEPTED and layer.request_of(key) is None
    layer.receive(other, UAS_UDP, 0.2)  # another fork's 2xx still reaches the TU
    assert drain(layer) == [ResponseReceived(other, key)]
    layer.transport_error(key, 0.3)  # RFC 6026 figure 5: Accepted has no transport error
    assert drain(layer) == []
    assert kinds(run_until(layer, 100.0)) == [(32.1, "TransactionTerminated")]  # Timer M


def test_rfc3261_17_1_1_3_completed_invite_client_keeps_building_the_same_ack() -> None:
    layer = TransactionLayer()
    invite = request()
    key = layer.send_request(invite, UAS_UDP, 0.0)
    drain(layer)
    busy = response_to(invite, 486)
    layer.receive(busy, UAS_UDP, 0.1)
    _, first_ack = drain(layer)
    layer.receive(busy, UAS_UDP, 2.0)
    (second_ack,) = drain(layer)
    assert first_ack == second_ack and isinstance(first_ack, SendMessage)
    assert layer.request_of(key) == invite  # the ACK is built from it (17.1.1.3)


def test_rfc6026_7_1_accepted_server_passes_ack_and_sends_2xx_without_the_request() -> None:
    layer = TransactionLayer()
    invite = request()
    layer.receive(invite, UAC_UDP, 0.0)
    key = server_key(invite)
    drain(layer)
    ok = response_to(invite, 200)
    layer.send_response(key, ok, 0.1)
    drain(layer)
    assert layer.state(key) is State.ACCEPTED and layer.request_of(key) is None
    layer.receive(invite, UAC_UDP, 0.5)  # absorbed
    assert drain(layer) == []
    layer.send_response(key, ok, 0.6)  # the TU's own 2xx retransmission (13.3.1.4)
    assert drain(layer) == [SendMessage(ok, UAC_UDP)]
    ack = Request(
        "ACK",
        SipUri(host="beta.example", user="bob"),
        Headers.of(
            ("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKtx1"),
            ("From", "<sip:bill@alpha.example>;tag=f1"),
            ("To", "<sip:bob@beta.example>;tag=t1"),
            ("Call-ID", "call-1@alpha.example"),
            ("CSeq", "1 ACK"),
            ("Content-Length", "0"),
        ),
    )
    layer.receive(ack, UAC_UDP, 0.7)
    assert drain(layer) == [AckReceived(ack, UAC_UDP, key)]
    with pytest.raises(LocalProtocolError, match="Accepted"):  # API misuse, said so
        layer.send_trying(key, 0.8)


def test_rfc3261_17_2_3_rfc2543_ack_still_matches_once_the_request_is_gone() -> None:
    layer = TransactionLayer()
    invite = request(branch=None)
    layer.receive(invite, UAC_UDP, 0.0)
    (event,) = drain(layer)
    assert isinstance(event, RequestReceived)
    key = event.key
    busy = response_to(invite, 486, "srv")
    layer.send_response(key, busy, 0.1)
    drain(layer)
    ack = Request(
        "ACK",
        invite.uri,
        invite.headers.replaced("To", [busy.headers.get("To") or ""]).replaced(
            "CSeq", ["1 ACK"]
        ),
    )
    layer.receive(ack, UAC_UDP, 0.2)
    assert drain(layer) == [] and layer.state(key) is State.CONFIRMED
    assert layer.request_of(key) is None
    layer.receive(ack, UAC_UDP, 0.3)  # Confirmed absorbs the retransmitted ACK (17.2.1)
    assert drain(layer) == [] and layer.state(key) is State.CONFIRMED
