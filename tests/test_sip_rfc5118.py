"""RFC 5118 torture messages for IPv6: each message gets what the RFC says an element does with
it (tests/data/rfc5118_expected.toml), its IPv6 references are read as the RFC reads them, and a
proxy on [::1] forwards the valid ones and answers the invalid one with 400."""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ims.sdp.description import parse_sdp
from ims.sip.address import Address, address_of_uri
from ims.sip.checks import Reject, Valid, check_bytes, error_response_for
from ims.sip.errors import ParseError
from ims.sip.message import Headers, Request, Response, make_response, parse_message, serialize
from ims.sip.transaction import response_destination
from ims.sip.transport import add_received
from ims.sip.uri import SipUri

DATA = Path(__file__).parent / "data"
VECTORS = DATA / "rfc5118"
EXPECTED: dict[str, dict[str, object]] = tomllib.loads(
    (DATA / "rfc5118_expected.toml").read_text(encoding="utf-8")
)
MAIN = Path(__file__).parent.parent

def _ids() -> list[str]:
    return sorted(EXPECTED)


def _wire(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def _request(name: str) -> Request:
    message = parse_message(_wire(name))
    assert isinstance(message, Request)
    return message


def _sip_uri(value: object) -> SipUri:
    assert isinstance(value, SipUri)
    return value


def _ip_of(uri: object) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """Where a request to `uri` goes, as an address value (text forms may differ)."""
    address = address_of_uri(_sip_uri(uri))
    return ipaddress.ip_address(address.host), address.port


# --- the files --------------------------------------------------------------------------------


def test_every_vector_file_has_an_expectation() -> None:
    files = {p.name for p in VECTORS.glob("*.sip")}
    assert files == set(EXPECTED)
    assert len(files) == 12  # Appendix A's archive: sections 4.1 .. 4.10, two each for 4.5, 4.10
    sections = {str(e["section"]) for e in EXPECTED.values()}
    assert sections == {f"4.{n}" for n in range(1, 11)}


@pytest.mark.parametrize("name", _ids())
def test_rfc5118_vectors_are_unaltered(name: str) -> None:
    data = _wire(name)
    assert len(data) == EXPECTED[name]["size"]
    assert hashlib.sha256(data).hexdigest() == EXPECTED[name]["sha256"]


@pytest.mark.parametrize("name", _ids())
def test_rfc3261_7_vectors_are_in_crlf_wire_form(name: str) -> None:
    data = _wire(name)
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, "the header section ends with an empty line"
    assert b"\n" not in data.replace(b"\r\n", b""), "no bare LF"
    assert b"\r" not in data.replace(b"\r\n", b""), "no bare CR"
    length = re.search(rb"\r\nContent-Length: ([0-9]+)\r\n", head + b"\r\n")
    assert length is not None and int(length.group(1)) == len(body)


@pytest.mark.parametrize("name", _ids())
def test_wire_form_differs_from_the_archive_only_as_the_expected_file_says(name: str) -> None:
    """Undo the three documented steps and the archive message comes back, hash for hash."""
    expected = EXPECTED[name]
    archive = _wire(name).replace(b"\r\n", b"\n")
    if expected["section"] == "4.10":
        assert archive.endswith(b"\n\n")
        archive = archive[:-1]  # the archive's 4.10 files end after Content-Length
    printed = expected.get("archive_content_length")
    if printed is not None:
        length = b"Content-Length: %d" % int(str(printed))
        archive = re.sub(rb"Content-Length: [0-9]+", length, archive)
    assert len(archive) == expected["archive_size"]
    assert hashlib.sha256(archive).hexdigest() == expected["archive_sha256"]


@pytest.mark.parametrize("name", [n for n in _ids() if "archive_content_length" in EXPECTED[n]])
def test_rfc3261_18_3_the_rfcs_printed_content_lengths_would_break_the_sdp_messages(
    name: str,
) -> None:
    """Why the wire files carry the real body length: with the RFC's printed value a datagram
    body shorter than Content-Length is refused (400) and a longer one is cut (18.3)."""
    printed = int(str(EXPECTED[name]["archive_content_length"]))
    data = re.sub(rb"Content-Length: [0-9]+", b"Content-Length: %d" % printed, _wire(name))
    body_length = len(_request(name).body)
    verdict = check_bytes(data)
    if printed > body_length:
        assert isinstance(verdict, Reject) and verdict.status_code == 400
    else:
        assert isinstance(verdict, Valid)
        assert len(parse_message(data).body) == printed < body_length


# --- verdicts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", (_ids()))
def test_rfc5118_verdict(name: str) -> None:
    expected = EXPECTED[name]
    verdict = check_bytes(_wire(name))
    check = str(expected["check"])
    if check == "valid":
        assert isinstance(verdict, Valid), f"{expected['section']}: {verdict}"
    else:
        assert isinstance(verdict, Reject), f"{expected['section']}: {verdict}"
        assert verdict.status_code == int(check.split()[0]) == expected["status"]


@pytest.mark.parametrize("name", ([n for n in _ids() if EXPECTED[n]["verdict"] == "valid"]))
def test_rfc5118_valid_messages_roundtrip_byte_for_byte(name: str) -> None:
    message = parse_message(_wire(name))
    assert serialize(message) == _wire(name)
    assert parse_message(serialize(message)) == message


def test_sip_check_cli_prints_the_verdict_per_file() -> None:
    names = _ids()
    result = subprocess.run(
        [sys.executable, "-m", "ims", "sip", "check", *(str(VECTORS / n) for n in names)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=MAIN,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == len(names), result.stderr
    for name, line in zip(names, lines, strict=True):
        path, _, verdict = line.partition("\t")
        assert Path(path).name == name
        check = str(EXPECTED[name]["check"])
        if check == "valid":
            assert verdict == "valid"
        else:
            assert verdict.startswith(check), verdict
    assert result.returncode == 1  # 4.2 is invalid by design


# --- what each section's addresses mean -------------------------------------------------------


def test_rfc5118_4_1_ipv6_reference_in_request_uri_via_and_contact() -> None:
    request = _request("4.1-ipv6-good.sip")
    uri = _sip_uri(request.uri)
    assert (uri.host, uri.port) == ("[2001:db8::10]", None)
    assert address_of_uri(uri) == Address("UDP", "2001:db8::10", 5060)
    assert request.top_via.sent_by == ("[2001:db8::9:1]", None)
    (contact,) = request.name_addrs("Contact")
    assert _sip_uri(contact.uri).host == "[2001:db8::1]"


def test_rfc5118_4_2_unbracketed_ipv6_request_uri_is_answered_400() -> None:
    data = _wire("4.2-ipv6-bad.sip")
    with pytest.raises(ParseError) as caught:
        parse_message(data)
    assert caught.value.status_code == 400
    answer = error_response_for(data, caught.value)
    assert answer is not None and answer.status_code == 400
    assert answer.headers.get("Via") == "SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111"
    assert answer.headers.get("CSeq") == "98176 REGISTER"


def test_rfc5118_4_2_reason_phrase_names_the_missing_brackets() -> None:
    verdict = check_bytes(_wire("4.2-ipv6-bad.sip"))
    assert isinstance(verdict, Reject)
    assert "'[' ']'" in verdict.reason and "2001:db8::10" in verdict.reason


def test_rfc5118_4_3_a_port_inside_the_brackets_is_part_of_the_address() -> None:
    uri = _sip_uri(_request("4.3-port-ambiguous.sip").uri)
    assert (uri.host, uri.port) == ("[2001:db8::10:5070]", None)
    # The RFC's reading: the address 2001:db8::10:5070 at the default port, not port 5070.
    assert address_of_uri(uri) == Address("UDP", "2001:db8::10:5070", 5060)
    unambiguous = _sip_uri(_request("4.4-port-unambiguous.sip").uri)
    assert not uri.equivalent(unambiguous)


def test_rfc5118_4_4_a_port_after_the_closing_bracket() -> None:
    uri = _sip_uri(_request("4.4-port-unambiguous.sip").uri)
    assert (uri.host, uri.port) == ("[2001:db8::10]", 5070)
    assert str(uri) == "sip:[2001:db8::10]:5070"
    assert address_of_uri(uri) == Address("UDP", "2001:db8::10", 5070)


def test_rfc5118_4_5_received_with_and_without_brackets_names_the_same_address() -> None:
    with_delim = _request("4.5-via-received-param-with-delim.sip").top_via
    no_delim = _request("4.5-via-received-param-no-delim.sip").top_via
    assert with_delim.received == "[2001:db8::9:255]"  # kept as written: a proxy forwards it
    assert no_delim.received == "2001:db8::9:255"
    for via in (with_delim, no_delim):
        assert via.sent_by == ("[2001:db8::9:1]", None)
        # RFC 3261 section 18.2.2: responses go to the received address.
        assert response_destination(via) == Address("UDP", "2001:db8::9:255", 5060)


def test_rfc5118_4_5_received_is_stamped_without_brackets() -> None:
    request = _request("4.5-via-received-param-no-delim.sip")
    stamped = add_received(request, Address("UDP", "::1", 40000))
    assert stamped.top_via.received == "::1"
    assert "received=::1" in stamped.headers.get_all("Via")[0]


def test_rfc5118_4_6_sdp_carries_ipv6_addresses_without_brackets() -> None:
    request = _request("4.6-ipv6-in-sdp.sip")
    assert _sip_uri(request.uri).host == "[2001:db8::10]"
    sdp = parse_sdp(request.body)
    assert (sdp.origin.addrtype, sdp.origin.unicast_address) == ("IP6", "2001:db8::20")
    assert sdp.connection is not None
    assert (sdp.connection.addrtype, sdp.connection.address) == ("IP6", "2001:db8::20")
    assert [media.m_line() for media in sdp.media] == [
        "audio 6000 RTP/AVP 2",
        "video 6024 RTP/AVP 107",
    ]


def test_rfc5118_4_7_via_list_mixes_ipv6_references_and_ipv4() -> None:
    vias = _request("4.7-mult-ip-in-header.sip").vias
    assert [(v.transport, v.host, v.port) for v in vias] == [
        ("UDP", "[2001:db8::9:1]", 6050),
        ("UDP", "192.0.2.1", None),
        ("TCP", "[2001:db8::9:255]", None),
    ]
    assert vias[2].received == "192.0.2.200"
    assert response_destination(vias[0]) == Address("UDP", "2001:db8::9:1", 6050)


def test_rfc5118_4_8_each_media_line_has_its_own_address_family() -> None:
    sdp = parse_sdp(_request("4.8-mult-ip-in-sdp.sip").body)
    assert sdp.connection is None
    assert sdp.origin.unicast_address == "host.example.com"
    connections = [sdp.connection_for(media) for media in sdp.media]
    assert [(c.addrtype, c.address) for c in connections if c is not None] == [
        ("IP4", "192.0.2.1"),
        ("IP6", "2001:db8::1"),
    ]


def test_rfc5118_4_9_ipv4_mapped_addresses_parse_as_ipv6() -> None:
    request = _request("4.9-ipv4-mapped-ipv6.sip")
    top, second = request.vias
    assert top.sent_by == ("[::ffff:192.0.2.10]", 19823)
    assert second.sent_by == ("[::ffff:192.0.2.2]", None)
    mapped = ipaddress.IPv6Address(top.host[1:-1]).ipv4_mapped
    assert mapped == ipaddress.IPv4Address("192.0.2.10")
    (contact,) = request.name_addrs("Contact")
    assert contact.display_name == '"T. desk phone"'
    assert _sip_uri(contact.uri).host == "[::ffff:192.0.2.2]"
    sdp = parse_sdp(request.body)
    assert sdp.connection is not None
    assert (sdp.connection.addrtype, sdp.connection.address) == ("IP6", "::ffff:192.0.2.2")


def test_rfc5118_4_10_the_correct_reference_with_an_embedded_ipv4_address() -> None:
    request = _request("4.10-ipv6-correct-abnf-2-colons.sip")
    uri = _sip_uri(request.uri)
    assert uri.host == "[2001:db8::192.0.2.1]"
    assert _ip_of(uri) == (ipaddress.IPv6Address("2001:db8::c000:201"), 5060)
    assert _sip_uri(request.to.uri).host == "[2001:db8::192.0.2.1]"


def test_rfc5118_4_10_the_three_colon_reference_is_tolerated_as_the_same_address() -> None:
    correct = _request("4.10-ipv6-correct-abnf-2-colons.sip")
    buggy = _request("4.10-ipv6-bug-abnf-3-colons.sip")
    assert _sip_uri(buggy.uri).host == "[2001:db8:::192.0.2.1]"  # kept as written
    assert _sip_uri(buggy.uri).equivalent(correct.uri)
    assert _sip_uri(buggy.to.uri).equivalent(correct.to.uri)
    assert _ip_of(buggy.uri) == _ip_of(correct.uri)  # where a proxy would send it


# --- over the wire: `ueconnect sip proxy` on [::1] --------------------------------------------

LOOPBACK6 = "::1"
_TIMEOUT = 5.0


@dataclass
class _Wire:
    """The proxy under test, a client socket and the proxy's next hop (a socket of ours)."""

    proxy: subprocess.Popen[bytes]
    proxy_port: int
    client: socket.socket
    next_hop: socket.socket

    def send(self, data: bytes) -> None:
        self.client.sendto(data, (LOOPBACK6, self.proxy_port))


def _udp6() -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK6, 0))
    sock.settimeout(_TIMEOUT)
    return sock


def _free_port() -> int:
    with _udp6() as sock:
        return int(sock.getsockname()[1])


def _for_the_wire(name: str, proxy_port: int) -> bytes:
    """The vector as sent to the proxy, changed only where sending it as is cannot work:

    - the RFC reuses one branch (and Call-ID) across sections, so the top Via's branch gets a
      suffix that keeps each message its own transaction (RFC 3261 section 17.2.3);
    - `rport` on the top Via brings the answers back to our socket (RFC 3581 section 4): the
      sent-by addresses are the RFC's documentation addresses and ports;
    - a request inside a dialog (To tag) would go to its Request-URI, a documentation address
      that must never be contacted: it names the proxy instead, which sends it to the next hop.
    """
    data = _wire(name)
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    top = next(i for i, line in enumerate(lines) if line.startswith(b"Via: "))
    suffix = name.removesuffix(".sip").encode()  # token characters only
    lines[top] = re.sub(rb"(branch=[^;]+)", rb"\1." + suffix, lines[top]) + b";rport"
    to = next(line for line in lines if line.startswith(b"To: "))
    if b";tag=" in to:
        method, _, version = lines[0].split(b" ")
        lines[0] = b"%s sip:[::1]:%d %s" % (method, proxy_port, version)
    return b"\r\n".join(lines) + sep + body


def _receive(
    sock: socket.socket,
    want: str,
    accept: type[Request] | type[Response],
    timeout: float = _TIMEOUT,
) -> tuple[Request | Response, tuple[str, int]]:
    """The next message of kind `accept` whose Via carries branch `want` (others skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            data, peer = sock.recvfrom(65535)
        except TimeoutError:
            break
        message = parse_message(data)
        if not isinstance(message, accept):
            continue
        if any(via.branch == want for via in message.vias):
            if isinstance(message, Response) and message.status_code < 200:
                continue  # 100 Trying to an INVITE
            return message, (peer[0], peer[1])
    raise AssertionError(f"nothing with branch {want} within {timeout} s")


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Wire]:
    try:
        client, next_hop = _udp6(), _udp6()
    except OSError as exc:
        pytest.skip(f"the IPv6 loopback ::1 is not available here: {exc}")
    port = _free_port()
    log = tmp_path_factory.mktemp("rfc5118") / "proxy.log"
    with log.open("wb") as err:
        proxy = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ims",
                "sip",
                "proxy",
                "--listen",
                f"udp:[{LOOPBACK6}]:{port}",
                "--next-hop",
                f"[{LOOPBACK6}]:{next_hop.getsockname()[1]}",
            ],
            cwd=MAIN,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    setup = _Wire(proxy, port, client, next_hop)
    try:
        # Ready when it answers: the invalid 4.2 is answered by the proxy itself (no forwarding).
        probe = _for_the_wire("4.2-ipv6-bad.sip", port)
        deadline = time.monotonic() + 20
        client.settimeout(0.25)
        while True:
            assert proxy.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "the proxy did not answer within 20 s"
            try:
                setup.send(probe)
                client.recvfrom(65535)
                break
            except (TimeoutError, ConnectionRefusedError):
                continue
        client.settimeout(_TIMEOUT)
        yield setup
    finally:
        proxy.terminate()
        try:
            proxy.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait(timeout=5)
        client.close()
        next_hop.close()


def test_rfc5118_4_2_over_the_wire_the_proxy_answers_400_and_forwards_nothing(wire: _Wire) -> None:
    data = _for_the_wire("4.2-ipv6-bad.sip", wire.proxy_port)
    branch = re.search(rb"branch=([^;\r]+)", data)
    assert branch is not None
    want = branch.group(1).decode()
    wire.send(data)
    answer, _ = _receive(wire.client, want, Response)
    assert isinstance(answer, Response)
    assert answer.status_code == 400
    assert "Request-URI" in answer.reason
    with pytest.raises(AssertionError, match="nothing with branch"):
        _receive(wire.next_hop, want, Request, timeout=0.5)


@pytest.mark.parametrize("name", ([n for n in _ids() if EXPECTED[n]["verdict"] == "valid"]))
def test_rfc5118_over_the_wire_valid_messages_are_forwarded(wire: _Wire, name: str) -> None:
    data = _for_the_wire(name, wire.proxy_port)
    sent = parse_message(data)
    assert isinstance(sent, Request)
    want = sent.top_via.branch
    assert want is not None
    wire.send(data)

    forwarded, proxy_address = _receive(wire.next_hop, want, Request)
    assert isinstance(forwarded, Request)
    assert forwarded.method == sent.method
    assert _sip_uri(forwarded.uri).equivalent(sent.uri)
    assert forwarded.body == sent.body
    assert forwarded.header_int("Max-Forwards") == 69  # RFC 3261 section 16.6 step 3
    # Our Via, second now, as we sent it plus what the proxy learnt of us (18.2.1, RFC 3581).
    ours = forwarded.vias[1]
    assert ours.sent_by == sent.top_via.sent_by and ours.branch == want
    assert ours.received is not None
    assert ipaddress.ip_address(ours.received.strip("[]")) == ipaddress.ip_address(LOOPBACK6)
    assert ours.rport == str(wire.client.getsockname()[1])
    assert [v.sent_by for v in forwarded.vias[2:]] == [v.sent_by for v in sent.vias[1:]]

    status = 486 if sent.method == "INVITE" else 200
    reply = make_response(forwarded, status, to_tag="nexthop")
    wire.next_hop.sendto(serialize(reply), proxy_address)

    answer, _ = _receive(wire.client, want, Response)
    assert isinstance(answer, Response)
    assert answer.status_code == status
    assert [v.branch for v in answer.vias] == [want] + [v.branch for v in sent.vias[1:]]
    if sent.method == "INVITE":
        # RFC 3261 section 17.1.1.3: the ACK of a non-2xx final response, hop by hop.
        ack = Request(
            "ACK",
            sent.uri,
            Headers.of(
                ("Via", sent.headers.get_all("Via")[0]),
                ("Max-Forwards", "70"),
                ("From", str(sent.headers.get("From"))),
                ("To", str(answer.headers.get("To"))),
                ("Call-ID", sent.call_id),
                ("CSeq", f"{sent.cseq.number} ACK"),
                ("Content-Length", "0"),
            ),
        )
        wire.send(serialize(ack))
