"""Property tests: the parser only ever raises its own error; valid messages round-trip."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ims.sip.checks import check_bytes
from ims.sip.errors import ProtocolError
from ims.sip.message import Headers, Request, Response, parse_message, serialize
from ims.sip.uri import SipUri, TelUri

from .test_sip_message import INVITE

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        parse_message(data)
    check_bytes(data)  # never raises


@FUZZ
@given(st.integers(0, len(INVITE)), st.binary(min_size=1, max_size=8))
def test_mutated_messages_raise_only_protocol_errors(pos: int, insert: bytes) -> None:
    data = INVITE[:pos] + insert + INVITE[pos:]
    try:
        message = parse_message(data)
    except ProtocolError:
        return
    # Whatever parses must serialize and parse back to the same value.
    assert parse_message(serialize(message)) == message
    check_bytes(data)


token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~", min_size=1, max_size=12)
host = st.from_regex(r"\A[a-z][a-z0-9]{0,8}(\.[a-z][a-z0-9]{0,8}){0,2}\Z")
uri_param = st.tuples(st.from_regex(r"\A[a-z]{1,8}\Z"), st.one_of(st.none(), st.from_regex(r"\A[a-z0-9]{1,8}\Z")))
sip_uri = st.builds(
    SipUri,
    host=host,
    user=st.one_of(st.none(), st.from_regex(r"\A[a-zA-Z0-9+.]{1,10}\Z")),
    port=st.one_of(st.none(), st.integers(1, 65535)),
    params=st.lists(uri_param, max_size=3).map(tuple),
)
tel_uri = st.builds(TelUri, number=st.from_regex(r"\A\+[0-9]{4,15}\Z"), params=st.just(()))
header_value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","), min_size=1, max_size=30)
extension_header = st.tuples(st.from_regex(r"\AX-[A-Za-z]{1,10}\Z"), header_value)
body = st.binary(max_size=40)


def _base_headers(method: str, extra: list[tuple[str, str]], body_len: int) -> Headers:
    return Headers.of(
        ("Via", "SIP/2.0/UDP host.example.com;branch=z9hG4bKabc"),
        ("From", "<sip:a@example.com>;tag=1"),
        ("To", "<sip:b@example.com>"),
        ("Call-ID", "x@y"),
        ("CSeq", f"1 {method}"),
        *extra,
        ("Content-Length", str(body_len)),
    )


@FUZZ
@given(token, st.one_of(sip_uri, tel_uri), st.lists(extension_header, max_size=4), body)
def test_generated_requests_roundtrip(method: str, uri: SipUri | TelUri, extra: list[tuple[str, str]], payload: bytes) -> None:
    request = Request(method, uri, _base_headers(method, extra, len(payload)), payload)
    assert parse_message(serialize(request)) == request


@FUZZ
@given(st.integers(100, 699), st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20), st.lists(extension_header, max_size=3), body)
def test_generated_responses_roundtrip(code: int, reason: str, extra: list[tuple[str, str]], payload: bytes) -> None:
    response = Response(code, reason.strip(), _base_headers("INVITE", extra, len(payload)), payload)
    assert parse_message(serialize(response)) == response
