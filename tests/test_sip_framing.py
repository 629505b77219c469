"""Stream framing (ims.sip.framing): RFC 3261 section 18.3, RFC 5626 section 3.5.1, bounds."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ims.sip.errors import LocalProtocolError, MessageTooLarge, ParseError, ProtocolError
from ims.sip.framing import (
    FramingEvent,
    FramingLimits,
    KeepAlivePing,
    KeepAlivePong,
    MessageFramed,
    StreamFramer,
)
from ims.sip.message import parse_message

OPTIONS = (
    b"OPTIONS sip:dave@ims.mnc002.mcc001.3gppnetwork.org SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK776asdhds\r\n"
    b"From: <sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org>;tag=1928301774\r\n"
    b"To: <sip:dave@ims.mnc002.mcc001.3gppnetwork.org>\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 63104 OPTIONS\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
# A body holding an empty line and a compact, folded Content-Length (sections 7.3.1, 7.3.3).
BODY = b"v=0\r\n\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
INVITE = (
    b"INVITE sip:dave@ims.mnc002.mcc001.3gppnetwork.org SIP/2.0\r\n"
    b"v: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKnashds8\r\n"
    b"f: <sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org>;tag=1928301774\r\n"
    b"t: <sip:dave@ims.mnc002.mcc001.3gppnetwork.org>\r\n"
    b"i: a84b4c76e66711\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"c: application/sdp\r\n"
    b"l:\r\n " + str(len(BODY)).encode() + b"\r\n"
    b"\r\n" + BODY
)
RESPONSE = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK776asdhds\r\n"
    b"From: <sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org>;tag=1928301774\r\n"
    b"To: <sip:dave@ims.mnc002.mcc001.3gppnetwork.org>;tag=a6c85cf\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 63104 OPTIONS\r\n"
    b"Content-Length: 5\r\n"
    b"\r\n"
    b"hello"
)
SAMPLES = (OPTIONS, INVITE, RESPONSE)


def drain(framer: StreamFramer) -> list[FramingEvent]:
    events: list[FramingEvent] = []
    while (event := framer.next_event()) is not None:
        events.append(event)
    return events


def feed_all(framer: StreamFramer, chunks: list[bytes]) -> list[FramingEvent]:
    events: list[FramingEvent] = []
    for chunk in chunks:
        framer.feed(chunk)
        events.extend(drain(framer))
    return events


def messages(events: list[FramingEvent]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, MessageFramed)]


def test_one_message_one_chunk() -> None:
    framer = StreamFramer()
    assert feed_all(framer, [OPTIONS]) == [MessageFramed(OPTIONS)]
    assert framer.buffered == b""


def test_several_messages_in_one_chunk() -> None:
    framer = StreamFramer()
    assert messages(feed_all(framer, [OPTIONS + INVITE + RESPONSE])) == list(SAMPLES)


def test_rfc3261_18_3_body_ends_at_content_length_not_at_an_empty_line() -> None:
    framer = StreamFramer()
    (event,) = feed_all(framer, [INVITE])
    assert isinstance(event, MessageFramed)
    assert parse_message(event.data).body == BODY


def test_rfc3261_18_3_message_waits_for_the_whole_body() -> None:
    framer = StreamFramer()
    assert feed_all(framer, [RESPONSE[:-1]]) == []
    assert feed_all(framer, [RESPONSE[-1:]]) == [MessageFramed(RESPONSE)]


def test_rfc3261_18_3_missing_content_length_is_a_framing_error() -> None:
    framer = StreamFramer()
    framer.feed(OPTIONS.replace(b"Content-Length: 0\r\n", b""))
    with pytest.raises(ParseError, match="missing Content-Length"):
        framer.next_event()
    # The stream is dead: the same error again, and feeding more is API misuse.
    with pytest.raises(ParseError):
        framer.next_event()
    with pytest.raises(LocalProtocolError):
        framer.feed(OPTIONS)
    assert framer.buffered.startswith(b"OPTIONS ")


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b"Content-Length: abc\r\n", "malformed Content-Length"),
        (b"Content-Length: -1\r\n", "malformed Content-Length"),
        (b"Content-Length: 0\r\nl: 3\r\n", "conflicting Content-Length"),
    ],
)
def test_rfc3261_20_14_malformed_content_length(header: bytes, reason: str) -> None:
    framer = StreamFramer()
    framer.feed(OPTIONS.replace(b"Content-Length: 0\r\n", header))
    with pytest.raises(ParseError, match=reason):
        framer.next_event()


def test_rfc3261_7_5_crlfs_before_a_message_are_skipped() -> None:
    framer = StreamFramer()
    assert messages(feed_all(framer, [b"\r\n\r\n\r\n" + OPTIONS])) == [OPTIONS]


def test_rfc5626_3_5_1_double_crlf_is_a_ping() -> None:
    framer = StreamFramer()
    events = feed_all(framer, [OPTIONS + b"\r\n\r\n" + OPTIONS])
    assert events == [
        MessageFramed(OPTIONS),
        KeepAlivePong(),
        KeepAlivePing(),
        MessageFramed(OPTIONS),
    ]


def test_rfc5626_3_5_1_ping_split_across_reads_is_still_a_ping() -> None:
    framer = StreamFramer()
    events = feed_all(framer, [b"\r", b"\n\r", b"\n"])
    assert events == [KeepAlivePong(), KeepAlivePing()]


def test_rfc5626_3_5_1_single_crlf_is_a_pong() -> None:
    framer = StreamFramer()
    assert feed_all(framer, [b"\r\n"]) == [KeepAlivePong()]


def test_bare_lf_line_ends_are_framed_like_the_parser_reads_them() -> None:
    lf = OPTIONS.replace(b"\r\n", b"\n")
    framer = StreamFramer()
    assert messages(feed_all(framer, [lf + OPTIONS])) == [lf, OPTIONS]
    assert parse_message(lf).headers.get("CSeq") == "63104 OPTIONS"


def test_header_block_without_an_end_is_cut_at_the_bound() -> None:
    framer = StreamFramer(FramingLimits(max_header_bytes=1024))
    framer.feed(b"INVITE sip:a@b SIP/2.0\r\n")
    assert framer.next_event() is None
    framer.feed(b"X-Junk: " + b"a" * 600 + b"\r\n")
    assert framer.next_event() is None
    framer.feed(b"X-Junk: " + b"a" * 600 + b"\r\n")
    with pytest.raises(MessageTooLarge, match="header block longer than 1024 bytes"):
        framer.next_event()
    assert framer.error is not None
    assert framer.error.status_code == 513


def test_complete_header_block_over_the_bound_is_cut() -> None:
    framer = StreamFramer(FramingLimits(max_header_bytes=100))
    framer.feed(OPTIONS)
    with pytest.raises(MessageTooLarge):
        framer.next_event()


def test_content_length_over_the_body_bound_is_cut_before_the_body_arrives() -> None:
    framer = StreamFramer(FramingLimits(max_body_bytes=1000))
    framer.feed(OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 99999999"))
    with pytest.raises(MessageTooLarge, match="Content-Length 99999999 exceeds"):
        framer.next_event()


def test_huge_content_length_digits_are_malformed() -> None:
    framer = StreamFramer()
    framer.feed(OPTIONS.replace(b"Content-Length: 0", b"Content-Length: " + b"9" * 40))
    with pytest.raises(ParseError, match="malformed Content-Length"):
        framer.next_event()


def test_buffered_bytes_bound() -> None:
    limits = FramingLimits(max_header_bytes=100, max_body_bytes=100, max_buffered_bytes=300)
    framer = StreamFramer(limits)
    framer.feed(b"\r\n" * 100)
    with pytest.raises(MessageTooLarge, match="more than 300 bytes buffered"):
        framer.feed(b"\r\n" * 100)


def test_stray_cr_does_not_stall_the_bound() -> None:
    framer = StreamFramer(FramingLimits(max_header_bytes=64))
    framer.feed(b"\r" + b"x" * 100)
    with pytest.raises(MessageTooLarge):
        framer.next_event()


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_buffered_bytes"):
        FramingLimits(max_header_bytes=1000, max_body_bytes=1000, max_buffered_bytes=1000)
    with pytest.raises(ValueError, match="positive"):
        FramingLimits(max_header_bytes=0)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[bytes], list[int]]:
    """A stream of sample messages with keep-alives between, and cut points into it."""
    parts: list[bytes] = []
    expected: list[bytes] = []
    for _ in range(draw(st.integers(1, 6))):
        parts.append(b"\r\n" * draw(st.sampled_from([0, 0, 1, 2])))
        message = draw(st.sampled_from(SAMPLES))
        parts.append(message)
        expected.append(message)
    stream = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    return stream, expected, cuts


@settings(max_examples=200, deadline=None)
@given(streams())
def test_arbitrary_chunking_frames_the_same_messages(
    case: tuple[bytes, list[bytes], list[int]],
) -> None:
    stream, expected, cuts = case
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    framer = StreamFramer()
    events = feed_all(framer, chunks)
    assert messages(events) == expected
    assert framer.buffered == b""
    # Keep-alives are reported whatever the chunking: one event per CRLF between messages.
    assert sum(not isinstance(e, MessageFramed) for e in events) == stream.count(b"\r\n") - sum(
        m.count(b"\r\n") for m in expected
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_arbitrary_bytes_frame_or_raise_the_framers_own_error(chunks: list[bytes]) -> None:
    framer = StreamFramer(FramingLimits(max_header_bytes=256, max_body_bytes=256))
    total = 0
    try:
        for event in feed_all(framer, chunks):
            if isinstance(event, MessageFramed):
                total += len(event.data)
    except ProtocolError as exc:
        assert isinstance(exc, ParseError | MessageTooLarge)
        assert framer.error is exc
    # Never more than was fed, never holding more than the bound.
    assert total <= sum(len(c) for c in chunks)
    assert len(framer.buffered) <= framer.limits.max_buffered_bytes
