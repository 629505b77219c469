"""The caches and shortcuts of the SIP hot path keep the behaviour of the plain code.

Headers keep a lookup index, messages remember the header values they parsed (shared with the
messages derived from them and, from a transport, across messages), IP literals are checked
by hand before `ipaddress`, the UDP endpoint reads queued datagrams in batches and the stack
keeps an earlier loop timer. Each test states what must stay true whatever the cache holds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from hypothesis import given
from hypothesis import strategies as st

from ims.sip.address import canonical_ip, ip_version
from ims.sip.checks import validate
from ims.sip.errors import ParseError
from ims.sip.message import Headers, ParsedValues, Request, parse_message, serialize
from ims.sip.stack import SipStack
from ims.sip.transport import UdpTransport
from ims.sip.uri import SipUri

INVITE = (
    b"INVITE sip:bob@127.0.0.1:5062 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-hot-1\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5063;branch=z9hG4bK-hot-0;received=127.0.0.1\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@127.0.0.1:5061>;tag=a1\r\n"
    b"To: <sip:bob@127.0.0.1:5062>\r\n"
    b"Call-ID: hot-1@127.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Route: <sip:127.0.0.1:5070;lr>\r\n"
    b"Content-Length: 0\r\n\r\n"
)

# --- Headers: the index against a plain scan ---------------------------------------------------

NAMES = ["Via", "via", "v", "Route", "To", "t", "X-Foo", "x-foo", "Max-Forwards", "CSeq"]
_name = st.sampled_from(NAMES)
_value = st.sampled_from(["a", "b", "c", "d"])


def _scan_get_all(headers: Headers, name: str) -> list[str]:
    return [v for n, v in headers.items if n.lower() == name.lower()]


def _assert_lookups_match_scan(headers: Headers) -> None:
    for name in NAMES:
        expected = _scan_get_all(headers, name)
        assert headers.get_all(name) == expected
        assert headers.get(name) == (expected[0] if expected else None)
        assert headers.count(name) == len(expected)
        assert (name in headers) == bool(expected)
    assert headers.names() == frozenset(n.lower() for n, _ in headers.items)


_edit = st.one_of(
    st.tuples(st.just("appended"), _name, _value),
    st.tuples(st.just("prepended"), _name, _value),
    st.tuples(st.just("replaced"), _name, st.lists(_value, max_size=3)),
    st.tuples(st.just("without_first"), _name),
    st.tuples(st.just("without"), _name),
    st.tuples(st.just("look"), _name),  # builds the index mid-way
)


@given(
    start=st.lists(st.tuples(_name, _value), max_size=8),
    edits=st.lists(_edit, max_size=8),
)
def test_header_lookups_agree_with_a_scan_after_any_edits(
    start: list[tuple[str, str]], edits: list[tuple[object, ...]]
) -> None:
    headers = Headers(tuple(start))  # names as given: compact and odd case included
    for edit in edits:
        op, name = edit[0], str(edit[1])
        if op == "appended":
            headers = headers.appended(name, str(edit[2]))
        elif op == "prepended":
            headers = headers.prepended(name, str(edit[2]))
        elif op == "replaced":
            values = edit[2]
            assert isinstance(values, list)
            headers = headers.replaced(name, values)
        elif op == "without_first":
            headers = headers.without_first(name)
        elif op == "without":
            headers = headers.without(name)
        else:
            headers.get(name)
        _assert_lookups_match_scan(headers)


def test_edits_leave_the_original_headers_unchanged() -> None:
    original = parse_message(INVITE).headers
    before = [(name, original.get_all(name)) for name in NAMES]
    original.prepended("Via", "SIP/2.0/UDP 127.0.0.9:5060;branch=z9hG4bK-new")
    original.replaced("Via", ["x"])
    original.without_first("Route")
    original.appended("Route", "<sip:127.0.0.8;lr>")
    assert [(name, original.get_all(name)) for name in NAMES] == before
    assert original.get_all("Via")[0].endswith("z9hG4bK-hot-1")


def test_rfc3261_7_3_3_compact_forms_are_found_under_their_full_names() -> None:
    data = INVITE.replace(b"Via: ", b"v: ").replace(b"To: ", b"t: ")
    message = parse_message(data)
    assert message.headers.count("Via") == 2
    assert message.to.uri == SipUri(host="127.0.0.1", port=5062, user="bob")
    assert message == parse_message(INVITE)


# --- parsed values: shared by value, never stale ----------------------------------------------


def test_a_derived_message_reads_its_own_changed_via() -> None:
    request = parse_message(INVITE)
    assert isinstance(request, Request)
    assert request.top_via.branch == "z9hG4bK-hot-1"
    new_via = "SIP/2.0/UDP 127.0.0.9:5070;branch=z9hG4bK-fresh"
    derived = request.with_headers(request.headers.prepended("Via", new_via))
    assert derived.top_via.branch == "z9hG4bK-fresh"
    assert [v.branch for v in derived.vias] == ["z9hG4bK-fresh", "z9hG4bK-hot-1", "z9hG4bK-hot-0"]
    assert request.top_via.branch == "z9hG4bK-hot-1"  # the parent is unchanged
    assert derived.from_ is request.from_  # an unchanged value is parsed once


def test_one_memo_serves_many_messages_and_stays_bounded() -> None:
    memo = ParsedValues(limit=4)
    for n in range(20):
        data = INVITE.replace(b"hot-1", f"hot-{n + 10}".encode())
        message = parse_message(data, memo=memo)
        validate(message)
        assert message.top_via.branch == f"z9hG4bK-hot-{n + 10}"
        assert message.call_id == f"hot-{n + 10}@127.0.0.1"
    assert len(memo) <= 5 * 4  # five kinds, each at most `limit`


def test_a_bad_value_raises_every_time_it_is_read() -> None:
    memo = ParsedValues()
    message = parse_message(INVITE.replace(b"CSeq: 1 INVITE", b"CSeq: x INVITE"), memo=memo)
    for _ in range(2):  # errors are not remembered
        try:
            message.cseq  # noqa: B018
        except ParseError as exc:
            assert "CSeq" in exc.reason
        else:
            raise AssertionError("a malformed CSeq parsed")


def test_memo_never_changes_equality_or_the_wire_form() -> None:
    shared = parse_message(INVITE, memo=ParsedValues())
    alone = parse_message(INVITE)
    shared.top_via, shared.to  # noqa: B018 - fill the memo of one of them only
    assert shared == alone and hash(shared.headers) == hash(alone.headers)
    assert serialize(shared) == serialize(alone) == INVITE


def test_sip_uri_text_is_the_same_before_and_after_caching() -> None:
    uri = SipUri(host="127.0.0.1", user="bob", port=5062, params=(("lr", None),))
    assert str(uri) == str(uri) == "sip:bob@127.0.0.1:5062;lr"
    assert uri == SipUri(host="127.0.0.1", user="bob", port=5062, params=(("lr", None),))
    assert str(uri.with_param("transport", "udp")) == "sip:bob@127.0.0.1:5062;lr;transport=udp"


# --- IP literals ---------------------------------------------------------------------------------


@given(st.one_of(st.ip_addresses().map(str), st.text(alphabet="0123456789.:abcdef%", max_size=20)))
def test_ip_literal_shortcut_agrees_with_ipaddress(host: str) -> None:
    try:
        parsed = ipaddress.ip_address(host)
    except ValueError:
        assert ip_version(host) is None
        return
    assert ip_version(host) == parsed.version
    assert canonical_ip(host) == parsed.compressed


def test_ip_literal_shortcut_rejects_what_ipaddress_rejects() -> None:
    for host in ("127.0.0.01", "256.1.1.1", "1.2.3", "1.2.3.4.5", "\u0661.2.3.4", "example.com", ""):
        assert ip_version(host) is None, host


# --- the asyncio side ------------------------------------------------------------------------------


def test_udp_endpoint_handles_every_queued_datagram_in_order() -> None:
    async def scenario() -> list[str]:
        seen: list[str] = []
        endpoint = await UdpTransport.open(
            "127.0.0.1", 0, lambda message, source: seen.append(message.call_id)
        )
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                sender.bind(("127.0.0.1", 0))
                target = (endpoint.local.host, endpoint.local.port)
                for n in range(50):  # more than one batch, sent before the loop reads any
                    sender.sendto(INVITE.replace(b"hot-1@", f"q{n}@".encode()), target)
                for _ in range(200):
                    if len(seen) == 50:
                        break
                    await asyncio.sleep(0.01)
        finally:
            await endpoint.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen == [f"q{n}@127.0.0.1" for n in range(50)]


def test_stack_timer_fires_for_a_deadline_later_than_the_armed_one() -> None:
    """The stack keeps an armed loop timer when the next deadline moves later; the early
    wake-up must still lead to the later deadline being served."""

    async def scenario() -> list[float]:
        fired: list[float] = []

        class Core:
            deadlines = [0.0, 0.0]

            def handle_event(self, event: object, now: float) -> None:
                return None

            def get_timer(self) -> float | None:
                return self.deadlines[0] or None

            def handle_timer(self, now: float) -> None:
                if self.deadlines[0] and now >= self.deadlines[0]:
                    fired.append(now)
                    self.deadlines[0] = 0.0

        loop = asyncio.get_running_loop()
        core = Core()
        stack = SipStack(lambda event: None, core=core)
        core.deadlines[0] = loop.time() + 0.05
        stack._rearm()  # armed for +0.05
        core.deadlines[0] = loop.time() + 0.15  # the deadline moved later
        stack._rearm()  # the earlier timer is kept
        await asyncio.sleep(0.4)
        await stack.close()
        return fired

    fired = asyncio.run(scenario())
    assert len(fired) == 1
