"""RFC 8866 session descriptions: round trips, line grammar and order, bounds, typed errors."""

from __future__ import annotations

import pytest

from ims.sdp import (
    Attribute,
    Connection,
    MediaDescription,
    Origin,
    SdpLimits,
    SdpParseError,
    SdpTooLarge,
    SdpUsageError,
    SessionDescription,
    parse_sdp,
    serialize_sdp,
)

# RFC 8866 section 5, the example session description.
RFC8866_EXAMPLE = (
    b"v=0\r\n"
    b"o=jdoe 3724394400 3724394405 IN IP4 198.51.100.1\r\n"
    b"s=Call to John Smith\r\n"
    b"i=SDP Offer #1\r\n"
    b"u=http://www.jdoe.example.com/home.html\r\n"
    b"e=Jane Doe <jane@jdoe.example.com>\r\n"
    b"p=+1 617 555-6011\r\n"
    b"c=IN IP4 198.51.100.1\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0\r\n"
    b"m=audio 49180 RTP/AVP 0\r\n"
    b"m=video 51372 RTP/AVP 99\r\n"
    b"c=IN IP6 2001:db8::2\r\n"
    b"a=rtpmap:99 h263-1998/90000\r\n"
)

MINIMAL = b"v=0\r\no=- 1 0 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"


def test_rfc8866_section5_example_round_trips_bit_exact() -> None:
    sd = parse_sdp(RFC8866_EXAMPLE)
    assert serialize_sdp(sd) == RFC8866_EXAMPLE
    assert parse_sdp(serialize_sdp(sd)) == sd
    assert sd.origin == Origin("jdoe", "3724394400", 3724394405, "IN", "IP4", "198.51.100.1")
    assert sd.session_name == "Call to John Smith"
    assert sd.emails == ("Jane Doe <jane@jdoe.example.com>",)
    assert sd.phones == ("+1 617 555-6011",)
    assert [m.port for m in sd.media] == [49170, 49180, 51372]
    video = sd.media[2]
    assert sd.connection_for(video) == Connection("IN", "IP6", "2001:db8::2")
    assert sd.connection_for(sd.media[0]) == sd.connection
    assert video.attributes == (Attribute("rtpmap", "99 h263-1998/90000"),)


def test_rfc8866_section5_bare_lf_is_tolerated_and_written_back_as_crlf() -> None:
    lf = RFC8866_EXAMPLE.replace(b"\r\n", b"\n")
    assert parse_sdp(lf) == parse_sdp(RFC8866_EXAMPLE)
    assert serialize_sdp(parse_sdp(lf)) == RFC8866_EXAMPLE
    assert parse_sdp(RFC8866_EXAMPLE.decode()) == parse_sdp(RFC8866_EXAMPLE)


def test_rfc8866_sections_5_10_and_5_11_repeat_and_zone_lines_round_trip() -> None:
    data = MINIMAL.replace(
        b"t=0 0\r\n",
        b"t=3034423619 3042462419\r\nr=7d 1h 0 25h\r\nr=604800 3600 0 90000\r\n"
        b"z=2882844526 -1h 2898848070 0\r\nt=3034423619 0\r\n",
    )
    sd = parse_sdp(data)
    assert serialize_sdp(sd) == data
    first, second = sd.times
    assert first.start == 3034423619 and first.stop == 3042462419
    assert [str(r) for r in first.repeats] == ["7d 1h 0 25h", "604800 3600 0 90000"]
    assert [(z.time, z.offset) for z in first.zone_adjustments] == [
        (2882844526, "-1h"),
        (2898848070, "0"),
    ]
    assert second.stop == 0 and second.repeats == ()


def test_rfc8866_section5_7_multicast_connection_addresses() -> None:
    v4 = Connection.parse("IN IP4 233.252.0.1/127/3")
    assert (v4.address, v4.ttl, v4.number_of_addresses) == ("233.252.0.1", 127, 3)
    assert str(v4) == "IN IP4 233.252.0.1/127/3"
    v6 = Connection.parse("IN IP6 ff1e:db8::1/3")
    assert (v6.ttl, v6.number_of_addresses) == (None, 3)
    with pytest.raises(SdpUsageError, match="needs a TTL"):
        Connection.parse("IN IP4 233.252.0.1")
    with pytest.raises(SdpUsageError, match="TTL belongs only"):
        Connection.parse("IN IP4 192.0.2.1/127")


def test_unknown_attributes_and_optional_lines_are_kept_in_order() -> None:
    data = MINIMAL.replace(b"s=-\r\n", b"s= \r\n").replace(
        b"t=0 0\r\n",
        b"b=AS:64\r\nt=0 0\r\nk=prompt\r\na=x-zeta:1 2 3\r\na=recvonly\r\na=x-alpha\r\n"
        b"m=application 9 udp octet-stream\r\ni=game\r\nb=AS:1\r\na=x-unknown:value with spaces\r\n",
    )
    sd = parse_sdp(data)
    assert sd.session_name == " "  # RFC 8866 section 5.3 recommends "s= " for no name
    assert [a.name for a in sd.attributes] == ["x-zeta", "recvonly", "x-alpha"]
    assert sd.media[0].attributes == (Attribute("x-unknown", "value with spaces"),)
    assert serialize_sdp(sd) == data


def test_ipv6_and_fqdn_addresses() -> None:
    data = (
        b"v=0\r\no=- 7 1 IN IP6 2001:db8::1\r\ns=-\r\nt=0 0\r\n"
        b"m=application 4000 udp octet-stream\r\nc=IN IP6 2001:db8::1\r\n"
        b"m=application 4002 udp octet-stream\r\nc=IN IP4 host.example.com\r\n"
    )
    sd = parse_sdp(data)
    assert serialize_sdp(sd) == data
    assert sd.media[0].connections[0].is_ip
    assert not sd.media[1].connections[0].is_ip


def test_empty_session_name_is_tolerated_as_rfc8839_example_sends_it() -> None:
    sd = parse_sdp(MINIMAL.replace(b"s=-", b"s="))
    assert sd.session_name == ""
    assert b"\r\ns=\r\n" in serialize_sdp(sd)


def _replace(old: bytes, new: bytes) -> bytes:
    assert old in MINIMAL
    return MINIMAL.replace(old, new)


MALFORMED = [
    # (description, line number, words of the defect)
    (MINIMAL[:-2], 5, "no CRLF"),
    (b"", 1, "empty description"),
    (_replace(b"v=0", b"v=1"), 1, "only v=0"),
    (_replace(b"v=0\r\n", b""), 1, "starts with v="),
    (_replace(b"s=-\r\n", b"s=-\r\nx=1\r\n"), 4, "unknown line type"),
    (_replace(b"s=-\r\n", b"s=-\r\n\r\n"), 4, "empty line"),
    (_replace(b"s=-", b"s =-"), 3, "not a <type>=<value>"),
    (_replace(b"s=-", b"s=a\rb"), 3, "bare CR"),
    (_replace(b"s=-", b"s=\x00"), 3, "NUL"),
    (_replace(b"s=-", b"s=\xff\xfe"), 3, "not UTF-8"),
    (_replace(b"o=- 1 0 IN IP4 192.0.2.1", b"o=- 1 0 IN IP4"), 2, "6 fields"),
    (_replace(b"o=- 1 0", b"o=-  1 0"), 2, "6 fields"),
    (_replace(b"o=- 1 0", b"o=- x 0"), 2, "sess-id"),
    (_replace(b"IN IP4 192.0.2.1\r\ns", b"IN IP4 2001:db8::1\r\ns"), 2, "not of address type"),
    (_replace(b"o=- 1 0 IN IP4 192.0.2.1\r\n", b""), 2, "required o="),
    (_replace(b"s=-\r\n", b""), 3, "required s="),
    (
        _replace(b"c=IN IP4 192.0.2.1\r\n", b"c=IN IP4 192.0.2.1\r\nc=IN IP4 192.0.2.2\r\n"),
        5,
        "twice",
    ),
    (_replace(b"c=IN IP4 192.0.2.1", b"c=IN IP4 192.0.2.300"), 4, "not an IPv4"),
    (_replace(b"c=IN IP4 192.0.2.1", b"c=IN IP4 bad_host!"), 4, "neither an IP"),
    (_replace(b"c=IN IP4 192.0.2.1", b"c=IN IP6 fe80::1%eth0"), 4, "zone"),
    (_replace(b"t=0 0\r\n", b"t=0 0\r\nb=AS:1\r\n"), 6, "out of order"),
    (_replace(b"t=0 0\r\n", b"a=x\r\n"), 5, "required t="),
    (_replace(b"t=0 0", b"t=123 0"), 5, "NTP seconds"),
    (_replace(b"t=0 0", b"t=0  0"), 5, "start and stop"),
    (_replace(b"t=0 0\r\n", b"t=0 0\r\na=x\r\nr=7d 1h 0\r\n"), 7, "out of order"),
    (
        _replace(b"t=0 0\r\n", b"t=0 0\r\nz=2882844526 -1h\r\nz=2882844526 0\r\n"),
        7,
        "must follow t=",
    ),
    (_replace(b"t=0 0\r\n", b"t=0 0\r\nr=0 1h 0\r\n"), 6, "repeat interval"),
    (_replace(b"t=0 0\r\n", b"t=0 0\r\na=:x\r\n"), 6, "not a token"),
    (_replace(b"t=0 0\r\n", b"t=0 0\r\na=x:\r\n"), 6, "value must be"),
    (_replace(b"t=0 0\r\n", b"t=0 0\r\nk=secret\r\n"), 6, "k= must be"),
    (_replace(b"t=0 0\r\n", b"t=0 0\r\nm=application 70000 udp x\r\n"), 6, "outside 0..65535"),
    (_replace(b"t=0 0\r\n", b"t=0 0\r\nm=application 9 udp\r\n"), 6, "at least one format"),
    (_replace(b"t=0 0\r\n", b"t=0 0\r\nm=application 9 udp x\r\ni=a\r\ni=b\r\n"), 8, "twice"),
    (
        _replace(b"t=0 0\r\n", b"t=0 0\r\nm=application 9 udp x\r\na=x\r\nc=IN IP4 192.0.2.1\r\n"),
        8,
        "out of order",
    ),
    (
        _replace(b"t=0 0\r\n", b"t=0 0\r\nm=application 9 udp x\r\nt=0 0\r\n"),
        7,
        "not allowed in a media",
    ),
    (
        _replace(b"t=0 0\r\n", b"t=0 0\r\nm=application 9 udp x\r\nb=AS\r\n"),
        7,
        "<bwtype>:<bandwidth>",
    ),
    (
        b"v=0\r\no=- 1 0 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=application 9 udp x\r\n"
        b"a=x\r\nm=application 9 udp x\r\nc=IN IP4 192.0.2.1\r\n",
        5,
        "no c= here nor at session level",
    ),
]


@pytest.mark.parametrize(("data", "line", "defect"), MALFORMED)
def test_malformed_descriptions_name_the_line_and_the_defect(
    data: bytes, line: int, defect: str
) -> None:
    with pytest.raises(SdpParseError) as caught:
        parse_sdp(data)
    error = caught.value
    assert error.line_number == line, str(error)
    assert defect in error.defect, str(error)
    assert error.status_code == 400
    assert str(error).startswith(f"400 SDP line {line}")


def test_bounds_raise_sdp_too_large_with_488() -> None:
    limits = SdpLimits(max_bytes=200, max_lines=8, max_media=1, max_candidates=1)
    with pytest.raises(SdpTooLarge) as caught:
        parse_sdp(MINIMAL + b"a=" + b"x" * 200 + b"\r\n", limits)
    assert caught.value.status_code == 488
    with pytest.raises(SdpTooLarge, match="more than 8 lines"):
        parse_sdp(MINIMAL + b"a=x\r\n" * 4, limits)
    two_media = MINIMAL + b"m=application 9 udp x\r\nm=application 9 udp x\r\n"
    with pytest.raises(SdpTooLarge, match=r"line 7.*more than 1 media") as media_error:
        parse_sdp(two_media, limits)
    assert media_error.value.line_number == 7
    candidate = b"a=candidate:1 1 UDP 2130706431 192.0.2.1 4000 typ host\r\n"
    with pytest.raises(SdpTooLarge, match=r"line 8.*more than 1 candidates"):
        parse_sdp(MINIMAL + b"m=application 9 udp x\r\n" + candidate * 2, limits)


def test_model_refuses_what_the_grammar_refuses() -> None:
    origin = Origin.for_address("192.0.2.1", "1")
    media = MediaDescription("application", 9, "udp", ("x",))
    with pytest.raises(SdpUsageError, match="no c="):
        SessionDescription(origin=origin, media=(media,))
    with pytest.raises(SdpUsageError):
        Attribute("bad name")
    with pytest.raises(SdpUsageError):
        Attribute("x", "line\r\nbreak")
    with pytest.raises(SdpUsageError):
        MediaDescription("application", 9, "udp", ())
    with pytest.raises(SdpUsageError):
        SessionDescription(origin=origin, times=())
    with pytest.raises(SdpUsageError):
        Origin.for_address("192.0.2.999", "1")
    assert Origin.for_address("2001:db8::5", "1").addrtype == "IP6"
