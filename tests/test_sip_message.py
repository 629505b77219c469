"""The message model, parser and serializer (RFC 3261 sections 7, 20, 25)."""

from __future__ import annotations

import pytest

from ims.sip.errors import ParseError, VersionNotSupported
from ims.sip.headers import parse_name_addr, parse_via
from ims.sip.message import Headers, Request, Response, make_response, parse_message, serialize
from ims.sip.uri import AbsoluteUri, SipUri, TelUri, parse_uri

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def test_parse_request_fields() -> None:
    m = parse_message(INVITE)
    assert isinstance(m, Request)
    assert m.method == "INVITE"
    assert m.uri == SipUri(host="biloxi.example.com", user="bob")
    assert m.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert m.cseq.number == 314159 and m.cseq.method == "INVITE"
    assert m.from_.tag == "1928301774"
    assert m.from_.display_name == '"Alice"'
    assert m.to.tag is None
    assert m.top_via.branch == "z9hG4bK776asdhds"
    assert m.body == b"v=0\n"


def test_roundtrip_exact_for_canonical_input() -> None:
    assert serialize(parse_message(INVITE)) == INVITE


def test_rfc3261_7_3_3_compact_forms_expand() -> None:
    raw = INVITE.replace(b"Call-ID:", b"i:").replace(b"Via:", b"v:").replace(b"Content-Length:", b"l:")
    m = parse_message(raw)
    assert m.headers.get("Call-ID") == "a84b4c76e66710@pc33.atlanta.example.com"
    assert m.headers.items[0][0] == "Via"
    assert parse_message(serialize(m)) == m


def test_rfc3261_7_3_1_folded_lines_unfold_to_one_space() -> None:
    raw = INVITE.replace(b"Max-Forwards: 70\r\n", b"Subject: I know\r\n   you're there\r\nMax-Forwards: 70\r\n")
    m = parse_message(raw)
    assert m.headers.get("Subject") == "I know you're there"


def test_rfc3261_7_3_1_comma_lists_split_and_recombine() -> None:
    raw = INVITE.replace(
        b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n",
        b"Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1 , SIP/2.0/TCP b.example.com:5061;branch=z9hG4bK2\r\n",
    )
    m = parse_message(raw)
    assert [v.host for v in m.vias] == ["a.example.com", "b.example.com"]
    assert m.vias[1].port == 5061


def test_comma_inside_quotes_and_angle_brackets_does_not_split() -> None:
    raw = INVITE.replace(
        b"Contact: <sip:alice@pc33.atlanta.example.com>",
        b'Contact: "Lee, J." <sip:a,b@x.example.com>;q=0.5, <sip:c@y.example.com>',
    )
    contacts = parse_message(raw).name_addrs("Contact")
    assert [str(c.uri) for c in contacts] == ["sip:a,b@x.example.com", "sip:c@y.example.com"]
    assert contacts[0].display_name == '"Lee, J."'


def test_authorization_is_not_split_on_commas() -> None:
    value = 'Digest username="bob", realm="example.com", nonce="abc"'
    raw = INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nAuthorization: " + value.encode() + b"\r\n")
    assert parse_message(raw).headers.get_all("Authorization") == [value]


def test_unknown_method_and_header_preserved() -> None:
    raw = INVITE.replace(b"INVITE", b"NEWMETHOD").replace(b"Max-Forwards: 70", b"X-Odd-Header: Some,Thing")
    m = parse_message(raw)
    assert isinstance(m, Request) and m.method == "NEWMETHOD"
    assert m.headers.get("x-odd-header") == "Some,Thing"
    assert parse_message(serialize(m)) == m


def test_response_parse() -> None:
    m = parse_message(b"SIP/2.0 180 Ringing Now\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bKx\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(m, Response)
    assert (m.status_code, m.reason) == (180, "Ringing Now")


def test_rfc3261_18_3_datagram_bytes_beyond_content_length_discarded() -> None:
    m = parse_message(INVITE + b"garbage")
    assert m.body == b"v=0\n"


def test_rfc3261_7_5_leading_crlf_ignored() -> None:
    assert parse_message(b"\r\n\r\n" + INVITE) == parse_message(INVITE)


def test_rfc3261_8_2_2_wrong_version_is_505() -> None:
    with pytest.raises(VersionNotSupported) as exc:
        parse_message(INVITE.replace(b"SIP/2.0\r\n", b"SIP/7.0\r\n", 1))
    assert exc.value.status_code == 505


@pytest.mark.parametrize(
    "raw, defect",
    [
        (b"INVITE sip:bob@example.com SIP/2.0\r\nVia SIP/2.0/UDP x\r\n\r\n", "malformed header line"),
        (b"INVITE <sip:bob@example.com> SIP/2.0\r\n\r\n", "Request-URI enclosed in <>"),
        (b"INVITE sip:bob@exa mple.com SIP/2.0\r\n\r\n", "whitespace"),
        (b"INV ITE\r\n\r\n", "malformed start line"),
        (b"INVITE sip:a@example.com SIP/2.0x\r\n\r\n", "SIP-Version"),
        (b"SIP/2.0 99 Odd\r\n\r\n", "Status-Code"),
        (b"INVITE sip:bob@example.com SIP/2.0\r\nTo: x", "missing empty line"),
        (b"", "empty"),
    ],
)
def test_parse_errors_name_the_defect(raw: bytes, defect: str) -> None:
    with pytest.raises(ParseError) as exc:
        parse_message(raw)
    assert defect in exc.value.reason
    assert exc.value.status_code == 400


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@atlanta.example.com",
        "sips:%61lice:secret@[2001:db8::10]:5070;transport=tcp;lr?subject=project&priority=urgent",
        "sip:+15550100001;phone-context=ims.example.com@ims.example.com;user=phone",
        "tel:+1-555-010-0001;npdi",
        "tel:7042;phone-context=example.com",
        "mailto:alice@example.com",
        "sip:[::1]",
    ],
)
def test_uri_roundtrip(text: str) -> None:
    assert str(parse_uri(text)) == text


def test_rfc5118_ipv6_reference() -> None:
    uri = parse_uri("sip:[2001:db8::10]:5070")
    assert isinstance(uri, SipUri)
    assert uri.host == "[2001:db8::10]" and uri.port == 5070
    assert uri.host_for_connect == "2001:db8::10"


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@[2001:db8::10",
        "sip:alice@256.1.1.1",
        "sip:alice@host:99999",
        "sip:alice@",
        "tel:7042",  # RFC 3966 5.1.5: local numbers need phone-context
        "sip:al ice@host",
        "sip:host;=x",
    ],
)
def test_bad_uris_rejected(text: str) -> None:
    with pytest.raises(ParseError):
        parse_uri(text)


def test_rfc3966_tel_uri_e164_and_equivalence() -> None:
    a = parse_uri("tel:+1-555-010-0001")
    b = parse_uri("tel:+15550100001")
    assert isinstance(a, TelUri) and a.e164 == "+15550100001"
    assert a.equivalent(b)


def test_rfc3261_19_1_4_uri_comparison() -> None:
    a = parse_uri("sip:%61lice@ATLANTA.example.com;transport=TCP")
    b = parse_uri("sip:alice@atlanta.example.com;Transport=tcp")
    assert isinstance(a, SipUri) and a.equivalent(b)
    c = parse_uri("sip:alice@atlanta.example.com")
    assert not a.equivalent(c)  # transport present in one only
    assert not parse_uri("sip:ALICE@atlanta.example.com").equivalent(c)  # user is case-sensitive


def test_unknown_scheme_kept_as_absolute_uri() -> None:
    assert isinstance(parse_uri("unknownscheme:foo"), AbsoluteUri)


def test_name_addr_forms() -> None:
    na = parse_name_addr('"A \\"quoted\\" name" <sip:a@x.example.com;lr>;tag=abc')
    assert na.tag == "abc"
    assert isinstance(na.uri, SipUri) and na.uri.param("lr") == ""
    # addr-spec: parameters after the URI belong to the header (RFC 3261 20.10)
    spec = parse_name_addr("sip:a@x.example.com;tag=xyz")
    assert spec.tag == "xyz" and isinstance(spec.uri, SipUri) and spec.uri.params == ()
    tokens = parse_name_addr("Bob Smith <sip:bob@y.example.com>")
    assert tokens.display_name == "Bob Smith"


def test_via_parts() -> None:
    via = parse_via("SIP / 2.0 / UDP [2001:db8::9]:5060 ; branch=z9hG4bKabc;rport;received=192.0.2.1")
    assert via.transport == "UDP" and via.host == "[2001:db8::9]" and via.port == 5060
    assert via.branch == "z9hG4bKabc" and via.rport == "" and via.received == "192.0.2.1"
    assert str(via.with_param("rport", "5062")).endswith("rport=5062;received=192.0.2.1")


def test_headers_edit_operations() -> None:
    h = Headers.of(("Via", "a"), ("Route", "r1"), ("Via", "b"))
    assert h.prepended("Via", "z").get_all("Via") == ["z", "a", "b"]
    assert h.without_first("Via").get_all("Via") == ["b"]
    assert h.replaced("Route", ["x", "y"]).items[1:3] == (("Route", "x"), ("Route", "y"))
    assert "route" in h and h.count("VIA") == 2


def test_rfc3261_8_2_6_make_response_copies_and_tags() -> None:
    req = parse_message(INVITE)
    assert isinstance(req, Request)
    resp = make_response(req, 180, to_tag="t1")
    assert resp.reason == "Ringing"
    assert resp.to.tag == "t1"
    assert resp.headers.get_all("Via") == req.headers.get_all("Via")
    assert resp.headers.get("Content-Length") == "0"
    assert make_response(req, 100, to_tag="t1").to.tag is None  # no tag on 100 (8.2.6.2)


def test_datagram_without_the_empty_line_reads_as_bodiless() -> None:
    # A datagram's end is the message's end; complete header lines are still a message, so
    # an element reports the defect that matters instead (RFC 4475 3.1.2.15 baddn).
    m = parse_message(INVITE.split(b"\r\n\r\n")[0].replace(b"Content-Length: 4", b"Content-Length: 0") + b"\r\n")
    assert m.body == b"" and m.headers.get("Content-Length") == "0"
