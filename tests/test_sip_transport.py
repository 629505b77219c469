"""asyncio SIP transports (ims.sip.transport) on loopback: RFC 3261 section 18, RFC 3581."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from ims.sip.address import Address
from ims.sip.errors import LocalProtocolError
from ims.sip.framing import FramingLimits
from ims.sip.message import Message, Request, make_response, parse_message
from ims.sip.transport import (
    BindError,
    ConnectError,
    SendError,
    TcpTransport,
    TransportSettings,
    UdpTransport,
    add_received,
)

T = TypeVar("T")
WAIT = 3.0  # seconds any single expected event may take on a loaded CI host


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


HOSTS = [
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param(
        "::1",
        id="ipv6",
        marks=pytest.mark.skipif(
            not _has_ipv6_loopback(), reason="this host cannot bind the IPv6 loopback ::1"
        ),
    ),
]


def request_bytes(
    via: str,
    *,
    method: str = "OPTIONS",
    version: str = "SIP/2.0",
    cseq: str | None = None,
    body: bytes = b"",
    call_id: str = "a84b4c76e66710",
) -> bytes:
    return (
        f"{method} sip:dave@ims.mnc002.mcc001.3gppnetwork.org {version}\r\n"
        f"Via: {via}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org>;tag=1928301774\r\n"
        "To: <sip:dave@ims.mnc002.mcc001.3gppnetwork.org>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq or '1 ' + method}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode() + body


def request_from(
    local: Address, branch: str = "z9hG4bK776asdhds", call_id: str = "a84b4c76e66710"
) -> Request:
    via = f"SIP/2.0/{local.transport} {local.hostport};branch={branch}"
    message = parse_message(request_bytes(via, call_id=call_id))
    assert isinstance(message, Request)
    return message


class Inbox:
    """An on_message callback that queues what arrives."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Message, Address]] = asyncio.Queue()

    def __call__(self, message: Message, source: Address) -> None:
        self.queue.put_nowait((message, source))

    async def get(self) -> tuple[Message, Address]:
        return await asyncio.wait_for(self.queue.get(), WAIT)


def run(test: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(test(), 20))


async def udp_exchange(sock: socket.socket, data: bytes, to: Address) -> bytes:
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    await loop.sock_sendto(sock, data, (to.host, to.port))
    reply, _ = await asyncio.wait_for(loop.sock_recvfrom(sock, 65535), WAIT)
    return reply


async def read_message(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await asyncio.wait_for(reader.readexactly(length), WAIT)


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True once the server closed the connection (FIN, or RST when our bytes were unread)."""
    try:
        return await asyncio.wait_for(reader.read(), WAIT) == b""
    except ConnectionResetError:
        return True


def udp_socket(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


def free_tcp_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# --- add_received: the pure rule -------------------------------------------------------------


def _via_of(request: Request) -> str:
    value = request.headers.get("Via")
    assert value is not None
    return value


def test_rfc3261_18_2_1_received_added_when_sent_by_differs_from_source() -> None:
    request = request_from(Address("UDP", "192.0.2.7", 5060))
    stamped = add_received(request, Address("UDP", "127.0.0.1", 40000))
    assert stamped.top_via.received == "127.0.0.1"
    assert stamped.top_via.rport is None


def test_rfc3261_18_2_1_received_added_when_sent_by_is_a_name() -> None:
    message = parse_message(request_bytes("SIP/2.0/UDP ue.example.invalid;branch=z9hG4bK1"))
    assert isinstance(message, Request)
    stamped = add_received(message, Address("UDP", "127.0.0.1", 5060))
    assert stamped.top_via.received == "127.0.0.1"


def test_rfc3261_18_2_1_no_received_when_sent_by_is_the_source() -> None:
    request = request_from(Address("UDP", "127.0.0.1", 5060))
    assert add_received(request, Address("UDP", "127.0.0.1", 5060)) == request


def test_rfc3581_4_rport_filled_and_received_always_added() -> None:
    via = "SIP/2.0/UDP 127.0.0.1:5060;rport;branch=z9hG4bK1"
    message = parse_message(request_bytes(via))
    assert isinstance(message, Request)
    stamped = add_received(message, Address("UDP", "127.0.0.1", 40001))
    # Section 4: received goes in even when it equals sent-by; rport keeps its place.
    assert _via_of(stamped) == (
        "SIP/2.0/UDP 127.0.0.1:5060;rport=40001;branch=z9hG4bK1;received=127.0.0.1"
    )


def test_rfc3581_4_filled_rport_left_alone() -> None:
    via = "SIP/2.0/UDP 127.0.0.1:5060;rport=7;branch=z9hG4bK1"
    message = parse_message(request_bytes(via))
    assert isinstance(message, Request)
    assert add_received(message, Address("UDP", "127.0.0.1", 40001)).top_via.rport == "7"


def test_rfc5118_ipv6_source_compared_and_received_readable() -> None:
    request = request_from(Address("UDP", "::1", 5060))
    assert add_received(request, Address("UDP", "::1", 5060)) == request
    stamped = add_received(request, Address("UDP", "2001:db8::9", 5060))
    assert stamped.top_via.received == "2001:db8::9"  # RFC 5118 section 4.5: no brackets


def test_only_the_top_via_is_stamped() -> None:
    message = parse_message(
        request_bytes(
            "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1, SIP/2.0/UDP 192.0.2.2;branch=z9hG4bK2"
        )
    )
    assert isinstance(message, Request)
    stamped = add_received(message, Address("UDP", "127.0.0.1", 5060))
    assert [v.received for v in stamped.vias] == ["127.0.0.1", None]


# --- UDP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", HOSTS)
def test_udp_round_trip(host: str) -> None:
    async def main() -> None:
        inbox_a, inbox_b = Inbox(), Inbox()
        a = await UdpTransport.open(host, 0, inbox_a)
        b = await UdpTransport.open(host, 0, inbox_b)
        assert a.local.port != 0 and a.local.transport == "UDP"
        request = request_from(a.local)
        await a.send(request, b.local)
        received, source = await inbox_b.get()
        assert source == a.local  # section 18.2.1: the socket address of the sender
        assert received == request
        assert isinstance(received, Request)
        await b.send(make_response(received, 200), source)
        response, _ = await inbox_a.get()
        assert getattr(response, "status_code", None) == 200
        assert (a.stats.sent, a.stats.received, b.stats.sent, b.stats.received) == (1, 1, 1, 1)
        await a.close()
        await b.close()

    run(main)


def test_udp_delivers_request_with_received_and_rport() -> None:
    async def main() -> None:
        inbox = Inbox()
        server = await UdpTransport.open("127.0.0.1", 0, inbox)
        with udp_socket("127.0.0.1") as sock:
            port = sock.getsockname()[1]
            data = request_bytes("SIP/2.0/UDP ue.example.invalid:5060;rport;branch=z9hG4bK1")
            sock.sendto(data, ("127.0.0.1", server.local.port))
            message, source = await inbox.get()
        assert source == Address("UDP", "127.0.0.1", port)
        assert message.top_via.received == "127.0.0.1"
        assert message.top_via.rport == str(port)
        await server.close()

    run(main)


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (
            request_bytes("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1", cseq="abc OPTIONS"),
            400,
            "CSeq",
        ),
        (
            request_bytes("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1", cseq="1 INVITE"),
            400,
            "CSeq method does not match",
        ),
        (
            request_bytes("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1", version="SIP/7.0"),
            505,
            "",
        ),
    ],
    ids=["bad-cseq", "cseq-method", "version"],
)
def test_udp_malformed_request_is_answered(data: bytes, status: int, reason: str) -> None:
    async def main() -> None:
        inbox = Inbox()
        server = await UdpTransport.open("127.0.0.1", 0, inbox)
        with udp_socket("127.0.0.1") as sock:
            reply = await udp_exchange(sock, data, server.local)
        answer = parse_message(reply)
        assert getattr(answer, "status_code", None) == status
        assert reason in getattr(answer, "reason", "")
        assert answer.call_id == "a84b4c76e66710"  # echoed so the client can match it
        assert server.stats.parse_errors == 1 and server.stats.dropped == 0
        assert server.stats.sent == 1 and server.stats.received == 0
        assert inbox.queue.empty()
        await server.close()

    run(main)


def test_udp_garbage_dropped_and_counted_then_serving_goes_on() -> None:
    async def main() -> None:
        inbox = Inbox()
        server = await UdpTransport.open("127.0.0.1", 0, inbox)
        with udp_socket("127.0.0.1") as sock:
            sock.sendto(b"\x00\x01\x00\x00garbage", ("127.0.0.1", server.local.port))
            # A broken response is never answered (section 18.1.2).
            sock.sendto(b"SIP/2.0 200 OK\r\n\r\n", ("127.0.0.1", server.local.port))
            sock.sendto(b"\r\n\r\n", ("127.0.0.1", server.local.port))  # keep-alive: ignored
            good = request_bytes("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1")
            sock.sendto(good, ("127.0.0.1", server.local.port))
            message, _ = await inbox.get()
        assert message.call_id == "a84b4c76e66710"
        assert server.stats.parse_errors == 2 and server.stats.dropped == 2
        assert server.stats.received == 1 and server.stats.sent == 0
        await server.close()

    run(main)


def test_udp_oversize_datagram_dropped_and_counted() -> None:
    async def main() -> None:
        inbox = Inbox()
        settings = TransportSettings(max_datagram_bytes=600)
        server = await UdpTransport.open("127.0.0.1", 0, inbox, settings=settings)
        via = "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1"
        with udp_socket("127.0.0.1") as sock:
            big = request_bytes(via, body=b"x" * 1000, call_id="big")
            sock.sendto(big, ("127.0.0.1", server.local.port))
            sock.sendto(request_bytes(via), ("127.0.0.1", server.local.port))
            message, _ = await inbox.get()
        assert message.call_id == "a84b4c76e66710"
        assert server.stats.oversize == 1 and server.stats.received == 1
        await server.close()

    run(main)


def test_udp_send_rules() -> None:
    async def main() -> None:
        settings = TransportSettings(max_datagram_bytes=600)
        a = await UdpTransport.open("127.0.0.1", 0, Inbox(), settings=settings)
        request = request_from(a.local)
        with pytest.raises(LocalProtocolError, match="cannot send to tcp"):
            await a.send(request, Address("TCP", "127.0.0.1", 5060))
        with pytest.raises(LocalProtocolError, match="not an IP address"):
            await a.send(request, Address("UDP", "localhost", 5060))
        with pytest.raises(LocalProtocolError, match="IPv6"):
            await a.send(request, Address("UDP", "::1", 5060))
        # RFC 3261 section 18.1.1: too large for UDP, the caller must use TCP.
        with pytest.raises(SendError, match="send it over TCP"):
            await a.send(request.with_body(b"x" * 1000, "text/plain"), a.local)
        await a.close()
        with pytest.raises(SendError, match="closed"):
            await a.send(request, a.local)

    run(main)


def test_handler_failure_does_not_stop_the_endpoint() -> None:
    async def main() -> None:
        inbox = Inbox()
        calls = 0

        def flaky(message: Message, source: Address) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("handler bug")
            inbox(message, source)

        server = await UdpTransport.open("127.0.0.1", 0, flaky)
        client = await UdpTransport.open("127.0.0.1", 0, Inbox())
        await client.send(request_from(client.local, call_id="first"), server.local)
        await client.send(request_from(client.local, call_id="second"), server.local)
        message, _ = await inbox.get()
        assert message.call_id == "second"
        await server.close()
        await client.close()

    run(main)


def test_bind_conflict_is_a_bind_error() -> None:
    async def main() -> None:
        first = await TcpTransport.open("127.0.0.1", 0, Inbox())
        with pytest.raises(BindError, match=f"tcp:127.0.0.1:{first.local.port}"):
            await TcpTransport.open("127.0.0.1", first.local.port, Inbox())
        udp = await UdpTransport.open("127.0.0.1", 0, Inbox())
        with pytest.raises(BindError, match="cannot listen on udp"):
            await UdpTransport.open("127.0.0.1", udp.local.port, Inbox())
        await first.close()
        await udp.close()

    run(main)


# --- TCP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", HOSTS)
def test_tcp_round_trip_reuses_one_connection(host: str) -> None:
    async def main() -> None:
        inbox_a, inbox_b = Inbox(), Inbox()
        a = await TcpTransport.open(host, 0, inbox_a)
        b = await TcpTransport.open(host, 0, inbox_b)
        # Concurrent first sends share one connection attempt.
        await asyncio.gather(
            *(a.send(request_from(a.local, call_id=f"c{i}"), b.local) for i in range(5))
        )
        sources = set()
        for _ in range(5):
            message, source = await inbox_b.get()
            assert isinstance(message, Request)
            sources.add(source)
            # Section 18.2.2: the response goes back on the connection the request came on.
            await b.send(make_response(message, 200), source)
        for _ in range(5):
            response, source = await inbox_a.get()
            assert source == b.local
            assert getattr(response, "status_code", None) == 200
        assert len(sources) == 1
        assert a.connection_count == 1 and b.connection_count == 1
        await a.close()
        await b.close()

    run(main)


def test_tcp_delivers_request_with_received_and_rport() -> None:
    async def main() -> None:
        inbox = Inbox()
        server = await TcpTransport.open("127.0.0.1", 0, inbox)
        _, writer = await asyncio.open_connection("127.0.0.1", server.local.port)
        port = writer.get_extra_info("sockname")[1]
        writer.write(request_bytes("SIP/2.0/TCP ue.example.invalid;rport;branch=z9hG4bK1"))
        message, source = await inbox.get()
        assert source == Address("TCP", "127.0.0.1", port)
        assert message.top_via.received == "127.0.0.1"
        assert message.top_via.rport == str(port)
        writer.close()
        await server.close()

    run(main)


def test_tcp_connect_failure_raises_connect_error() -> None:
    async def main() -> None:
        client = await TcpTransport.open("127.0.0.1", 0, Inbox())
        nobody = Address("TCP", "127.0.0.1", free_tcp_port("127.0.0.1"))
        with pytest.raises(ConnectError, match=f"cannot connect to tcp:127.0.0.1:{nobody.port}"):
            await client.send(request_from(client.local), nobody)
        assert client.connection_count == 0 and client.stats.sent == 0
        await client.close()

    run(main)


def test_tcp_malformed_request_answered_and_connection_kept() -> None:
    async def main() -> None:
        inbox = Inbox()
        server = await TcpTransport.open("127.0.0.1", 0, inbox)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.local.port)
        via = "SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK1"
        writer.write(request_bytes(via, cseq="x OPTIONS"))
        answer = parse_message(await read_message(reader))
        assert getattr(answer, "status_code", None) == 400
        assert "CSeq" in getattr(answer, "reason", "")
        writer.write(request_bytes(via, version="SIP/3.0"))
        answer = parse_message(await read_message(reader))
        assert getattr(answer, "status_code", None) == 505
        # The frame was intact, so the connection still carries messages.
        writer.write(request_bytes(via, call_id="after"))
        message, _ = await inbox.get()
        assert message.call_id == "after"
        assert server.stats.parse_errors == 2 and server.stats.received == 1
        writer.close()
        await server.close()

    run(main)


def test_rfc3261_18_3_tcp_request_without_content_length_answered_then_closed() -> None:
    async def main() -> None:
        server = await TcpTransport.open("127.0.0.1", 0, Inbox())
        reader, writer = await asyncio.open_connection("127.0.0.1", server.local.port)
        data = request_bytes("SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK1")
        writer.write(data.replace(b"Content-Length: 0\r\n", b""))
        answer = parse_message(await read_message(reader))
        assert getattr(answer, "status_code", None) == 400
        assert "Content-Length" in getattr(answer, "reason", "")
        assert await closed_by_peer(reader)  # closed by the server
        assert server.stats.parse_errors == 1
        writer.close()
        await server.close()

    run(main)


async def _still_serving(server: TcpTransport, inbox: Inbox) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", server.local.port)
    writer.write(request_bytes("SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK2", call_id="next"))
    message, _ = await inbox.get()
    assert message.call_id == "next"
    writer.close()


def test_endless_header_block_is_cut_and_the_server_keeps_serving() -> None:
    async def main() -> None:
        inbox = Inbox()
        limits = FramingLimits(max_header_bytes=2048, max_body_bytes=2048)
        server = await TcpTransport.open(
            "127.0.0.1", 0, inbox, settings=TransportSettings(framing=limits)
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", server.local.port)
        writer.write(b"INVITE sip:dave@127.0.0.1 SIP/2.0\r\n")
        try:
            for _ in range(100):  # bounded: 100 * 100 bytes, far beyond the 2048 bound
                writer.write(b"X-Endless: " + b"a" * 87 + b"\r\n")
                await writer.drain()
        except ConnectionError:
            pass  # the server cut us off while we were still writing
        assert await closed_by_peer(reader)
        assert server.stats.oversize == 1
        await _still_serving(server, inbox)
        writer.close()
        await server.close()

    run(main)


def test_huge_content_length_answered_513_and_closed() -> None:
    async def main() -> None:
        inbox = Inbox()
        limits = FramingLimits(max_header_bytes=2048, max_body_bytes=2048)
        server = await TcpTransport.open(
            "127.0.0.1", 0, inbox, settings=TransportSettings(framing=limits)
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", server.local.port)
        data = request_bytes("SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK1")
        writer.write(data.replace(b"Content-Length: 0", b"Content-Length: 1000000000"))
        answer = parse_message(await read_message(reader))
        assert getattr(answer, "status_code", None) == 513
        assert "Content-Length 1000000000 exceeds" in getattr(answer, "reason", "")
        assert await closed_by_peer(reader)
        assert server.stats.oversize == 1
        await _still_serving(server, inbox)
        writer.close()
        await server.close()

    run(main)


def test_tcp_garbage_dropped_counted_and_closed() -> None:
    async def main() -> None:
        inbox = Inbox()
        server = await TcpTransport.open("127.0.0.1", 0, inbox)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.local.port)
        writer.write(b"\x16\x03\x01\x02\x00garbage\r\n\r\n")  # no Content-Length, no Via
        assert await closed_by_peer(reader)
        assert server.stats.parse_errors == 1 and server.stats.dropped == 1
        await _still_serving(server, inbox)
        writer.close()
        await server.close()

    run(main)


def test_rfc5626_3_5_1_ping_answered_with_pong() -> None:
    async def main() -> None:
        server = await TcpTransport.open("127.0.0.1", 0, Inbox())
        reader, writer = await asyncio.open_connection("127.0.0.1", server.local.port)
        writer.write(b"\r\n\r\n")
        assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"\r\n"
        assert server.stats.sent == 0  # keep-alives are not messages
        writer.close()
        await server.close()

    run(main)


def test_idle_connection_is_closed() -> None:
    async def main() -> None:
        inbox = Inbox()
        settings = TransportSettings(idle_timeout=0.1)
        a = await TcpTransport.open("127.0.0.1", 0, Inbox(), settings=settings)
        b = await TcpTransport.open("127.0.0.1", 0, inbox)
        await a.send(request_from(a.local), b.local)
        await inbox.get()
        assert a.connection_count == 1
        for _ in range(50):  # bounded wait, 2.5 s at most
            if a.connection_count == 0 and b.connection_count == 0:
                break
            await asyncio.sleep(0.05)
        assert a.connection_count == 0 and b.connection_count == 0
        # A later send opens a fresh connection.
        await a.send(request_from(a.local, call_id="again"), b.local)
        message, _ = await inbox.get()
        assert message.call_id == "again"
        await a.close()
        await b.close()

    run(main)


def test_connection_limit_refuses_extra_connections() -> None:
    async def main() -> None:
        inbox = Inbox()
        settings = TransportSettings(max_connections=1)
        server = await TcpTransport.open("127.0.0.1", 0, inbox, settings=settings)
        _, w1 = await asyncio.open_connection("127.0.0.1", server.local.port)
        r2, w2 = await asyncio.open_connection("127.0.0.1", server.local.port)
        assert await closed_by_peer(r2)
        assert server.connection_count == 1
        w1.close()
        w2.close()
        await server.close()

    run(main)
