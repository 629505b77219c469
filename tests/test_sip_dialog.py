"""Dialogs and UA-core request construction (RFC 3261 sections 8.1.1, 12, 13.2.2.4, 14, 15)."""

from __future__ import annotations

import itertools

import pytest

from ims.sip.address import Address
from ims.sip.dialog import (
    SENT_BY_PLACEHOLDER,
    CallDoesNotExist,
    Dialog,
    DialogId,
    DialogState,
    DialogTable,
    DialogTableFull,
    InviteInProgress,
    RequestOutOfOrder,
    RequestPending,
    create_initial_request,
    place_route_set,
    reject,
    with_sent_by,
)
from ims.sip.errors import LocalProtocolError, ProtocolError
from ims.sip.headers import NameAddress, parse_name_addr
from ims.sip.ids import (
    BRANCH_MAGIC_COOKIE,
    IdSource,
    RandomSource,
    is_rfc3261_branch,
    new_branch,
    new_call_id,
    new_tag,
)
from ims.sip.message import Request, Response, make_response, parse_message, serialize
from ims.sip.uri import SipUri, parse_uri

BILL = "sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org"
DAVE = "sip:+15550100002@ims.mnc002.mcc001.3gppnetwork.org"
BILL_CONTACT = "sip:bill@127.0.0.1:5070"
DAVE_CONTACT = "sip:dave@127.0.0.2:5080"
P1 = "<sip:pcscf.ims.mnc001.mcc001.3gppnetwork.org;lr>"
P2 = "<sip:ibcf.ims.mnc002.mcc001.3gppnetwork.org;lr>"


def counting_random() -> RandomSource:
    counter = itertools.count(1)
    return lambda size: next(counter).to_bytes(size, "big")


def fixed_ids(byte: int = 0) -> IdSource:
    return IdSource(lambda size: bytes([byte]) * size)


def msg(data: str) -> Request | Response:
    return parse_message(data.replace("\n", "\r\n").encode())


def invite(*headers: str) -> Request:
    text = (
        f"INVITE {DAVE} SIP/2.0\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKinv1;rport\n"
        "Max-Forwards: 70\n"
        f"To: <{DAVE}>\n"
        f"From: <{BILL}>;tag=btag\n"
        "Call-ID: call-1@127.0.0.1\n"
        "CSeq: 10 INVITE\n"
        f"Contact: <{BILL_CONTACT}>\n"
        + "".join(h + "\n" for h in headers)
        + "Content-Length: 0\n\n"
    )
    request = msg(text)
    assert isinstance(request, Request)
    return request


def answer(
    request: Request,
    status: int,
    *headers: tuple[str, str],
    to_tag: str | None = "dtag",
    contact: str | None = DAVE_CONTACT,
) -> Response:
    extra = list(headers)
    if contact is not None:
        extra.append(("Contact", f"<{contact}>"))
    return make_response(request, status, to_tag=to_tag, extra=extra)


def uac_dialog(*rr: str) -> tuple[Request, Dialog]:
    request = invite(*(f"Record-Route: {r}" for r in rr))
    return request, Dialog.from_uac(request, answer(request, 200))


# --- ids ----------------------------------------------------------------------------------


def test_branch_has_magic_cookie_rfc3261_8_1_1_7() -> None:
    branch = new_branch(counting_random())
    assert branch.startswith(BRANCH_MAGIC_COOKIE)
    assert is_rfc3261_branch(branch)
    assert not is_rfc3261_branch("1234")
    assert not is_rfc3261_branch(None)


def test_ids_come_from_the_injected_source_and_differ() -> None:
    source = counting_random()
    values = {new_branch(source), new_branch(source), new_tag(source), new_call_id(source)}
    assert len(values) == 4
    assert new_tag(lambda n: b"\x00" * n) == "aaaaaaaaaaaaa"
    assert new_call_id(lambda n: b"\x00" * n, "127.0.0.1").endswith("@127.0.0.1")


def test_tag_has_at_least_32_random_bits_rfc3261_19_3() -> None:
    asked: list[int] = []

    def source(size: int) -> bytes:
        asked.append(size)
        return b"\x01" * size

    new_tag(source)
    assert asked[0] * 8 >= 32


def test_short_random_source_is_refused() -> None:
    with pytest.raises(ValueError, match="random source returned"):
        new_tag(lambda n: b"")


def test_ids_are_valid_in_headers() -> None:
    ids = IdSource(counting_random())
    request = create_initial_request(
        "OPTIONS", parse_uri(DAVE), from_=parse_uri(BILL), to=parse_uri(DAVE), ids=ids
    )
    again = parse_message(serialize(request))
    assert again == request
    assert again.top_via.branch is not None and is_rfc3261_branch(again.top_via.branch)
    assert again.from_.tag


# --- initial requests (8.1.1) --------------------------------------------------------------


def test_initial_request_exact_headers_rfc3261_8_1_1() -> None:
    ids = fixed_ids()
    request = create_initial_request(
        "INVITE",
        parse_uri(DAVE),
        from_=NameAddress(parse_uri(BILL), '"Bill"'),
        to=parse_uri(DAVE),
        ids=ids,
        contact=parse_uri(BILL_CONTACT),
        route_set=[parse_name_addr(P1), parse_name_addr("<sip:orig@scscf.example;lr>")],
        call_id="cid-1",
        extra=[("Supported", "ueconnect")],
        body=b"v=0\r\n",
        content_type="application/sdp",
    )
    z = "a" * 26
    assert serialize(request).decode() == (
        f"INVITE {DAVE} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {SENT_BY_PLACEHOLDER};branch=z9hG4bK{z};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"Route: {P1}\r\n"
        "Route: <sip:orig@scscf.example;lr>\r\n"
        f"To: <{DAVE}>\r\n"
        f'From: "Bill" <{BILL}>;tag=aaaaaaaaaaaaa\r\n'
        "Call-ID: cid-1\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <{BILL_CONTACT}>\r\n"
        "Supported: ueconnect\r\n"
        "Content-Length: 5\r\n"
        "Content-Type: application/sdp\r\n"
        "\r\n"
        "v=0\r\n"
    )


def test_initial_request_to_must_not_have_tag_rfc3261_8_1_1_2() -> None:
    with pytest.raises(LocalProtocolError, match="no tag"):
        create_initial_request(
            "OPTIONS",
            parse_uri(DAVE),
            from_=parse_uri(BILL),
            to=parse_name_addr(f"<{DAVE}>;tag=x"),
            ids=fixed_ids(),
        )


def test_initial_invite_needs_contact_rfc3261_8_1_1_8() -> None:
    with pytest.raises(LocalProtocolError, match="Contact"):
        create_initial_request(
            "INVITE", parse_uri(DAVE), from_=parse_uri(BILL), to=parse_uri(DAVE), ids=fixed_ids()
        )


def test_initial_request_refuses_ack_cancel_and_bad_cseq_rfc3261_8_1_1_5() -> None:
    for method in ("ACK", "CANCEL"):
        with pytest.raises(LocalProtocolError):
            create_initial_request(
                method, parse_uri(DAVE), from_=parse_uri(BILL), to=parse_uri(DAVE), ids=fixed_ids()
            )
    with pytest.raises(LocalProtocolError, match="out of range"):
        create_initial_request(
            "OPTIONS",
            parse_uri(DAVE),
            from_=parse_uri(BILL),
            to=parse_uri(DAVE),
            ids=fixed_ids(),
            cseq=2**31,
        )


def test_preloaded_strict_route_rfc3261_8_1_1_1() -> None:
    request = create_initial_request(
        "OPTIONS",
        parse_uri(DAVE),
        from_=parse_uri(BILL),
        to=parse_uri(DAVE),
        ids=fixed_ids(),
        route_set=[parse_name_addr("<sip:strict.example;method=INVITE?X-A=1>")],
    )
    assert str(request.uri) == "sip:strict.example"
    assert request.headers.get_all("Route") == [f"<{DAVE}>"]


def test_with_sent_by_fills_placeholder_rfc3261_18_1_1() -> None:
    request = create_initial_request(
        "OPTIONS", parse_uri(DAVE), from_=parse_uri(BILL), to=parse_uri(DAVE), ids=fixed_ids()
    )
    filled = with_sent_by(request, Address("TCP", "::1", 5070))
    assert filled.headers.get("Via") == f"SIP/2.0/TCP [::1]:5070;branch=z9hG4bK{'a' * 26};rport"
    v4 = with_sent_by(request, Address("UDP", "127.0.0.1", 5060))
    assert v4.top_via.host == "127.0.0.1" and v4.top_via.port == 5060
    # A Via that is not our placeholder (a forwarded request) is left alone.
    assert with_sent_by(v4, Address("UDP", "127.0.0.9", 1)) == v4


# --- dialog creation (12.1) ----------------------------------------------------------------


def test_uac_dialog_state_rfc3261_12_1_2() -> None:
    _, dialog = uac_dialog(P2, P1)
    assert dialog.id == DialogId("call-1@127.0.0.1", "btag", "dtag")
    assert dialog.state is DialogState.CONFIRMED
    assert dialog.is_uac
    assert str(dialog.local_uri) == BILL and str(dialog.remote_uri) == DAVE
    assert str(dialog.local_target) == BILL_CONTACT
    assert str(dialog.remote_target) == DAVE_CONTACT
    assert dialog.local_cseq == 10 and dialog.remote_cseq is None
    assert not dialog.secure
    # Record-Route reversed on the UAC side.
    assert [str(r) for r in dialog.route_set] == [P1, P2]


def test_uas_dialog_state_rfc3261_12_1_1() -> None:
    request = invite(f"Record-Route: {P2}", f"Record-Route: {P1}")
    response = answer(request, 200)
    dialog = Dialog.from_uas(request, response)
    assert dialog.id == DialogId("call-1@127.0.0.1", "dtag", "btag")
    assert not dialog.is_uac
    assert str(dialog.local_uri) == DAVE and str(dialog.remote_uri) == BILL
    assert str(dialog.remote_target) == BILL_CONTACT
    assert str(dialog.local_target) == DAVE_CONTACT
    assert dialog.remote_cseq == 10 and dialog.local_cseq is None
    # Record-Route as received on the UAS side.
    assert [str(r) for r in dialog.route_set] == [P2, P1]
    assert DialogId.of_incoming_request(invite()) is None


def test_uas_first_request_gets_initial_cseq_rfc3261_12_2_1_1() -> None:
    request = invite(f"Record-Route: {P2}", f"Record-Route: {P1}")
    dialog = Dialog.from_uas(request, answer(request, 200))
    dialog, bye = dialog.create_bye(ids=fixed_ids())
    assert bye.cseq.number == 1 and dialog.local_cseq == 1
    assert bye.headers.get("To") == f"<{BILL}>;tag=btag"
    assert bye.headers.get("From") == f"<{DAVE}>;tag=dtag"
    assert str(bye.uri) == BILL_CONTACT
    assert bye.headers.get_all("Route") == [P2, P1]


def test_secure_flag_needs_tls_and_sips_rfc3261_12_1_2() -> None:
    base = invite()
    sips = base.with_uri(parse_uri("sips:+15550100002@ims.mnc002.mcc001.3gppnetwork.org"))
    assert Dialog.from_uac(sips, answer(sips, 200), over_tls=True).secure
    assert not Dialog.from_uac(sips, answer(sips, 200), over_tls=False).secure
    assert not Dialog.from_uac(base, answer(base, 200), over_tls=True).secure


def test_2xx_without_contact_is_a_protocol_error_rfc3261_12_1_1() -> None:
    request = invite()
    with pytest.raises(ProtocolError, match="without Contact"):
        Dialog.from_uac(request, answer(request, 200, contact=None))


def test_provisional_without_to_tag_creates_no_dialog_rfc3261_12_1() -> None:
    request = invite()
    with pytest.raises(LocalProtocolError, match="without To tag"):
        Dialog.from_uac(request, answer(request, 180, to_tag=None))
    with pytest.raises(LocalProtocolError, match="100"):
        Dialog.from_uac(request, answer(request, 100))
    with pytest.raises(LocalProtocolError, match="does not create"):
        Dialog.from_uac(_as_options(request), answer(request, 200))


def _as_options(request: Request) -> Request:
    return Request("OPTIONS", request.uri, request.headers.replaced("CSeq", ["10 OPTIONS"]))


def test_2xx_without_to_tag_gives_null_remote_tag_rfc3261_12_1_2() -> None:
    request = invite()
    dialog = Dialog.from_uac(request, answer(request, 200, to_tag=None))
    assert dialog.id.remote_tag == ""
    _, bye = dialog.create_bye(ids=fixed_ids())
    assert bye.headers.get("To") == f"<{DAVE}>"


# --- early dialogs (12.1, 12.3, 13.2.2.4) --------------------------------------------------


def test_early_dialog_confirmed_by_2xx_recomputes_route_set_rfc3261_13_2_2_4() -> None:
    request = invite(f"Record-Route: {P1}")
    ringing = answer(request, 180)
    early = Dialog.from_uac(request, ringing)
    assert early.state is DialogState.EARLY
    assert [str(r) for r in early.route_set] == [P1]
    # The 2xx carries a different Record-Route (e.g. another proxy instance took it).
    ok = answer(request, 200, contact="sip:dave@127.0.0.3")
    ok = ok.with_headers(ok.headers.replaced("Record-Route", [P2, P1]))
    confirmed = early.receive_response(request, ok)
    assert confirmed.state is DialogState.CONFIRMED
    assert [str(r) for r in confirmed.route_set] == [P1, P2]
    assert str(confirmed.remote_target) == "sip:dave@127.0.0.3"
    assert confirmed.invite_out is None


def test_non_2xx_final_terminates_early_dialog_rfc3261_12_3() -> None:
    request = invite()
    early = Dialog.from_uac(request, answer(request, 183))
    assert early.invite_out == 10
    gone = early.receive_response(request, answer(request, 486, contact=None))
    assert gone.state is DialogState.TERMINATED


def test_forked_early_dialogs_share_call_id_and_local_tag_rfc3261_12_1_2() -> None:
    request = invite()
    table = DialogTable()
    for tag in ("d1", "d2"):
        table.put(Dialog.from_uac(request, answer(request, 180, to_tag=tag)))
    assert len(table) == 2
    assert {d.id.remote_tag for d in table.dialogs_of("call-1@127.0.0.1", "btag")} == {"d1", "d2"}
    assert table.for_response(answer(request, 200, to_tag="d2")) is not None
    assert table.for_response(answer(request, 200, to_tag="d3")) is None


def test_callee_must_not_bye_early_dialog_rfc3261_15() -> None:
    request = invite()
    uas_early = Dialog.from_uas(request, answer(request, 180))
    with pytest.raises(LocalProtocolError, match="early"):
        uas_early.create_bye(ids=fixed_ids())
    uac_early = Dialog.from_uac(request, answer(request, 180))
    _, bye = uac_early.create_bye(ids=fixed_ids())  # the caller may
    assert bye.method == "BYE"


# --- in-dialog requests (12.2.1.1) ---------------------------------------------------------


def test_bye_exact_loose_routing_rfc3261_12_2_1_1() -> None:
    _, dialog = uac_dialog(P2, P1)
    dialog, bye = dialog.create_bye(ids=fixed_ids(1))
    b = new_branch(lambda n: b"\x01" * n)
    assert serialize(bye).decode() == (
        f"BYE {DAVE_CONTACT} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {SENT_BY_PLACEHOLDER};branch={b};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"Route: {P1}\r\n"
        f"Route: {P2}\r\n"
        f"To: <{DAVE}>;tag=dtag\r\n"
        f"From: <{BILL}>;tag=btag\r\n"
        "Call-ID: call-1@127.0.0.1\r\n"
        "CSeq: 11 BYE\r\n"
        "Content-Length: 0\r\n"
        "\r\n"
    )
    assert dialog.local_cseq == 11


def test_no_route_set_targets_remote_target_rfc3261_12_2_1_1() -> None:
    _, dialog = uac_dialog()
    _, info = dialog.create_request("INFO", ids=fixed_ids())
    assert str(info.uri) == DAVE_CONTACT
    assert "Route" not in info.headers
    assert "Contact" not in info.headers  # INFO is not a target refresh request


def test_strict_routing_rfc3261_12_2_1_1() -> None:
    strict = "<sip:strict1.example;maddr=10.0.0.1;method=INVITE>"
    _, dialog = uac_dialog(P2, strict)  # reversed: strict first
    _, bye = dialog.create_bye(ids=fixed_ids())
    # First route into the Request-URI without parameters a Request-URI may not carry.
    assert str(bye.uri) == "sip:strict1.example;maddr=10.0.0.1"
    # The remainder in order, then the remote target as last Route.
    assert bye.headers.get_all("Route") == [P2, f"<{DAVE_CONTACT}>"]


def test_place_route_set_table() -> None:
    target = parse_uri(DAVE_CONTACT)
    loose = parse_name_addr(P1)
    strict = parse_name_addr("<sip:s.example>")
    assert place_route_set(target, []) == (target, ())
    assert place_route_set(target, [loose, strict]) == (target, (loose, strict))
    uri, routes = place_route_set(target, [strict, loose])
    assert uri == SipUri("s.example") and routes == (loose, NameAddress(target))


def test_cseq_increments_by_one_rfc3261_12_2_1_1() -> None:
    _, dialog = uac_dialog()
    numbers = []
    for method in ("INFO", "UPDATE", "INFO"):
        dialog, req = dialog.create_request(method, ids=fixed_ids())
        numbers.append(req.cseq.number)
    assert numbers == [11, 12, 13]


def test_target_refresh_request_carries_contact_rfc3261_12_2_1_1() -> None:
    _, dialog = uac_dialog()
    dialog, reinvite = dialog.create_request(
        "INVITE", ids=fixed_ids(), body=b"v=0\r\n", content_type="application/sdp"
    )
    assert reinvite.headers.get("Contact") == f"<{BILL_CONTACT}>"
    assert reinvite.headers.get("Content-Type") == "application/sdp"
    assert dialog.invite_out == 11


def test_ack_and_cancel_are_not_create_request() -> None:
    _, dialog = uac_dialog()
    for method in ("ACK", "CANCEL"):
        with pytest.raises(LocalProtocolError):
            dialog.create_request(method, ids=fixed_ids())


# --- ACK for 2xx (13.2.2.4) ----------------------------------------------------------------


def test_ack_for_2xx_exact_rfc3261_13_2_2_4() -> None:
    request = invite(
        f"Record-Route: {P2}",
        f"Record-Route: {P1}",
        'Proxy-Authorization: Digest username="bill", realm="r", nonce="n", uri="x", '
        'response="00"',
    )
    dialog = Dialog.from_uac(request, answer(request, 200))
    ack = dialog.create_ack(request, ids=fixed_ids(2))
    b = new_branch(lambda n: b"\x02" * n)
    assert serialize(ack).decode() == (
        f"ACK {DAVE_CONTACT} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {SENT_BY_PLACEHOLDER};branch={b};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"Route: {P1}\r\n"
        f"Route: {P2}\r\n"
        f"To: <{DAVE}>;tag=dtag\r\n"
        f"From: <{BILL}>;tag=btag\r\n"
        "Call-ID: call-1@127.0.0.1\r\n"
        "CSeq: 10 ACK\r\n"
        'Proxy-Authorization: Digest username="bill", realm="r", nonce="n", uri="x", '
        'response="00"\r\n'
        "Content-Length: 0\r\n"
        "\r\n"
    )
    assert ack.top_via.branch != request.top_via.branch  # its own transaction
    # The ACK does not consume a CSeq: the next request is INVITE + 1.
    _, bye = dialog.create_bye(ids=fixed_ids())
    assert bye.cseq.number == 11


def test_ack_for_reinvite_uses_its_cseq_and_may_carry_answer_rfc3261_13_2_2_4() -> None:
    _, dialog = uac_dialog()
    dialog, reinvite = dialog.create_request("INVITE", ids=fixed_ids())
    dialog = dialog.receive_response(reinvite, answer(reinvite, 200))
    ack = dialog.create_ack(reinvite, ids=fixed_ids(), body=b"v=0\r\n", content_type="x/y")
    assert str(ack.cseq) == "11 ACK"
    assert ack.body == b"v=0\r\n"


def test_ack_refuses_foreign_or_early_invite() -> None:
    request = invite()
    early = Dialog.from_uac(request, answer(request, 180))
    with pytest.raises(LocalProtocolError, match="confirmed"):
        early.create_ack(request, ids=fixed_ids())
    _, dialog = uac_dialog()
    other = request.with_headers(request.headers.replaced("Call-ID", ["other"]))
    with pytest.raises(LocalProtocolError, match="does not belong"):
        dialog.create_ack(other, ids=fixed_ids())


# --- responses within the dialog (12.2.1.2) ------------------------------------------------


def test_2xx_to_target_refresh_updates_remote_target_rfc3261_12_2_1_2() -> None:
    _, dialog = uac_dialog()
    dialog, update = dialog.create_request("UPDATE", ids=fixed_ids())
    dialog = dialog.receive_response(update, answer(update, 200, contact="sip:dave@127.0.0.9"))
    assert str(dialog.remote_target) == "sip:dave@127.0.0.9"
    dialog, info = dialog.create_request("INFO", ids=fixed_ids())
    dialog = dialog.receive_response(info, answer(info, 200, contact="sip:nope@127.0.0.8"))
    assert str(dialog.remote_target) == "sip:dave@127.0.0.9"


@pytest.mark.parametrize("status", [408, 481])
def test_408_or_481_terminates_dialog_rfc3261_12_2_1_2(status: int) -> None:
    _, dialog = uac_dialog()
    dialog, info = dialog.create_request("INFO", ids=fixed_ids())
    assert dialog.receive_response(info, answer(info, status)).state is DialogState.TERMINATED


def test_transaction_timeout_terminates_dialog_rfc3261_12_2_1_2() -> None:
    _, dialog = uac_dialog()
    dialog, info = dialog.create_request("INFO", ids=fixed_ids())
    assert dialog.request_failed(info).state is DialogState.TERMINATED


def test_other_failure_keeps_confirmed_dialog() -> None:
    _, dialog = uac_dialog()
    dialog, reinvite = dialog.create_request("INVITE", ids=fixed_ids())
    after = dialog.receive_response(reinvite, answer(reinvite, 488))
    assert after.state is DialogState.CONFIRMED and after.invite_out is None


def test_bye_final_response_terminates_rfc3261_15_1_1() -> None:
    _, dialog = uac_dialog()
    dialog, bye = dialog.create_bye(ids=fixed_ids())
    assert dialog.receive_response(bye, answer(bye, 200)).state is DialogState.TERMINATED
    with pytest.raises(LocalProtocolError, match="terminated"):
        dialog.receive_response(bye, answer(bye, 200)).create_bye(ids=fixed_ids())


def test_response_of_another_dialog_is_refused() -> None:
    _, dialog = uac_dialog()
    dialog, info = dialog.create_request("INFO", ids=fixed_ids())
    ok = answer(info, 200)
    foreign = ok.with_headers(ok.headers.replaced("To", [f"<{DAVE}>;tag=zzz"]))
    with pytest.raises(LocalProtocolError, match="another dialog"):
        dialog.receive_response(info, foreign)


# --- requests from the peer (12.2.2, 14.2) -------------------------------------------------


def peer_request(dialog: Dialog, method: str, cseq: int, *headers: str) -> Request:
    """A request the remote party sends within `dialog` (we are the UAS of `dialog`)."""
    text = (
        f"{method} {dialog.local_target} SIP/2.0\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKpeer\n"
        "Max-Forwards: 70\n"
        f"To: <{dialog.local_uri}>;tag={dialog.id.local_tag}\n"
        f"From: <{dialog.remote_uri}>;tag={dialog.id.remote_tag}\n"
        f"Call-ID: {dialog.id.call_id}\n"
        f"CSeq: {cseq} {method}\n" + "".join(h + "\n" for h in headers) + "Content-Length: 0\n\n"
    )
    request = msg(text)
    assert isinstance(request, Request)
    return request


def uas_dialog() -> Dialog:
    request = invite()
    return Dialog.from_uas(request, answer(request, 200))


def test_lower_cseq_rejected_with_500_rfc3261_12_2_2() -> None:
    dialog = uas_dialog()
    dialog = dialog.receive_request(peer_request(dialog, "INFO", 12), ids=fixed_ids())
    assert dialog.remote_cseq == 12
    late = peer_request(dialog, "INFO", 11)
    with pytest.raises(RequestOutOfOrder) as info:
        dialog.receive_request(late, ids=fixed_ids())
    assert info.value.status_code == 500
    response = reject(late, info.value)
    assert response.status_code == 500 and response.to.tag == dialog.id.local_tag


def test_higher_cseq_accepted_even_with_gaps_rfc3261_12_2_2() -> None:
    dialog = uas_dialog()
    dialog = dialog.receive_request(peer_request(dialog, "INFO", 50), ids=fixed_ids())
    assert dialog.remote_cseq == 50


def test_ack_with_invite_cseq_is_not_out_of_order_rfc3261_12_2_2() -> None:
    dialog = uas_dialog()
    assert dialog.receive_request(peer_request(dialog, "ACK", 10), ids=fixed_ids()) == dialog


def test_target_refresh_updates_remote_target_rfc3261_12_2_2() -> None:
    dialog = uas_dialog()
    reinvite = peer_request(dialog, "INVITE", 11, "Contact: <sip:bill@127.0.0.7:5070>")
    dialog = dialog.receive_request(reinvite, ids=fixed_ids())
    assert str(dialog.remote_target) == "sip:bill@127.0.0.7:5070"
    assert dialog.invite_in == 11
    dialog = dialog.send_response(reinvite, answer(reinvite, 200))
    assert dialog.invite_in is None
    info = peer_request(dialog, "INFO", 12, "Contact: <sip:other@127.0.0.8>")
    assert str(dialog.receive_request(info, ids=fixed_ids()).remote_target) == (
        "sip:bill@127.0.0.7:5070"
    )


def test_invite_while_ours_pending_gets_491_rfc3261_14_2() -> None:
    dialog = uas_dialog()
    dialog, _ = dialog.create_request("INVITE", ids=fixed_ids())
    with pytest.raises(RequestPending) as info:
        dialog.receive_request(peer_request(dialog, "INVITE", 11), ids=fixed_ids())
    assert info.value.status_code == 491


def test_second_invite_before_final_gets_500_retry_after_rfc3261_14_2() -> None:
    dialog = uas_dialog()
    first = peer_request(dialog, "INVITE", 11)
    dialog = dialog.receive_request(first, ids=fixed_ids())
    second = peer_request(dialog, "INVITE", 12)
    with pytest.raises(InviteInProgress) as info:
        dialog.receive_request(second, ids=IdSource(lambda n: b"\xff" * n))
    assert info.value.status_code == 500
    assert 0 <= info.value.retry_after <= 10
    assert reject(second, info.value).headers.get("Retry-After") == str(info.value.retry_after)


def test_no_reinvite_while_invite_in_progress_rfc3261_14_1() -> None:
    dialog = uas_dialog()
    dialog = dialog.receive_request(peer_request(dialog, "INVITE", 11), ids=fixed_ids())
    with pytest.raises(LocalProtocolError, match="in progress"):
        dialog.create_request("INVITE", ids=fixed_ids())


def test_uas_early_dialog_confirmed_or_terminated_by_final_response_rfc3261_12_1_1() -> None:
    request = invite()
    early = Dialog.from_uas(request, answer(request, 180))
    assert early.state is DialogState.EARLY and early.invite_in == 10
    confirmed = early.send_response(request, answer(request, 200))
    assert confirmed.state is DialogState.CONFIRMED and confirmed.invite_in is None
    refused = early.send_response(request, answer(request, 603, contact=None))
    assert refused.state is DialogState.TERMINATED


def test_uas_bye_2xx_terminates_rfc3261_15_1_2() -> None:
    dialog = uas_dialog()
    bye = peer_request(dialog, "BYE", 11)
    dialog = dialog.receive_request(bye, ids=fixed_ids())
    assert dialog.send_response(bye, answer(bye, 200)).state is DialogState.TERMINATED


# --- the table (12.2.2) --------------------------------------------------------------------


def test_unknown_to_tag_is_481_rfc3261_12_2_2() -> None:
    table = DialogTable()
    dialog = uas_dialog()
    table.put(dialog)
    assert table.for_request(peer_request(dialog, "INFO", 11)) == dialog
    stranger = peer_request(dialog, "INFO", 11).with_headers(
        peer_request(dialog, "INFO", 11).headers.replaced("To", [f"<{DAVE}>;tag=unknown"])
    )
    with pytest.raises(CallDoesNotExist) as info:
        table.for_request(stranger)
    assert info.value.status_code == 481
    assert table.for_request(invite()) is None  # no To tag: not in a dialog


def test_table_is_bounded_and_drops_terminated() -> None:
    table = DialogTable(max_dialogs=1)
    dialog = uas_dialog()
    table.put(dialog)
    other = Dialog.from_uas(invite(), answer(invite(), 200, to_tag="t2"))
    with pytest.raises(DialogTableFull):
        table.put(other)
    table.put(dialog)  # replacing an existing one is fine at the bound
    bye = peer_request(dialog, "BYE", 11)
    table.put(dialog.receive_request(bye, ids=fixed_ids()).send_response(bye, answer(bye, 200)))
    assert dialog.id not in table and len(table) == 0
    table.put(other)
    assert table.remove(other.id) == other and table.get(other.id) is None


def test_in_dialog_requests_round_trip_through_the_parser() -> None:
    _, dialog = uac_dialog(P2, "<sip:strict.example>")
    ids = IdSource(counting_random())
    for method in ("INVITE", "INFO", "BYE"):
        dialog, request = dialog.create_request(method, ids=ids)
        assert parse_message(serialize(request)) == request
        if method == "INVITE":
            dialog = dialog.receive_response(request, answer(request, 200))
            ack = dialog.create_ack(request, ids=ids)
            assert parse_message(serialize(ack)) == ack
