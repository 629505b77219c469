"""RFC 3264 offer/answer for the application stream, with the operators' candidates."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ims.sdp import (
    Attribute,
    Candidate,
    Connection,
    IceCredentials,
    MediaDescription,
    Origin,
    SdpNegotiationError,
    SdpUsageError,
    SessionDescription,
    TimeDescription,
    add_candidate,
    build_answer,
    build_offer,
    bump_version,
    candidate_foundation,
    candidate_priority,
    candidates_of,
    check_answer,
    default_candidate,
    negotiated_endpoints,
    parse_sdp,
    serialize_sdp,
)

BILL_CREDENTIALS = IceCredentials("bill", "b" * 22)
DAVE_CREDENTIALS = IceCredentials("dave", "d" * 22)
BILL_HOST = Candidate("1", 1, "UDP", candidate_priority("host"), "100.64.0.10", 40000, "host")
DAVE_HOST = Candidate("1", 1, "UDP", candidate_priority("host"), "100.64.0.20", 41000, "host")
DAVE_HOST6 = Candidate(
    "2", 1, "UDP", candidate_priority("host", local_preference=65534), "2001:db8::20", 41000, "host"
)


def _srflx(address: str, port: int, base: Candidate, gateway: str) -> Candidate:
    """An operator's peer-scoped CGN mapping, described as RFC 8839 describes srflx."""
    return Candidate(
        candidate_foundation("srflx", base.address, "UDP", gateway),
        1,
        "UDP",
        candidate_priority("srflx"),
        address,
        port,
        "srflx",
        related_address=base.address,
        related_port=base.port,
    )


def _offer() -> SessionDescription:
    return build_offer(
        origin=Origin.for_address("100.64.0.10", "1001"),
        credentials=BILL_CREDENTIALS,
        candidates=[BILL_HOST],
    )


def _answer(
    offer: SessionDescription, candidates: list[Candidate] | None = None
) -> SessionDescription:
    return build_answer(
        offer,
        origin=Origin.for_address("100.64.0.20", "2002"),
        credentials=DAVE_CREDENTIALS,
        candidates=candidates or [DAVE_HOST, DAVE_HOST6],
    )


def test_offer_carries_one_application_stream_with_the_candidates() -> None:
    offer = _offer()
    assert serialize_sdp(offer) == (
        b"v=0\r\n"
        b"o=- 1001 0 IN IP4 100.64.0.10\r\n"
        b"s=-\r\n"
        b"t=0 0\r\n"
        b"m=application 40000 udp octet-stream\r\n"
        b"c=IN IP4 100.64.0.10\r\n"
        b"a=ice-ufrag:bill\r\n"
        b"a=ice-pwd:bbbbbbbbbbbbbbbbbbbbbb\r\n"
        b"a=ice-options:ice2\r\n"
        b"a=candidate:1 1 UDP 2130706431 100.64.0.10 40000 typ host\r\n"
        b"a=end-of-candidates\r\n"
    )
    assert parse_sdp(serialize_sdp(offer)) == offer


def test_rfc8839_section_5_1_offer_refuses_fqdn_and_non_udp_local_candidates() -> None:
    fqdn = replace(BILL_HOST, address="bill.example.com")
    with pytest.raises(SdpUsageError, match="FQDN"):
        build_offer(origin=_offer().origin, credentials=None, candidates=[fqdn])
    with pytest.raises(SdpUsageError, match="not UDP"):
        build_offer(
            origin=_offer().origin,
            credentials=None,
            candidates=[replace(BILL_HOST, transport="TCP")],
        )
    with pytest.raises(SdpUsageError, match="at least one"):
        build_offer(origin=_offer().origin, credentials=None, candidates=[])


def test_rfc8445_section_5_1_4_default_candidate_prefers_relay_then_srflx_then_host() -> None:
    srflx = _srflx("192.0.2.10", 50000, BILL_HOST, "192.0.2.1")
    relay = replace(srflx, type="relay", priority=candidate_priority("relay"), port=50001)
    assert default_candidate([BILL_HOST, srflx, relay]) == relay
    assert default_candidate([BILL_HOST, srflx]) == srflx
    assert default_candidate([DAVE_HOST6, DAVE_HOST]) == DAVE_HOST  # higher priority host
    with pytest.raises(SdpUsageError, match="component 2"):
        default_candidate([BILL_HOST], component=2)


def test_operator_add_candidate_appends_one_line_and_disturbs_nothing_else() -> None:
    offer = _offer()
    srflx = _srflx("192.0.2.10", 50000, BILL_HOST, "192.0.2.1")
    changed = add_candidate(offer, srflx)
    before = serialize_sdp(offer).split(b"\r\n")
    after = serialize_sdp(changed).split(b"\r\n")
    # Exactly one line more, right after the last candidate, before a=end-of-candidates.
    at = before.index(b"a=end-of-candidates")
    assert after == [*before[:at], b"a=" + str(srflx.to_attribute()).encode(), *before[at:]]
    assert changed.origin == offer.origin
    assert candidates_of(changed.media[0]) == (BILL_HOST, srflx)
    # A candidate whose transport address is already there is redundant (RFC 8445 §5.1.3).
    assert add_candidate(changed, srflx) == changed
    assert add_candidate(changed, replace(srflx, foundation="9")) == changed


def test_operator_add_candidate_can_move_the_default_destination() -> None:
    relay = Candidate(
        "r1", 1, "UDP", candidate_priority("relay"), "198.51.100.7", 30000, "relay",
        related_address="198.51.100.7", related_port=30000,
    )  # fmt: skip
    changed = add_candidate(_offer(), relay, make_default=True)
    media = changed.media[0]
    assert (media.port, media.connections) == (30000, (Connection.for_address("198.51.100.7"),))
    stream = negotiated_endpoints(changed)
    assert (stream.default.address, stream.default.port) == ("198.51.100.7", 30000)
    assert not stream.ice_mismatch
    # Without make_default the c=/m= stay the UE's own.
    assert add_candidate(_offer(), relay).media[0].port == 40000


def test_add_candidate_refusals() -> None:
    offer = _offer()
    with pytest.raises(SdpUsageError, match="FQDN"):
        add_candidate(offer, replace(BILL_HOST, address="relay.example.net"))
    rejected = offer.with_media(0, replace(offer.media[0], port=0))
    with pytest.raises(SdpNegotiationError):
        add_candidate(rejected, BILL_HOST)
    with pytest.raises(SdpUsageError, match="rejected"):
        add_candidate(rejected, BILL_HOST, media_index=0)
    with pytest.raises(SdpUsageError, match="no media description 3"):
        add_candidate(offer, BILL_HOST, media_index=3)


def test_add_candidate_without_end_of_candidates_or_candidates() -> None:
    offer = build_offer(
        origin=_offer().origin, credentials=None, candidates=[BILL_HOST], end_of_candidates=False
    )
    changed = add_candidate(offer, _srflx("192.0.2.10", 50000, BILL_HOST, "192.0.2.1"))
    assert [a.name for a in changed.media[0].attributes] == ["candidate"]


def test_rfc3264_section_6_answer_keeps_m_lines_rejects_with_port_zero_and_subsets_formats() -> (
    None
):
    offer = _offer()
    audio = MediaDescription(
        "audio", 49170, "RTP/AVP", ("0",), connections=offer.media[0].connections
    )
    app = replace(offer.media[0], formats=("x-other", "octet-stream"))
    second_app = replace(offer.media[0], port=40002)
    offer = replace(offer, times=(TimeDescription(3034423619, 0),), media=(audio, app, second_app))
    answer = _answer(offer)
    assert len(answer.media) == 3
    assert [m.port for m in answer.media] == [0, 41000, 0]  # one stream accepted
    assert answer.media[0].formats == ("0",) and answer.media[0].attributes == ()
    assert answer.media[1].formats == ("octet-stream",)  # subset of the offer (§6.1)
    assert answer.times == offer.times  # t= equals the offer's (§6)
    assert parse_sdp(serialize_sdp(answer)) == answer
    check_answer(offer, answer)
    stream = negotiated_endpoints(answer, offer=offer)
    assert stream.media_index == 1
    assert (stream.default.address, stream.default.port) == ("100.64.0.20", 41000)
    assert stream.candidates == (DAVE_HOST, DAVE_HOST6)
    assert stream.credentials == DAVE_CREDENTIALS
    assert stream.ice_options == ("ice2",) and stream.end_of_candidates


def test_rfc3264_section_6_nothing_acceptable_is_488() -> None:
    offer = _offer()
    offer = offer.with_media(0, replace(offer.media[0], formats=("x-other",)))
    with pytest.raises(SdpNegotiationError) as caught:
        _answer(offer)
    assert caught.value.status_code == 488


def test_rfc8839_section_4_3_2_no_ice_attributes_when_the_offer_has_none() -> None:
    offer = build_offer(origin=_offer().origin, credentials=None, candidates=[BILL_HOST])
    answer = _answer(offer)
    assert answer.media[0].attributes == ()
    stream = negotiated_endpoints(answer, offer=offer)
    assert stream.credentials is None and stream.candidates == ()


def test_rfc8839_section_4_2_5_ice_mismatch_when_an_alg_rewrote_the_default() -> None:
    offer = _offer()
    # An ALG moved c=/m= to an address that is no candidate.
    rewritten = offer.with_media(
        0, replace(offer.media[0], port=7000, connections=(Connection.for_address("192.0.2.99"),))
    )
    answer = _answer(rewritten)
    assert answer.media[0].attributes == (Attribute("ice-mismatch"),)
    stream = negotiated_endpoints(answer, offer=rewritten)
    assert stream.ice_mismatch and stream.candidates == ()
    # The 0.0.0.0 port 9 placeholder (item 2) and an FQDN default (item 4) are no mismatch.
    for address, port in [("0.0.0.0", 9), ("media.example.com", 7000)]:
        placeholder = offer.with_media(
            0, replace(offer.media[0], port=port, connections=(Connection("IN", "IP4", address),))
        )
        assert not negotiated_endpoints(_answer(placeholder)).ice_mismatch
        assert _answer(placeholder).media[0].has_attribute("candidate")


def test_rfc8839_section_5_1_fqdn_and_unknown_transport_candidates_are_ignored() -> None:
    answer = _answer(_offer())
    media = answer.media[0]
    extra = (
        Candidate.parse("3 1 UDP 5 dave.local 41000 typ host").to_attribute(),
        Candidate.parse("4 1 TCP 5 100.64.0.20 9 typ host tcptype active").to_attribute(),
    )
    answer = answer.with_media(0, replace(media, attributes=media.attributes + extra))
    stream = negotiated_endpoints(parse_sdp(serialize_sdp(answer)))
    assert [c.foundation for c in stream.candidates] == ["1", "2"]
    assert [c.foundation for c in stream.ignored] == ["3", "4"]


@pytest.mark.parametrize(
    ("change", "defect"),
    [
        (lambda a: replace(a, media=a.media + a.media), "2 m= lines for 1"),
        (lambda a: replace(a, times=(TimeDescription(3034423619, 0),)), "t= differs"),
        (lambda a: a.with_media(0, replace(a.media[0], formats=("x-new",))), "did not list"),
        (lambda a: a.with_media(0, replace(a.media[0], media="audio")), "is audio"),
    ],
)
def test_rfc3264_section_6_answer_checks(change: object, defect: str) -> None:
    offer = _offer()
    answer = change(_answer(offer))  # type: ignore[operator]
    with pytest.raises(SdpNegotiationError, match=defect):
        check_answer(offer, answer)


def test_rfc3264_section_6_answer_accepting_a_rejected_stream_is_refused() -> None:
    offer = _offer()
    answer = _answer(offer)
    rejected_offer = offer.with_media(0, replace(offer.media[0], port=0))
    with pytest.raises(SdpNegotiationError, match="rejected"):
        check_answer(rejected_offer, answer)


def test_rejected_application_stream_in_the_answer_is_488() -> None:
    offer = _offer()
    answer = _answer(offer)
    answer = answer.with_media(0, replace(answer.media[0], port=0, attributes=()))
    with pytest.raises(SdpNegotiationError) as caught:
        negotiated_endpoints(answer, offer=offer)
    assert caught.value.status_code == 488


def test_rfc3264_section_8_bump_version() -> None:
    offer = _offer()
    assert bump_version(offer).origin.sess_version == offer.origin.sess_version + 1
    assert bump_version(offer).media == offer.media


def test_bill_to_dave_through_both_operators() -> None:
    """Steps 3 and 6 of the flow: Bill offers, Alpha adds its mapping, Beta adds its own to the
    answer, Bill reads every candidate of Dave's side."""
    offer = parse_sdp(serialize_sdp(_offer()))
    alpha = _srflx("192.0.2.10", 50000, BILL_HOST, "192.0.2.1")
    offer_at_dave = parse_sdp(serialize_sdp(add_candidate(offer, alpha)))
    answer = _answer(offer_at_dave, [DAVE_HOST])
    beta = _srflx("198.51.100.20", 51000, DAVE_HOST, "198.51.100.1")
    answer_at_bill = parse_sdp(serialize_sdp(add_candidate(answer, beta)))
    stream = negotiated_endpoints(answer_at_bill, offer=offer_at_dave)
    assert stream.candidates == (DAVE_HOST, beta)
    offered = negotiated_endpoints(offer_at_dave)
    assert offered.candidates == (BILL_HOST, alpha)
    assert offered.credentials == BILL_CREDENTIALS
