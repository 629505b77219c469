"""A transport's memo of parsed header values (ims.sip.message.ParsedValues) remembers the parts
that repeat across messages even when the whole value does not: the URI of a From whose tag is
new, the sent-by of a Via whose branch is new. Whatever it holds, a defect in the part that is
new is still found, and the shortcuts of the host and digest scanners accept and refuse exactly
what the grammar does.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ims.sip.digest as digest_module
import ims.sip.message as message_module
from ims.sip.checks import validate
from ims.sip.digest import (
    DigestProtocolError,
    DigestSyntaxError,
    parse_challenges,
    parse_credentials,
)
from ims.sip.errors import ParseError
from ims.sip.headers import Via, parse_sent_by
from ims.sip.message import (
    ParsedValues,
    Request,
    Response,
    make_response,
    parse_message,
    serialize,
)
from ims.sip.uri import validate_host

AOR = "sip:bench00001@ims.mnc001.mcc001.3gppnetwork.org"


def test_rfc3261_8_2_6_2_from_values_with_new_tags_share_one_parsed_uri() -> None:
    memo = ParsedValues()
    first = memo.name_addr(f"<{AOR}>;tag=1a", "From")
    second = memo.name_addr(f"<{AOR}>;tag=2b", "From")
    assert (first.tag, second.tag) == ("1a", "2b")
    assert second.uri is first.uri  # parsed once
    assert memo.uri(AOR) is first.uri


def test_a_remembered_uri_does_not_excuse_the_parameters_around_it() -> None:
    memo = ParsedValues()
    memo.name_addr(f"<{AOR}>;tag=1a", "From")
    with pytest.raises(ParseError, match="From"):
        memo.name_addr(f"<{AOR}>;tag=1a;=x", "From")


def test_rfc3261_20_42_vias_with_new_branches_read_the_sent_by_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def counting(value: str) -> tuple[Via, int]:
        calls.append(value)
        return parse_sent_by(value)

    monkeypatch.setattr(message_module, "parse_sent_by", counting)
    memo = ParsedValues()
    vias = [memo.via(f"SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{n};rport") for n in range(5)]
    assert [v.branch for v in vias] == [f"z9hG4bK-{n}" for n in range(5)]
    assert {(v.transport, v.host, v.port, v.protocol) for v in vias} == {
        ("UDP", "127.0.0.1", 5061, "SIP/2.0")
    }
    assert len(calls) == 1
    # Another sender is another sent-by.
    other = memo.via("SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bK-x")
    assert (other.transport, other.host, other.port) == ("TCP", "[2001:db8::1]", 5070)
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("value", "defect"),
    [
        # RFC 4475 section 3.1.2.1-style garbage in the parameters after a known sent-by.
        ("SIP/2.0/UDP 127.0.0.1:5061;branch", "branch without a value"),
        ("SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1;ttl=256", "ttl out of range"),
        ("SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1;rport=70000", "rport out of range"),
        ("SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1;=", "malformed parameter"),
    ],
)
def test_a_remembered_sent_by_does_not_excuse_bad_via_parameters(value: str, defect: str) -> None:
    memo = ParsedValues()
    memo.via("SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-0")
    for _ in range(2):  # errors are not remembered
        with pytest.raises(ParseError, match=defect):
            memo.via(value)


def test_rfc3261_25_1_a_bad_sent_by_is_refused_each_time() -> None:
    memo = ParsedValues()
    for _ in range(2):
        with pytest.raises(ParseError, match="invalid IPv4 address"):
            memo.via("SIP/2.0/UDP 127.0.0.256:5061;branch=z9hG4bK-1")


_OCTET = st.text(alphabet="0123456789", min_size=1, max_size=3)


@given(st.lists(_OCTET, min_size=4, max_size=4))
def test_rfc3261_25_1_ipv4address_shortcut_agrees_with_the_octet_range(octets: list[str]) -> None:
    host = ".".join(octets)
    if all(int(o) <= 255 for o in octets):
        validate_host(host, "test")
    else:
        with pytest.raises(ParseError, match="invalid IPv4 address"):
            validate_host(host, "test")


def _credentials(realm: str) -> str:
    return (f'Digest username="bill", realm="{realm}", nonce="n", uri="sip:x", '
            'response="0123456789abcdef0123456789abcdef"')


@pytest.mark.parametrize(
    ("quoted", "value"),
    [
        ("plain realm", "plain realm"),
        ("tab\there", "tab\there"),
        ('with \\"quote\\" and \\\\', 'with "quote" and \\'),
        ("Ωmega é 日本", "Ωmega é 日本"),  # UTF8-NONASCII (RFC 3261 section 25.1)
        ("", ""),
    ],
)
def test_rfc3261_25_1_quoted_string_runs_keep_the_grammar(quoted: str, value: str) -> None:
    assert parse_credentials(_credentials(quoted)).realm == value


@pytest.mark.parametrize("quoted", ["bad\x00nul", "bad\x7fdel", "lone\ud800surrogate", "a\nb"])
def test_rfc3261_25_1_quoted_string_refuses_what_qdtext_excludes(quoted: str) -> None:
    with pytest.raises(DigestSyntaxError):
        parse_credentials(_credentials(quoted))


def _outcome(parse: Callable[[str], object], text: str) -> object:
    try:
        return parse(text)
    except DigestProtocolError as exc:
        return (type(exc), str(exc))


_AUTH_ALPHABET = 'Digest realm="nonce,qop=auth\\ \t\r\nMD5-x\x00\xe9'
_AUTH_PARAM = st.tuples(
    st.sampled_from(["realm", "nonce", "uri", "username", "response", "qop", "nc", "x-ext"]),
    st.sampled_from(["=", " = ", "\t=", "\r\n =", "= \r\n\t"]),
    st.one_of(
        st.from_regex(r"[A-Za-z0-9\-.!%*_+`'~]{0,8}", fullmatch=True),
        st.text(alphabet=_AUTH_ALPHABET, max_size=10).map(lambda t: f'"{t}"'),
    ),
).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_AUTH_PARAM, min_size=1, max_size=6),
    st.sampled_from([",", ", ", " ,\t", ",\r\n ", " "]),
    st.sampled_from(["Digest ", "Digest\t", "digest  ", "Basic "]),
)
def test_rfc7235_2_1_plain_auth_param_shortcut_agrees_with_the_scanner(
    params: list[str], comma: str, scheme: str
) -> None:
    text = scheme + comma.join(params)
    fast = [_outcome(parse, text) for parse in (parse_credentials, parse_challenges)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(digest_module, "_PLAIN_AUTH_PARAM_RE", re.compile(r"(?!)"))
        slow = [_outcome(parse, text) for parse in (parse_credentials, parse_challenges)]
    assert fast == slow


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=_AUTH_ALPHABET, max_size=120))
def test_plain_auth_param_shortcut_agrees_with_the_scanner_on_any_text(text: str) -> None:
    for candidate in (text, "Digest " + text):
        fast = [_outcome(parse, candidate) for parse in (parse_credentials, parse_challenges)]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(digest_module, "_PLAIN_AUTH_PARAM_RE", re.compile(r"(?!)"))
            slow = [_outcome(parse, candidate) for parse in (parse_credentials, parse_challenges)]
        assert fast == slow


REGISTER = (
    b"REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-r1;rport\r\n"
    b"From: <sip:bill@127.0.0.1>;tag=f1\r\n"
    b"To: <sip:bill@127.0.0.1>\r\n"
    b"Call-ID: r1@127.0.0.1\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_rfc3261_8_2_6_2_a_response_reuses_what_its_request_parsed() -> None:
    request = parse_message(REGISTER)
    assert isinstance(request, Request)
    validate(request)
    response = make_response(request, 200, to_tag="t9")
    # Via, From, Call-ID and CSeq are copied: the response reads the request's parse of them.
    assert response.top_via is request.top_via
    assert response.from_ is request.from_
    assert response.cseq is request.cseq
    # To gained a tag: a new value, parsed on its own.
    assert response.to.tag == "t9" and request.to.tag is None
    assert response.to.uri == request.to.uri
    assert serialize(response) == serialize(
        Response(200, "OK", response.headers, b"")
    )  # the memo never shows on the wire
