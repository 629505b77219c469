"""SIP transactions (RFC 3261 section 17, RFC 6026), driven by a fake clock.

Each test names the rule it checks. Outcomes are compared exactly: the events drained from the
layer, with the time they happened at, as tables.
"""

from __future__ import annotations

import pytest

from ims.sip.address import Address
from ims.sip.errors import LocalProtocolError
from ims.sip.headers import parse_via
from ims.sip.message import Headers, Request, Response, make_response
from ims.sip.transaction import (
    AckReceived,
    CancelReceived,
    Event,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    State,
    TimerSettings,
    TransactionKey,
    TransactionLayer,
    TransactionLimitReached,
    TransactionTerminated,
    TransactionTimeout,
    TransportFailure,
    make_ack_for_error,
    make_cancel,
    make_trying,
    response_destination,
    server_key,
)
from ims.sip.uri import SipUri

UAS_UDP = Address("UDP", "127.0.0.1", 5070)
UAS_TCP = Address("TCP", "127.0.0.1", 5070)
UAC_UDP = Address("UDP", "127.0.0.1", 5060)
UAC_TCP = Address("TCP", "127.0.0.1", 40123)
BRANCH = "z9hG4bKtx1"


def request(
    method: str = "INVITE",
    *,
    branch: str | None = BRANCH,
    transport: str = "UDP",
    sent_by: str = "127.0.0.1:5060",
    to_tag: str | None = None,
    cseq: int = 1,
    uri: str = "bob",
    via_params: str = "",
) -> Request:
    branch_param = f";branch={branch}" if branch is not None else ""
    to = "<sip:bob@beta.example>" + (f";tag={to_tag}" if to_tag else "")
    return Request(
        method,
        SipUri(host="beta.example", user=uri),
        Headers.of(
            ("Via", f"SIP/2.0/{transport} {sent_by}{branch_param}{via_params}"),
            ("Max-Forwards", "70"),
            ("From", "<sip:bill@alpha.example>;tag=f1"),
            ("To", to),
            ("Call-ID", "call-1@alpha.example"),
            ("CSeq", f"{cseq} {method}"),
            ("Content-Length", "0"),
        ),
    )


def response_to(req: Request, status: int, to_tag: str | None = "t1") -> Response:
    return make_response(req, status, to_tag=to_tag)


def drain(layer: TransactionLayer) -> list[Event]:
    out: list[Event] = []
    while (event := layer.next_event()) is not None:
        out.append(event)
    return out


def run_until(layer: TransactionLayer, end: float) -> list[tuple[float, Event]]:
    """Fire timers as a driver would, up to `end` inclusive; events stamped with their time."""
    out: list[tuple[float, Event]] = []
    for _ in range(1000):
        deadline = layer.get_timer()
        if deadline is None or deadline > end:
            break
        layer.handle_timer(deadline)
        out.extend((deadline, e) for e in drain(layer))
    return out


def kinds(stamped: list[tuple[float, Event]]) -> list[tuple[float, str]]:
    return [(t, type(e).__name__) for t, e in stamped]


# --- client transactions: retransmission timers -----------------------------------------------


def test_rfc3261_17_1_1_2_timer_a_doubles_until_timer_b_times_out() -> None:
    layer = TransactionLayer()
    invite = request()
    key = layer.send_request(invite, UAS_UDP, 0.0)
    assert drain(layer) == [SendMessage(invite, UAS_UDP)]
    stamped = run_until(layer, 100.0)
    # Timer A: T1, 2T1, 4T1, ... (no cap for INVITE); Timer B = 64*T1 = 32 s.
    assert kinds(stamped) == [
        (0.5, "SendMessage"),
        (1.5, "SendMessage"),
        (3.5, "SendMessage"),
        (7.5, "SendMessage"),
        (15.5, "SendMessage"),
        (31.5, "SendMessage"),
        (32.0, "TransactionTimeout"),
        (32.0, "TransactionTerminated"),
    ]
    assert stamped[-2][1] == TransactionTimeout(key, invite)
    assert layer.get_timer() is None and len(layer) == 0


def test_rfc3261_17_1_2_2_timer_e_doubles_capped_at_t2_until_timer_f() -> None:
    layer = TransactionLayer()
    options = request("OPTIONS")
    layer.send_request(options, UAS_UDP, 0.0)
    drain(layer)
    stamped = run_until(layer, 100.0)
    sends = [t for t, e in stamped if isinstance(e, SendMessage)]
    # E: 0.5, 1, 2, 4 (= T2), 4, 4, ...; F = 64*T1 = 32 s.
    assert sends == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert kinds(stamped)[-2:] == [(32.0, "TransactionTimeout"), (32.0, "TransactionTerminated")]


def test_rfc3261_17_1_2_2_timer_e_is_t2_once_proceeding() -> None:
    layer = TransactionLayer()
    options = request("OPTIONS")
    key = layer.send_request(options, UAS_UDP, 0.0)
    drain(layer)
    trying = response_to(options, 100, None)
    layer.receive(trying, UAS_UDP, 0.2)
    assert drain(layer) == [ResponseReceived(trying, key)]
    assert layer.state(key) is State.PROCEEDING
    sends = [t for t, e in run_until(layer, 20.0) if isinstance(e, SendMessage)]
    assert sends == [0.5, 4.5, 8.5, 12.5, 16.5]


def test_rfc3261_17_1_1_2_timers_scale_with_settings() -> None:
    layer = TransactionLayer(TimerSettings(t1=0.01, t2=0.04, t4=0.05))
    layer.send_request(request(), UAS_UDP, 0.0)
    drain(layer)
    stamped = run_until(layer, 1.0)
    assert [round(t, 3) for t, _ in stamped] == [0.01, 0.03, 0.07, 0.15, 0.31, 0.63, 0.64, 0.64]


@pytest.mark.parametrize(
    ("method", "timeout_at"),
    [("INVITE", 32.0), ("OPTIONS", 32.0)],
)
def test_rfc3261_17_1_1_2_no_retransmission_over_reliable_transport(
    method: str, timeout_at: float
) -> None:
    layer = TransactionLayer()
    req = request(method, transport="TCP")
    layer.send_request(req, UAS_TCP, 0.0)
    assert drain(layer) == [SendMessage(req, UAS_TCP)]
    # Only Timer B / F runs: no A / E on a reliable transport.
    assert layer.get_timer() == timeout_at
    assert kinds(run_until(layer, 100.0)) == [
        (timeout_at, "TransactionTimeout"),
        (timeout_at, "TransactionTerminated"),
    ]


def test_rfc3261_17_1_1_2_provisional_stops_timer_a_and_timer_b() -> None:
    layer = TransactionLayer()
    invite = request()
    key = layer.send_request(invite, UAS_UDP, 0.0)
    drain(layer)
    ringing = response_to(invite, 180)
    layer.receive(ringing, UAS_UDP, 0.1)
    assert drain(layer) == [ResponseReceived(ringing, key)]
    assert layer.state(key) is State.PROCEEDING
    # Proceeding: no retransmission and no Timer B; Timer C is the proxy's (16.6 item 11).
    assert layer.get_timer() is None


# --- INVITE client: final responses -----------------------------------------------------------


def test_rfc3261_17_1_1_3_ack_for_4xx_built_by_the_transaction() -> None:
    layer = TransactionLayer()
    invite = request().with_headers(
        request().headers.appended("Route", "<sip:p1.alpha.example;lr>")
    )
    key = layer.send_request(invite, UAS_UDP, 0.0)
    drain(layer)
    busy = response_to(invite, 486)
    layer.receive(busy, UAS_UDP, 1.0)
    ack = make_ack_for_error(invite, busy)
    assert drain(layer) == [ResponseReceived(busy, key), SendMessage(ack, UAS_UDP)]
    assert ack.method == "ACK" and ack.uri == invite.uri
    assert list(ack.headers) == [
        ("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKtx1"),  # same branch
        ("Route", "<sip:p1.alpha.example;lr>"),
        ("Max-Forwards", "70"),
        ("From", "<sip:bill@alpha.example>;tag=f1"),
        ("To", "<sip:bob@beta.example>;tag=t1"),  # the response's To, with its tag
        ("Call-ID", "call-1@alpha.example"),
        ("CSeq", "1 ACK"),
        ("Content-Length", "0"),
    ]
    assert layer.state(key) is State.COMPLETED


def test_rfc3261_17_1_1_2_completed_absorbs_final_retransmission_and_resends_ack() -> None:
    layer = TransactionLayer()
    invite = request()
    key = layer.send_request(invite, UAS_UDP, 0.0)
    busy = response_to(invite, 486)
    layer.receive(busy, UAS_UDP, 1.0)
    drain(layer)
    layer.receive(busy, UAS_UDP, 2.0)
    # Not passed to the TU again; the ACK is sent again.
    assert drain(layer) == [SendMessage(make_ack_for_error(invite, busy), UAS_UDP)]
    # Timer D: 32 s on an unreliable transport.
    assert layer.get_timer() == 33.0
    assert kinds(run_until(layer, 100.0)) == [(33.0, "TransactionTerminated")]
    assert layer.state(key) is None


def test_rfc3261_17_1_1_2_timer_d_zero_over_reliable_transport() -> None:
    layer = TransactionLayer()
    invite = request(transport="TCP")
    key = layer.send_request(invite, UAS_TCP, 0.0)
    drain(layer)
    busy = response_to(invite, 486)
    layer.receive(busy, UAS_TCP, 1.0)
    assert drain(layer) == [
        ResponseReceived(busy, key),
        SendMessage(make_ack_for_error(invite, busy), UAS_TCP),
        TransactionTerminated(key),
    ]
    assert layer.get_timer() is None


def test_rfc6026_7_2_invite_client_accepted_passes_every_2xx_up_until_timer_m() -> None:
    layer = TransactionLayer()
    invite = request()
    key = layer.send_request(invite, UAS_UDP, 0.0)
    drain(layer)
    ok = response_to(invite, 200, "t1")
    layer.receive(ok, UAS_UDP, 1.0)
    assert drain(layer) == [ResponseReceived(ok, key)]  # no ACK: the 2xx ACK is the TU's
    assert layer.state(key) is State.ACCEPTED
    ok_fork = response_to(invite, 200, "t2")
    layer.receive(ok, UAS_UDP, 2.0)
    layer.receive(ok_fork, UAS_UDP, 3.0)
    assert drain(layer) == [ResponseReceived(ok, key), ResponseReceived(ok_fork, key)]
    # A late non-2xx is not for the TU any more.
    layer.receive(response_to(invite, 486, "t3"), UAS_UDP, 4.0)
    assert drain(layer) == []
    # Timer M = 64*T1 from entering Accepted.
    assert kinds(run_until(layer, 100.0)) == [(33.0, "TransactionTerminated")]


# --- non-INVITE client ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transport", "destination", "terminated_at"),
    [("UDP", UAS_UDP, 6.0), ("TCP", UAS_TCP, 1.0)],
)
def test_rfc3261_17_1_2_2_timer_k_t4_unreliable_zero_reliable(
    transport: str, destination: Address, terminated_at: float
) -> None:
    layer = TransactionLayer()
    bye = request("BYE", transport=transport, to_tag="t1")
    key = layer.send_request(bye, destination, 0.0)
    drain(layer)
    ok = response_to(bye, 200)
    layer.receive(ok, destination, 1.0)
    events = drain(layer)
    assert events[0] == ResponseReceived(ok, key)
    if transport == "TCP":
        assert events[1:] == [TransactionTerminated(key)]
        return
    layer.receive(ok, destination, 2.0)  # absorbed in Completed
    assert drain(layer) == []
    assert kinds(run_until(layer, 100.0)) == [(terminated_at, "TransactionTerminated")]


def test_rfc3261_17_1_3_response_matches_branch_and_cseq_method() -> None:
    layer = TransactionLayer()
    invite = request()
    key = layer.send_request(invite, UAS_UDP, 0.0)
    drain(layer)
    # Same branch, CSeq method CANCEL: the CANCEL transaction, not the INVITE one.
    cancel_ok = response_to(make_cancel(invite), 200)
    layer.receive(cancel_ok, UAS_UDP, 0.1)
    assert drain(layer) == [ResponseReceived(cancel_ok, None)]
    other = response_to(request(branch="z9hG4bKother"), 180)
    layer.receive(other, UAS_UDP, 0.2)
    assert drain(layer) == [ResponseReceived(other, None)]
    assert layer.state(key) is State.CALLING
    assert layer.stats.stray_responses == 2


def test_rfc3261_17_1_4_transport_error_reported_and_terminates() -> None:
    layer = TransactionLayer()
    invite = request()
    key = layer.send_request(invite, UAS_UDP, 0.0)
    drain(layer)
    layer.transport_error(key, 0.1)
    assert drain(layer) == [TransportFailure(key, invite), TransactionTerminated(key)]
    layer.transport_error(key, 0.2)  # late report for a finished transaction: ignored
    assert drain(layer) == [] and layer.get_timer() is None


# --- INVITE server ----------------------------------------------------------------------------


def test_rfc3261_17_2_1_retransmitted_invite_gets_last_provisional() -> None:
    layer = TransactionLayer()
    invite = request()
    layer.receive(invite, UAC_UDP, 0.0)
    (event,) = drain(layer)
    assert isinstance(event, RequestReceived)
    key = event.key
    layer.receive(invite, UAC_UDP, 0.1)  # nothing sent yet: nothing to resend
    assert drain(layer) == []
    layer.send_trying(key, 0.2)
    trying = make_trying(invite)
    ringing = response_to(invite, 180)
    layer.send_response(key, ringing, 0.3)
    assert drain(layer) == [SendMessage(trying, UAC_UDP), SendMessage(ringing, UAC_UDP)]
    layer.receive(invite, UAC_UDP, 0.5)
    assert drain(layer) == [SendMessage(ringing, UAC_UDP)]
    assert layer.stats.retransmissions_absorbed == 2


def test_rfc3261_17_2_1_timer_g_retransmits_final_capped_at_t2_until_timer_h() -> None:
    layer = TransactionLayer()
    invite = request()
    layer.receive(invite, UAC_UDP, 0.0)
    key = server_key(invite)
    drain(layer)
    busy = response_to(invite, 486)
    layer.send_response(key, busy, 1.0)
    assert drain(layer) == [SendMessage(busy, UAC_UDP)]
    stamped = run_until(layer, 100.0)
    sends = [t for t, e in stamped if isinstance(e, SendMessage)]
    # G: 0.5, 1, 2, 4 (= T2), 4, ... from 1.0; H = 64*T1 = 32 s after the final.
    assert sends == [1.5, 2.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.5]
    # Timer H: the ACK never came, a transaction failure for the TU (17.2.1).
    assert stamped[-2:] == [
        (33.0, TransactionTimeout(key, invite)),
        (33.0, TransactionTerminated(key)),
    ]


def test_rfc3261_17_2_1_ack_confirms_and_is_absorbed_until_timer_i() -> None:
    layer = TransactionLayer()
    invite = request()
    layer.receive(invite, UAC_UDP, 0.0)
    key = server_key(invite)
    busy = response_to(invite, 486)
    layer.send_response(key, busy, 1.0)
    drain(layer)
    ack = make_ack_for_error(invite, busy)
    layer.receive(ack, UAC_UDP, 1.2)
    assert drain(layer) == []  # the ACK for a non-2xx is not passed up
    assert layer.state(key) is State.CONFIRMED
    layer.receive(ack, UAC_UDP, 1.3)
    layer.receive(invite, UAC_UDP, 1.4)
    assert drain(layer) == []  # both absorbed, no more 486
    # Timer I = T4 from the ACK; G and H cancelled.
    assert kinds(run_until(layer, 100.0)) == [(6.2, "TransactionTerminated")]


def test_rfc3261_17_2_1_reliable_transport_no_timer_g_and_timer_i_zero() -> None:
    layer = TransactionLayer()
    invite = request(transport="TCP")
    layer.receive(invite, UAC_TCP, 0.0)
    key = server_key(invite)
    busy = response_to(invite, 486)
    layer.send_response(key, busy, 1.0)
    # Over TCP the response goes back on the connection the request came on (18.2.2).
    assert drain(layer)[-1] == SendMessage(busy, UAC_TCP)
    assert layer.get_timer() == 33.0  # only Timer H
    layer.receive(make_ack_for_error(invite, busy), UAC_TCP, 2.0)
    assert drain(layer) == [TransactionTerminated(key)]


def test_rfc6026_7_1_invite_server_accepted_absorbs_invite_passes_ack_sends_2xx() -> None:
    layer = TransactionLayer()
    invite = request()
    layer.receive(invite, UAC_UDP, 0.0)
    key = server_key(invite)
    drain(layer)
    ok = response_to(invite, 200)
    layer.send_response(key, ok, 1.0)
    assert drain(layer) == [SendMessage(ok, UAC_UDP)]
    assert layer.state(key) is State.ACCEPTED
    assert layer.get_timer() == 33.0  # Timer L = 64*T1; no retransmission by the layer
    layer.receive(invite, UAC_UDP, 1.1)
    assert drain(layer) == []  # absorbed, not a new request for the TU
    layer.send_response(key, ok, 1.5)  # the TU's own 2xx retransmission (13.3.1.4)
    assert drain(layer) == [SendMessage(ok, UAC_UDP)]
    # An ACK with the INVITE's branch (an RFC 2543-minded UAC) goes to the TU.
    ack_headers = invite.headers.replaced("CSeq", ["1 ACK"])
    ack_same_branch = Request("ACK", invite.uri, ack_headers.replaced("To", [str(ok.to)]))
    layer.receive(ack_same_branch, UAC_UDP, 1.6)
    assert drain(layer) == [AckReceived(ack_same_branch, UAC_UDP, key)]
    # The usual 2xx ACK has its own branch: not a transaction, passed up as well.
    ack_new_branch = Request(
        "ACK",
        invite.uri,
        ack_same_branch.headers.replaced("Via", ["SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKack"]),
    )
    layer.receive(ack_new_branch, UAC_UDP, 1.7)
    assert drain(layer) == [AckReceived(ack_new_branch, UAC_UDP, None)]
    assert kinds(run_until(layer, 100.0)) == [(33.0, "TransactionTerminated")]


def test_rfc3261_17_2_1_misuse_second_final_response_raises() -> None:
    layer = TransactionLayer()
    invite = request()
    layer.receive(invite, UAC_UDP, 0.0)
    key = server_key(invite)
    layer.send_response(key, response_to(invite, 486), 1.0)
    with pytest.raises(LocalProtocolError, match="Completed"):
        layer.send_response(key, response_to(invite, 200), 1.1)
    with pytest.raises(LocalProtocolError, match="no live server transaction"):
        layer.send_response(server_key(request(branch="z9hG4bKnone")), response_to(invite, 200), 1)


# --- non-INVITE server ------------------------------------------------------------------------


def test_rfc3261_17_2_2_trying_absorbs_proceeding_resends_provisional_completed_final() -> None:
    layer = TransactionLayer()
    options = request("OPTIONS")
    layer.receive(options, UAC_UDP, 0.0)
    key = server_key(options)
    drain(layer)
    layer.receive(options, UAC_UDP, 0.5)
    assert drain(layer) == []  # Trying: absorbed silently
    trying = response_to(options, 100, None)
    layer.send_response(key, trying, 0.6)
    drain(layer)
    layer.receive(options, UAC_UDP, 1.5)
    assert drain(layer) == [SendMessage(trying, UAC_UDP)]
    ok = response_to(options, 200)
    layer.send_response(key, ok, 1.6)
    drain(layer)
    layer.receive(options, UAC_UDP, 3.5)
    assert drain(layer) == [SendMessage(ok, UAC_UDP)]
    # Timer J = 64*T1 on UDP.
    assert kinds(run_until(layer, 100.0)) == [(33.6, "TransactionTerminated")]


def test_rfc3261_17_2_2_timer_j_zero_over_reliable_transport() -> None:
    layer = TransactionLayer()
    options = request("OPTIONS", transport="TCP")
    layer.receive(options, UAC_TCP, 0.0)
    key = server_key(options)
    drain(layer)
    ok = response_to(options, 200)
    layer.send_response(key, ok, 0.1)
    assert drain(layer) == [SendMessage(ok, UAC_TCP), TransactionTerminated(key)]


# --- server matching --------------------------------------------------------------------------


def test_rfc3261_17_2_3_same_branch_other_sent_by_is_another_transaction() -> None:
    layer = TransactionLayer()
    layer.receive(request("OPTIONS"), UAC_UDP, 0.0)
    other = request("OPTIONS", sent_by="127.0.0.2:5060")
    layer.receive(other, Address("UDP", "127.0.0.2", 5060), 0.1)
    events = drain(layer)
    assert [type(e) for e in events] == [RequestReceived, RequestReceived]
    assert len(layer) == 2


def test_rfc3261_17_2_3_same_branch_other_method_is_another_transaction() -> None:
    layer = TransactionLayer()
    layer.receive(request("OPTIONS"), UAC_UDP, 0.0)
    layer.receive(request("MESSAGE"), UAC_UDP, 0.1)
    assert [type(e) for e in drain(layer)] == [RequestReceived, RequestReceived]


def test_rfc3261_17_2_3_rfc2543_matching_without_magic_cookie() -> None:
    layer = TransactionLayer()
    invite = request(branch=None)
    layer.receive(invite, UAC_UDP, 0.0)
    (event,) = drain(layer)
    assert isinstance(event, RequestReceived) and event.key.legacy
    key = event.key
    busy = response_to(invite, 486, "srv")
    layer.send_response(key, busy, 0.1)
    drain(layer)
    # Retransmission: same Request-URI, tags, Call-ID, CSeq, top Via.
    layer.receive(invite, UAC_UDP, 0.5)
    assert drain(layer) == [SendMessage(busy, UAC_UDP)]
    # A different CSeq number is a new transaction.
    layer.receive(request(branch=None, cseq=2), UAC_UDP, 0.6)
    assert [type(e) for e in drain(layer)] == [RequestReceived]
    # An ACK whose To tag is not the one of our response does not match: passed up.
    stray_ack = make_ack_for_error(invite, response_to(invite, 486, "other"))
    layer.receive(stray_ack, UAC_UDP, 0.7)
    assert drain(layer) == [AckReceived(stray_ack, UAC_UDP, None)]
    # The ACK with our To tag matches the INVITE transaction: Confirmed, absorbed.
    layer.receive(make_ack_for_error(invite, busy), UAC_UDP, 0.8)
    assert drain(layer) == []
    assert layer.state(key) is State.CONFIRMED


def test_rfc3261_9_2_cancel_is_its_own_transaction_matching_the_invite() -> None:
    layer = TransactionLayer()
    invite = request()
    layer.receive(invite, UAC_UDP, 0.0)
    invite_key = server_key(invite)
    drain(layer)
    cancel = make_cancel(invite)
    layer.receive(cancel, UAC_UDP, 1.0)
    (event,) = drain(layer)
    assert event == CancelReceived(cancel, UAC_UDP, server_key(cancel), invite_key)
    assert event.key != invite_key and event.key.method == "CANCEL"
    ok = response_to(cancel, 200)
    layer.send_response(event.key, ok, 1.1)
    assert drain(layer) == [SendMessage(ok, UAC_UDP)]
    layer.receive(cancel, UAC_UDP, 1.5)  # CANCEL retransmission: the 200 again
    assert drain(layer) == [SendMessage(ok, UAC_UDP)]
    assert layer.state(invite_key) is State.PROCEEDING  # the TU decides what to do


def test_rfc3261_9_2_cancel_without_invite_transaction_has_no_invite_key() -> None:
    layer = TransactionLayer()
    cancel = make_cancel(request())
    layer.receive(cancel, UAC_UDP, 0.0)
    (event,) = drain(layer)
    assert isinstance(event, CancelReceived) and event.invite_key is None


def test_rfc3261_9_2_cancel_rfc2543_matching() -> None:
    layer = TransactionLayer()
    invite = request(branch=None)
    layer.receive(invite, UAC_UDP, 0.0)
    drain(layer)
    layer.receive(make_cancel(invite), UAC_UDP, 0.1)
    (event,) = drain(layer)
    assert isinstance(event, CancelReceived) and event.invite_key == server_key(invite)


def test_rfc3261_9_1_cancel_copies_invite_fields() -> None:
    invite = request().with_headers(
        request()
        .headers.appended("Route", "<sip:p1.alpha.example;lr>")
        .appended("Require", "100rel")
        .prepended("Via", "SIP/2.0/UDP p1.alpha.example;branch=z9hG4bKtop")
    )
    cancel = make_cancel(invite, reason='SIP;cause=200;text="Call completed elsewhere"')
    assert cancel.method == "CANCEL" and cancel.uri == invite.uri
    assert list(cancel.headers) == [
        ("Via", "SIP/2.0/UDP p1.alpha.example;branch=z9hG4bKtop"),  # only the top Via
        ("Route", "<sip:p1.alpha.example;lr>"),
        ("Max-Forwards", "70"),
        ("From", "<sip:bill@alpha.example>;tag=f1"),
        ("To", "<sip:bob@beta.example>"),
        ("Call-ID", "call-1@alpha.example"),
        ("CSeq", "1 CANCEL"),
        ("Reason", 'SIP;cause=200;text="Call completed elsewhere"'),
        ("Content-Length", "0"),
    ]
    with pytest.raises(LocalProtocolError):
        make_cancel(request("OPTIONS"))


# --- destinations, bad input, bounds, API misuse ----------------------------------------------


@pytest.mark.parametrize(
    ("via", "source", "expected"),
    [
        # 18.2.2: received present -> that address, sent-by port.
        (
            "SIP/2.0/UDP alpha.example:5062;branch=z9hG4bK1;received=127.0.0.9",
            UAC_UDP,
            Address("UDP", "127.0.0.9", 5062),
        ),
        # RFC 3581 section 4: rport filled -> received address and rport port.
        (
            "SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK1;received=127.0.0.9;rport=40000",
            UAC_UDP,
            Address("UDP", "127.0.0.9", 40000),
        ),
        # rport asked for but not filled: the source port.
        ("SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1;rport", UAC_UDP, UAC_UDP),
        # Neither: sent-by, default port 5060.
        ("SIP/2.0/UDP 127.0.0.3;branch=z9hG4bK1", UAC_UDP, Address("UDP", "127.0.0.3", 5060)),
        ("SIP/2.0/UDP [::1]:5070;branch=z9hG4bK1", UAC_UDP, Address("UDP", "::1", 5070)),
        # Reliable: back on the connection (the source).
        ("SIP/2.0/TCP 10.0.0.1:5062;branch=z9hG4bK1", UAC_TCP, UAC_TCP),
        # Stateless forwarding (no source): the Via's own transport.
        ("SIP/2.0/TCP 127.0.0.4;branch=z9hG4bK1", None, Address("TCP", "127.0.0.4", 5060)),
    ],
)
def test_rfc3261_18_2_2_and_rfc3581_response_destination(
    via: str, source: Address | None, expected: Address
) -> None:
    assert response_destination(parse_via(via), source) == expected


def test_rfc3261_8_2_malformed_request_answered_400_statelessly() -> None:
    layer = TransactionLayer()
    bad = request("OPTIONS").with_headers(request("OPTIONS").headers.replaced("CSeq", ["1 BYE"]))
    layer.receive(bad, UAC_UDP, 0.0)
    (event,) = drain(layer)
    assert isinstance(event, SendMessage) and isinstance(event.message, Response)
    assert event.message.status_code == 400
    assert "CSeq" in event.message.reason
    assert len(layer) == 0 and layer.stats.rejected_malformed == 1
    # A broken ACK is never answered.
    bad_ack = request("ACK").with_headers(request("ACK").headers.without("Call-ID"))
    layer.receive(bad_ack, UAC_UDP, 0.1)
    assert drain(layer) == []


def test_rfc3261_18_1_2_malformed_response_dropped() -> None:
    layer = TransactionLayer()
    invite = request()
    key = layer.send_request(invite, UAS_UDP, 0.0)
    drain(layer)
    broken = response_to(invite, 180)
    broken = broken.with_headers(broken.headers.without("From"))
    layer.receive(broken, UAS_UDP, 0.1)
    assert drain(layer) == [] and layer.state(key) is State.CALLING


def test_transaction_limit_rfc3261_21_5_4_503_with_retry_after() -> None:
    layer = TransactionLayer(max_transactions=2, retry_after=7)
    first = request("OPTIONS", branch="z9hG4bKa")
    layer.receive(first, UAC_UDP, 0.0)
    layer.send_request(request("OPTIONS", branch="z9hG4bKb"), UAS_UDP, 0.0)
    drain(layer)
    with pytest.raises(TransactionLimitReached, match="2 transactions"):
        layer.send_request(request("OPTIONS", branch="z9hG4bKc"), UAS_UDP, 0.0)
    third = request("OPTIONS", branch="z9hG4bKd")
    layer.receive(third, UAC_UDP, 0.1)
    (event,) = drain(layer)
    assert isinstance(event, SendMessage) and isinstance(event.message, Response)
    assert event.message.status_code == 503
    assert event.message.headers.get("Retry-After") == "7"
    assert len(layer) == 2 and layer.stats.rejected_overload == 1
    # A retransmission of a live transaction still matches.
    layer.receive(first, UAC_UDP, 0.2)
    assert drain(layer) == []
    assert layer.stats.retransmissions_absorbed == 1


def test_many_finished_transactions_leave_no_state() -> None:
    layer = TransactionLayer()
    for i in range(3000):
        invite = request(branch=f"z9hG4bK{i}")
        layer.send_request(invite, UAS_UDP, float(i))
        # The 1xx cancels Timers A and B; the heap must not keep them all.
        layer.receive(response_to(invite, 180), UAS_UDP, float(i))
        layer.receive(response_to(invite, 486), UAS_UDP, float(i))
        layer.handle_timer(float(i))
        drain(layer)
    run_until(layer, 10_000.0)
    drain(layer)
    assert len(layer) == 0 and layer.get_timer() is None
    assert len(layer._heap) == 0


@pytest.mark.parametrize(
    ("req", "match"),
    [
        (request("ACK"), "not a transaction"),
        (request(branch="1234"), "z9hG4bK"),
        (request(branch=None), "z9hG4bK"),
    ],
)
def test_rfc3261_8_1_1_7_send_request_misuse_raises(req: Request, match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        TransactionLayer().send_request(req, UAS_UDP, 0.0)


def test_send_request_twice_with_same_branch_raises() -> None:
    layer = TransactionLayer()
    layer.send_request(request(), UAS_UDP, 0.0)
    with pytest.raises(LocalProtocolError, match="already live"):
        layer.send_request(request(), UAS_UDP, 0.0)


def test_timer_settings_validated() -> None:
    with pytest.raises(ValueError, match="T2"):
        TimerSettings(t1=5.0, t2=4.0)
    with pytest.raises(ValueError, match="positive"):
        TimerSettings(t1=0.0)


def test_transaction_key_str_is_readable() -> None:
    assert str(TransactionKey(False, "INVITE", BRANCH)) == "client INVITE z9hG4bKtx1"
