"""RFC 8839 ICE attributes and the RFC 8445 section 5.1 candidate rules."""

from __future__ import annotations

import itertools

import pytest

from ims.sdp import (
    Attribute,
    Candidate,
    IceCredentials,
    SdpParseError,
    SdpUsageError,
    candidate_foundation,
    candidate_priority,
    candidates_of,
    credentials_of,
    parse_sdp,
    serialize_sdp,
    stream_endpoints,
)
from ims.sdp.ice import check_ice_attribute

# RFC 8839 section 4.2.6 (SDP example; the folded candidate line unfolded).
RFC8839_EXAMPLE = (
    b"v=0\r\n"
    b"o=jdoe 2890844526 2890842807 IN IP4 203.0.113.141\r\n"
    b"s=\r\n"
    b"c=IN IP4 192.0.2.3\r\n"
    b"t=0 0\r\n"
    b"a=ice-options:ice2\r\n"
    b"a=ice-pacing:50\r\n"
    b"a=ice-pwd:asd88fgpdd777uzjYhagZg\r\n"
    b"a=ice-ufrag:8hhY\r\n"
    b"m=audio 45664 RTP/AVP 0\r\n"
    b"b=RS:0\r\n"
    b"b=RR:0\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=candidate:1 1 UDP 2130706431 203.0.113.141 8998 typ host\r\n"
    b"a=candidate:2 1 UDP 1694498815 192.0.2.3 45664 typ srflx raddr 203.0.113.141 rport 8998\r\n"
)


def test_rfc8839_example_parses_and_round_trips() -> None:
    sd = parse_sdp(RFC8839_EXAMPLE)
    assert serialize_sdp(sd) == RFC8839_EXAMPLE
    media = sd.media[0]
    host, srflx = candidates_of(media)
    assert host == Candidate("1", 1, "UDP", 2130706431, "203.0.113.141", 8998, "host")
    assert (srflx.type, srflx.related_address, srflx.related_port) == (
        "srflx",
        "203.0.113.141",
        8998,
    )
    # RFC 8839 section 5.4: session-level credentials apply to media without their own.
    assert credentials_of(sd, media) == IceCredentials("8hhY", "asd88fgpdd777uzjYhagZg")
    stream = stream_endpoints(sd, 0)
    assert stream.ice_options == ("ice2",)
    assert (stream.default.address, stream.default.port) == ("192.0.2.3", 45664)


def test_rfc8445_section_5_1_2_1_priority_formula() -> None:
    # The RFC 8839 example's priorities are exactly these: host and srflx, component 1.
    assert candidate_priority("host") == 2130706431
    assert candidate_priority("srflx") == 1694498815
    assert candidate_priority("prflx") == (110 << 24) + (65535 << 8) + 255
    assert candidate_priority("relay") == (65535 << 8) + 255
    assert candidate_priority("host", component=2) == 2130706430
    assert candidate_priority("host", local_preference=0) == (126 << 24) + 255
    assert candidate_priority("x-new", type_preference=5) == (5 << 24) + (65535 << 8) + 255


@pytest.mark.parametrize(
    "arguments",
    [
        {"candidate_type": "x-new"},  # no recommended type preference
        {"candidate_type": "host", "type_preference": 127},
        {"candidate_type": "host", "local_preference": 65536},
        {"candidate_type": "host", "component": 0},
        {"candidate_type": "host", "component": 257},
    ],
)
def test_rfc8445_section_5_1_2_priority_inputs_are_bounded(arguments: dict[str, object]) -> None:
    with pytest.raises(SdpUsageError):
        candidate_priority(**arguments)  # type: ignore[arg-type]


def test_rfc8445_section_5_1_1_3_foundation_equal_exactly_for_equal_inputs() -> None:
    base = candidate_foundation("srflx", "100.64.0.10", "UDP", "192.0.2.1")
    assert base == candidate_foundation("srflx", "100.64.0.10", "udp", "192.0.2.1")
    others = [
        candidate_foundation("relay", "100.64.0.10", "UDP", "192.0.2.1"),
        candidate_foundation("srflx", "100.64.0.11", "UDP", "192.0.2.1"),
        candidate_foundation("srflx", "100.64.0.10", "UDP", "192.0.2.2"),
        candidate_foundation("srflx", "100.64.0.10", "TCP", "192.0.2.1"),
    ]
    assert base not in others and len(set(others)) == 4
    Candidate(base, 1, "UDP", 1, "192.0.2.1", 1, "host")  # a valid foundation


@pytest.mark.parametrize(
    "value",
    [
        "1 1 UDP 2130706431 203.0.113.141 8998 typ host",
        "a+/Z 2 udp 1 2001:db8::7 9 typ relay raddr 2001:db8::8 rport 0",
        "x 1 UDP 5 192.0.2.1 1 typ host generation 0 network-id 1",
        "x 1 TCP 5 192.0.2.1 9 typ host tcptype active",
        "x 1 UDP 5 192.0.2.1 1 typ srflx raddr 0.0.0.0 rport 9 ufrag abc",
        "x 1 UDP 5 abcd1234.local 1 typ host",
        "x 1 UDP 5 192.0.2.1 1 typ x-future",
    ],
)
def test_rfc8839_section_5_1_candidate_round_trip(value: str) -> None:
    candidate = Candidate.parse(value)
    assert str(candidate) == value
    assert Candidate.parse(str(candidate)) == candidate
    assert candidate.to_attribute() == Attribute("candidate", value)


def test_rfc8839_section_5_1_candidate_views() -> None:
    v6 = Candidate.parse("1 1 UDP 5 2001:DB8::7 9 typ host")
    assert str(v6.ip) == "2001:db8::7" and not v6.is_fqdn and v6.is_udp
    assert v6.same_transport_address(Candidate.parse("2 1 UDP 9 2001:db8:0::7 9 typ host"))
    fqdn = Candidate.parse("1 1 UDP 5 abcd1234.local 9 typ host")
    assert fqdn.is_fqdn and fqdn.ip is None
    assert not Candidate.parse("x 1 TCP 5 192.0.2.1 9 typ host").is_udp


@pytest.mark.parametrize(
    ("value", "defect"),
    [
        ("1 1 UDP 1 192.0.2.1 1 typ host raddr 192.0.2.2 rport 2", "must not carry raddr"),
        ("1 1 UDP 1 192.0.2.1 1 typ srflx", "must carry raddr and rport"),
        ("1 1 UDP 1 192.0.2.1 1 typ relay raddr 192.0.2.2", "must carry raddr and rport"),
        ("1 1 UDP 1 192.0.2.1 1 typ prflx rport 2", "must carry raddr and rport"),
        ("1" * 33 + " 1 UDP 1 192.0.2.1 1 typ host", "1 to 32 ice-chars"),
        ("f-x 1 UDP 1 192.0.2.1 1 typ host", "1 to 32 ice-chars"),
        ("1 0 UDP 1 192.0.2.1 1 typ host", "outside 1..256"),
        ("1 257 UDP 1 192.0.2.1 1 typ host", "outside 1..256"),
        ("1 1 UDP 0 192.0.2.1 1 typ host", "outside 1..2^31-1"),
        ("1 1 UDP 2147483648 192.0.2.1 1 typ host", "outside 1..2^31-1"),
        ("1 1 UDP 1 192.0.2.1 0 typ host", "outside 1..65535"),
        ("1 1 UDP 1 192.0.2.1 1 type host", "expected 'typ'"),
        ("1 1 UDP 1 192.0.2.1 1 typ", "needs foundation"),
        ("1 1 UDP 1 192.0.2.1 1  typ host", "single spaces"),
        ("1 1 UDP 1 192.0.2.1 1 typ host generation", "has no value"),
        ("1 1 UDP 1 192.0.2.256 1 typ host", "not an IPv4"),
        ("1 1 UDP 1 [2001:db8::1] 1 typ host", "not an IPv6"),
        ("1 1 UDP 1 192.0.2.1 1 typ host raddr 1.2.3.4 rport 1", "must not carry"),
    ],
)
def test_rfc8839_section_5_1_candidate_rules(value: str, defect: str) -> None:
    with pytest.raises(SdpUsageError, match=defect.replace("^", r"\^").replace(".", r"\.")):
        Candidate.parse(value)


def test_rfc8839_section_5_4_credential_lengths_and_charset() -> None:
    IceCredentials("abcd", "a" * 22)
    IceCredentials("a" * 256, "+/" * 128)
    for ufrag, pwd in [("abc", "a" * 22), ("abcd", "a" * 21), ("a" * 257, "a" * 22),
                       ("ab-d", "a" * 22), ("abcd", "a" * 21 + "=")]:  # fmt: skip
        with pytest.raises(SdpUsageError, match=r"RFC 8839 §5\.4"):
            IceCredentials(ufrag, pwd)


def test_rfc8839_section_5_4_generated_credentials_have_enough_randomness() -> None:
    counter = itertools.count()

    def fake_random(size: int) -> bytes:
        return bytes(next(counter) % 256 for _ in range(size))

    credentials = IceCredentials.generate(fake_random)
    assert len(credentials.ufrag) == 8  # 48 bits, at least the 24 asked
    assert len(credentials.pwd) == 24  # 144 bits, at least the 128 asked
    assert credentials != IceCredentials.generate(fake_random)
    with pytest.raises(SdpUsageError, match="random source"):
        IceCredentials.generate(lambda size: b"")


@pytest.mark.parametrize(
    ("attribute", "session_level", "defect"),
    [
        (Attribute("candidate", "1 1 UDP 1 192.0.2.1 1 typ host"), True, "media-level"),
        (Attribute("ice-lite"), False, "session-level"),
        (Attribute("ice-lite", "yes"), True, "takes no value"),
        (Attribute("ice-pacing", "50"), False, "session-level"),
        (Attribute("ice-pacing", "fast"), True, "1 to 10 digits"),
        (Attribute("ice-mismatch"), True, "media-level"),
        (Attribute("end-of-candidates", "x"), False, "takes no value"),
        (Attribute("ice-options", "ice2  trickle"), False, "single spaces"),
        (Attribute("ice-ufrag"), False, "needs a value"),
        (Attribute("ice-pwd", "short"), False, "22 to 256"),
        (Attribute("remote-candidates", "1 192.0.2.1"), False, "triples"),
        (Attribute("remote-candidates", "1 192.0.2.1 0"), False, "not a port"),
    ],
)
def test_rfc8839_section_5_attribute_grammar_and_level(
    attribute: Attribute, session_level: bool, defect: str
) -> None:
    with pytest.raises(SdpUsageError, match=defect):
        check_ice_attribute(attribute, session_level=session_level)


def test_rfc8839_attributes_valid_at_their_level() -> None:
    for attribute, session_level in [
        (Attribute("ice-lite"), True),
        (Attribute("ice-mismatch"), False),
        (Attribute("end-of-candidates"), True),
        (Attribute("ice-options", "ice2 trickle"), True),
        (Attribute("remote-candidates", "1 192.0.2.1 5000 2 2001:db8::1 5001"), False),
        (Attribute("x-other", "anything at all"), True),
    ]:
        check_ice_attribute(attribute, session_level=session_level)


def test_bad_ice_attribute_in_a_description_names_its_line() -> None:
    data = RFC8839_EXAMPLE.replace(b"typ host", b"typ host raddr 1.2.3.4 rport 5")
    with pytest.raises(SdpParseError) as caught:
        parse_sdp(data)
    assert caught.value.line_number == 14
    assert "must not carry raddr" in caught.value.defect
    data = RFC8839_EXAMPLE.replace(b"a=ice-ufrag:8hhY", b"a=ice-ufrag:8hh")
    with pytest.raises(SdpParseError, match="SDP line 9 \\(a=\\): ice-ufrag must be 4"):
        parse_sdp(data)
