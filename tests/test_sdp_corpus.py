"""The SDP layer against the examples the standards print (tests/data/sdp/, README there):
RFC 4317 offer/answer pairs, RFC 8839 ICE descriptions, RFC 8866 descriptions and fields."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from ims.sdp import (
    Attribute,
    Candidate,
    Connection,
    IceCredentials,
    SdpNegotiationError,
    SdpParseError,
    SessionDescription,
    candidate_priority,
    candidates_of,
    check_answer,
    credentials_of,
    parse_sdp,
    serialize_sdp,
    stream_endpoints,
)
from ims.sdp.ice import check_ice_attribute, ice_options

CORPUS = Path(__file__).parent / "data" / "sdp"
_ROW = re.compile(r"^\| `(?P<file>[^`]+\.sdp)` \| (?P<source>[^|]+) \| (?P<verdict>[^|]+) \|$")
_INVALID = re.compile(r"invalid: (?P<status>\d{3}) at line (?P<line>\d+) \((?P<type>[a-z])=\)")


def _verdicts() -> dict[str, str]:
    rows = (_ROW.match(line) for line in (CORPUS / "README.md").read_text().splitlines())
    return {m["file"]: m["verdict"].strip() for m in rows if m}


VERDICTS = _verdicts()
VALID = sorted(name for name, verdict in VERDICTS.items() if verdict == "valid")
INVALID = sorted(name for name, verdict in VERDICTS.items() if verdict != "valid")
RFC4317 = [name for name in VALID if name.startswith("rfc4317-")]


def _read(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def _sdp(name: str) -> SessionDescription:
    return parse_sdp(_read(name))


def _pairs() -> list[tuple[str, str]]:
    """(offer, answer) file names: each [Offer] with its [Answer], each [Second-Offer] with its
    [Second-Answer] (RFC 4317), and RFC 8839 Appendix A's offer and answer."""
    pairs = []
    for name in VALID:
        if name.endswith("offer.sdp"):
            answer = name.removesuffix("offer.sdp") + "answer.sdp"
            assert answer in VERDICTS, f"{name} has no answer in the corpus"
            pairs.append((name, answer))
    return pairs


PAIRS = _pairs()


# --- the corpus itself ---------------------------------------------------------------------


def test_every_corpus_file_has_a_verdict_and_every_verdict_a_file() -> None:
    assert set(VERDICTS) == {p.name for p in CORPUS.glob("*.sdp")}
    assert len(RFC4317) == 54  # 16 sections: 5 with one exchange, 11 with two
    assert all(v == "valid" or _INVALID.fullmatch(v) for v in VERDICTS.values())


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_rfc8866_section5_every_line_ends_with_crlf(name: str) -> None:
    data = _read(name)
    assert data.endswith(b"\r\n")
    assert data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r")


# --- parse and serialise -------------------------------------------------------------------


@pytest.mark.parametrize("name", VALID)
def test_rfc_example_parses_and_serialises_back_byte_for_byte(name: str) -> None:
    data = _read(name)
    description = parse_sdp(data)
    assert serialize_sdp(description) == data
    assert parse_sdp(serialize_sdp(description)) == description
    # RFC 8866 section 5: a parser should also accept lines ended by a bare LF.
    assert parse_sdp(data.replace(b"\r\n", b"\n")) == description


@pytest.mark.parametrize("name", INVALID)
def test_rfc8839_appendix_a_templates_are_refused_naming_the_line(name: str) -> None:
    expected = _INVALID.fullmatch(VERDICTS[name])
    assert expected is not None
    with pytest.raises(SdpParseError) as caught:
        parse_sdp(_read(name))
    assert caught.value.status_code == int(expected["status"])
    assert caught.value.line_number == int(expected["line"])
    assert caught.value.line_type == expected["type"]
    assert "$" in caught.value.reason  # names the variable it could not read as an address


@pytest.mark.parametrize("name", RFC4317)
def test_rfc4317_section1_session_name_is_a_single_space(name: str) -> None:
    # RFC 4317 section 1 says s= carries one space; RFC 8866 section 5.3 recommends "s= ".
    assert _sdp(name).session_name == " "


def test_rfc8866_section5_3_empty_session_name_is_tolerated_and_kept() -> None:
    # RFC 8866 section 5.3: s= MUST NOT be empty. RFC 8839 prints "s=", and copies of RFC 4317
    # lose the trailing space; we accept both and write back what came.
    bare = _read("rfc4317-2.1-offer.sdp").replace(b"s= \r\n", b"s=\r\n")
    assert parse_sdp(bare).session_name == ""
    assert serialize_sdp(parse_sdp(bare)) == bare
    for name in ("rfc8839-4.2.6.sdp", "rfc8839-A-offer.sdp", "rfc8839-A-answer.sdp"):
        assert b"\r\ns=\r\n" in _read(name)
        assert _sdp(name).session_name == ""


def test_rfc4317_domain_names_and_black_holed_connections() -> None:
    offer = _sdp("rfc4317-2.1-offer.sdp")
    assert offer.origin.unicast_address == "host.atlanta.example.com"
    assert offer.connection == Connection("IN", "IP4", "host.atlanta.example.com")
    assert not offer.connection.is_ip
    # RFC 4317 section 2.8: a media-level c= overrides the session's (RFC 8866 section 5.7).
    answer = _sdp("rfc4317-2.8-answer.sdp")
    assert answer.connection_for(answer.media[1]) == Connection(
        "IN", "IP4", "otherhost.biloxi.example.com"
    )
    assert answer.connection_for(answer.media[0]) == answer.connection
    # RFC 4317 section 5.2: c=IN IP4 0.0.0.0 and a port: media that cannot be sent to.
    held = _sdp("rfc4317-5.2-offer.sdp")
    assert held.connection == Connection("IN", "IP4", "0.0.0.0")
    assert held.media[0].port == 23442
    # RFC 4317 section 5.1: an offer with no m= line, and its answer.
    assert _sdp("rfc4317-5.1-offer.sdp").media == ()
    assert _sdp("rfc4317-5.1-answer.sdp").media == ()


# --- RFC 3264 section 6 on the RFC 4317 pairs ------------------------------------------------

# The m= lines each pair rejects with port zero, as the RFC 4317 text describes them.
REJECTED = {
    "rfc4317-2.2-answer.sdp": (1,),  # "The declined video stream"
    "rfc4317-2.2-second-answer.sdp": (1,),
    "rfc4317-2.6-answer.sdp": (0,),  # "Bob declines the first one"
    "rfc4317-4.3-second-answer.sdp": (1,),  # "Bob deletes the video session"
}


@pytest.mark.parametrize(("offer", "answer"), PAIRS)
def test_rfc3264_section6_rfc_example_answers_are_accepted(offer: str, answer: str) -> None:
    offered, answered = _sdp(offer), _sdp(answer)
    check_answer(offered, answered)
    # RFC 3264 section 6: one m= line per offered one, same media type, same order.
    assert [m.media for m in answered.media] == [m.media for m in offered.media]
    rejected = tuple(i for i, m in enumerate(answered.media) if m.rejected)
    assert rejected == REJECTED.get(answer, ())
    assert all(answered.media[i].port == 0 for i in rejected)


@pytest.mark.parametrize(("offer", "answer"), [p for p in PAIRS if "5.1-offer" not in p[0]])
def test_rfc3264_section6_answer_with_an_m_line_fewer_is_refused(offer: str, answer: str) -> None:
    data = _read(answer)
    broken = data[: data.rindex(b"\r\nm=") + 2]  # drop the last media description
    offered = _sdp(offer)
    with pytest.raises(SdpNegotiationError) as caught:
        check_answer(offered, parse_sdp(broken))
    assert caught.value.status_code == 488
    count = len(offered.media)
    assert f"answer has {count - 1} m= lines for {count} offered (RFC 3264 §6)" in str(caught.value)


@pytest.mark.parametrize("pair", ["2.2-second", "4.3-second"])
def test_rfc3264_section6_answer_accepting_a_stream_the_offer_removed_is_refused(
    pair: str,
) -> None:
    offer, answer = _sdp(f"rfc4317-{pair}-offer.sdp"), _sdp(f"rfc4317-{pair}-answer.sdp")
    assert offer.media[1].rejected
    revived = answer.with_media(1, replace(answer.media[1], port=49180))
    with pytest.raises(SdpNegotiationError, match="that the offer rejected"):
        check_answer(offer, revived)


def test_rfc3264_section6_1_answer_may_renumber_an_offered_dynamic_payload_type() -> None:
    # RFC 4317 section 2.3: iLBC offered as 97 is answered as 99 ("the same codec is
    # referenced"); RFC 3264 section 6.1 says the answer SHOULD, not MUST, reuse the number.
    offer, answer = _sdp("rfc4317-2.3-offer.sdp"), _sdp("rfc4317-2.3-answer.sdp")
    assert answer.media[0].formats == ("99",) and "99" not in offer.media[0].formats
    check_answer(offer, answer)
    # The codec decides, case-insensitively (RFC 4855 section 3) ...
    audio = answer.media[0]
    upper = replace(audio, attributes=(Attribute("rtpmap", "99 ILBC/8000"),))
    check_answer(offer, answer.with_media(0, upper))
    # ... so a dynamic number for a codec the offer never listed is no offered format,
    other = replace(audio, attributes=(Attribute("rtpmap", "99 opus/48000/2"),))
    with pytest.raises(SdpNegotiationError, match="did not list"):
        check_answer(offer, answer.with_media(0, other))
    # and neither is a dynamic number without the a=rtpmap that names its codec.
    unnamed = replace(audio, attributes=())
    with pytest.raises(SdpNegotiationError, match="did not list"):
        check_answer(offer, answer.with_media(0, unnamed))


def test_rfc3264_section6_1_answer_may_list_formats_beyond_the_offered_ones() -> None:
    # RFC 4317 section 3.2, second exchange: Bob offers iLBC (97) alone and Alice answers
    # "with identical SDP to the initial offer", PCMU (0) included. RFC 3264 section 6.1: the
    # stream "MAY indicate additional media formats, not listed ... in the offer".
    offer = _sdp("rfc4317-3.2-second-offer.sdp")
    answer = _sdp("rfc4317-3.2-second-answer.sdp")
    assert offer.media[0].formats == ("97",) and answer.media[0].formats == ("0", "97")
    check_answer(offer, answer)
    # At least one format must still come from the offer.
    only_new = answer.with_media(0, replace(answer.media[0], formats=("0",)))
    with pytest.raises(SdpNegotiationError, match="lists only formats the offer did not list"):
        check_answer(offer, only_new)


# --- RFC 8839 --------------------------------------------------------------------------------


def test_rfc8839_section_4_2_6_example_reads_as_ice_types() -> None:
    description = _sdp("rfc8839-4.2.6.sdp")
    media = description.media[0]
    assert candidates_of(media) == (
        Candidate("1", 1, "UDP", 2130706431, "203.0.113.141", 8998, "host"),
        Candidate(
            "2", 1, "UDP", 1694498815, "192.0.2.3", 45664, "srflx",
            related_address="203.0.113.141", related_port=8998,
        ),
    )  # fmt: skip
    # Section 5.4: session-level ice-ufrag/ice-pwd apply to the m= section without its own.
    assert credentials_of(description, media) == IceCredentials("8hhY", "asd88fgpdd777uzjYhagZg")
    assert Attribute("ice-pacing", "50") in description.attributes
    stream = stream_endpoints(description, 0)
    assert stream.ice_options == ("ice2",)
    assert (stream.default.address, stream.default.port) == ("192.0.2.3", 45664)
    # The default destination is the srflx candidate (section 4.2.5: no ice-mismatch).
    assert stream.candidates[1].address == stream.default.address


def test_rfc8839_appendix_a_offer_and_answer_read_as_ice_types() -> None:
    offer = _sdp("rfc8839-A-offer.sdp")
    assert candidates_of(offer.media[0]) == (
        Candidate("1", 1, "UDP", 2130706431, "fe80::6676:baff:fe9c:ee4a", 8998, "host"),
        Candidate(
            "2", 1, "UDP", 1694498815, "2001:db8:8101:3a55:4858:a2a9:22ff:99b9", 45664, "srflx",
            related_address="fe80::6676:baff:fe9c:ee4a", related_port=8998,
        ),
    )  # fmt: skip
    assert credentials_of(offer, offer.media[0]) == IceCredentials("8hhY", "asd88fgpdd777uzjYhagZg")
    answer = _sdp("rfc8839-A-answer.sdp")
    assert candidates_of(answer.media[0]) == (
        Candidate("1", 1, "UDP", 2130706431, "192.0.2.1", 3478, "host"),
    )
    assert credentials_of(answer, answer.media[0]) == IceCredentials(
        "9uB6", "YH75Fviy6338Vbrhrlp8Yh"
    )
    assert stream_endpoints(answer, 0).ice_options == ("ice2",)
    assert Attribute("ice-pacing", "50") in answer.attributes


def test_rfc8445_section_5_1_2_1_rfc8839_example_priorities_follow_the_formula() -> None:
    # The examples' priorities are the recommended ones: type preference 126 (host) or 100
    # (srflx), local preference 65535, component 1.
    for name in ("rfc8839-4.2.6.sdp", "rfc8839-A-offer.sdp", "rfc8839-A-answer.sdp"):
        for candidate in candidates_of(_sdp(name).media[0]):
            assert candidate.priority == candidate_priority(candidate.type, candidate.component)


def test_rfc8839_section_5_attribute_line_examples() -> None:
    # Section 5.4 (credentials) and 5.6 (ice-options) print single attribute lines.
    for line in ("ice-pwd:asd88fgpdd777uzjYhagZg", "ice-ufrag:8hhY", "ice-options:ice2 rtp+ecn"):
        check_ice_attribute(Attribute.parse(line), session_level=True)
        check_ice_attribute(Attribute.parse(line), session_level=False)
    assert ice_options("ice2 rtp+ecn") == ("ice2", "rtp+ecn")


# --- RFC 8866 field examples ----------------------------------------------------------------

_HEAD = b"v=0\r\no=jdoe 3724394400 3724394405 IN IP4 198.51.100.1\r\ns=-\r\n"


@pytest.mark.parametrize(
    ("section", "lines"),
    [
        # 5.6: phone and the two email forms.
        ("5.6", b"e=j.doe@example.com (Jane Doe)\r\ne=Jane Doe <j.doe@example.com>\r\n"
                b"p=+1 617 555-6011\r\nc=IN IP4 198.51.100.1\r\nt=0 0\r\n"),
        # 5.7: IPv4 multicast with TTL, with TTL and count; IPv6 multicast with count.
        ("5.7", b"c=IN IP4 233.252.0.1/127\r\nt=0 0\r\n"),
        ("5.7", b"c=IN IP4 233.252.0.1/127/3\r\nt=0 0\r\n"),
        ("5.7", b"c=IN IP6 ff00::db8:0:101/3\r\nt=0 0\r\n"),
        ("5.7", b"t=0 0\r\nm=video 49170 RTP/AVP 31\r\nc=IN IP4 233.252.0.1/127\r\n"
                b"c=IN IP4 233.252.0.2/127\r\nc=IN IP4 233.252.0.3/127\r\n"),
        # 5.8: an experimental bandwidth type.
        ("5.8", b"c=IN IP4 198.51.100.1\r\nb=X-YZ:128\r\nt=0 0\r\n"),
        # 5.9: two active intervals (the RFC's "; ..." annotations are not SDP).
        ("5.9", b"c=IN IP4 198.51.100.1\r\nt=3724394400 3724398000\r\nt=3724484400 3724488000\r\n"),
        # 5.10: the same repeat in seconds and in units.
        ("5.10", b"c=IN IP4 198.51.100.1\r\nt=3724394400 3730536000\r\nr=604800 3600 0 90000\r\n"),
        ("5.10", b"c=IN IP4 198.51.100.1\r\nt=3724394400 3730536000\r\nr=7d 1h 0 25h\r\n"),
        # 5.11: a time zone adjustment after the repeat it modifies.
        ("5.11", b"c=IN IP4 198.51.100.1\r\nt=3724394400 3754123200\r\nr=604800 3600 0 90000\r\n"
                 b"z=3730928400 -1h 3749680800 0\r\n"),
        # 5.13: a property and a value attribute.
        ("5.13", b"c=IN IP4 198.51.100.1\r\nt=0 0\r\na=recvonly\r\na=orient:landscape\r\n"),
        # 5.14: a port count, mapped onto multicast addresses given by count or by lines.
        ("5.14", b"t=0 0\r\nm=video 49170/2 RTP/AVP 31\r\nc=IN IP4 233.252.0.1/127/2\r\n"),
        ("5.14", b"t=0 0\r\nm=video 49170/2 RTP/AVP 31\r\nc=IN IP6 ff00::db8:0:101\r\n"
                 b"c=IN IP6 ff00::db8:0:102\r\n"),
    ],
)  # fmt: skip
def test_rfc8866_field_examples_parse_and_round_trip(section: str, lines: bytes) -> None:
    data = _HEAD + lines
    description = parse_sdp(data)
    assert serialize_sdp(description) == data, f"RFC 8866 section {section}"


def test_rfc8866_field_examples_read_as_the_text_explains() -> None:
    layered = parse_sdp(_HEAD + b"c=IN IP4 233.252.0.1/127/3\r\nt=0 0\r\n").connection
    assert layered == Connection("IN", "IP4", "233.252.0.1", ttl=127, number_of_addresses=3)
    ipv6 = parse_sdp(_HEAD + b"c=IN IP6 ff00::db8:0:101/3\r\nt=0 0\r\n").connection
    assert ipv6 == Connection("IN", "IP6", "ff00::db8:0:101", number_of_addresses=3)
    media = parse_sdp(
        _HEAD + b"t=0 0\r\nm=video 49170/2 RTP/AVP 31\r\nc=IN IP4 233.252.0.1/127/2\r\n"
    ).media[0]
    assert (media.port, media.number_of_ports, media.formats) == (49170, 2, ("31",))
    whole = _sdp("rfc8866-5.sdp")
    assert [m.port for m in whole.media] == [49170, 49180, 51372]
    assert whole.connection_for(whole.media[2]) == Connection("IN", "IP6", "2001:db8::2")
