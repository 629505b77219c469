"""The asyncio stack (ims.sip.stack): two stacks talking over loopback in real time."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from ims.sip.address import Address
from ims.sip.dialog import SENT_BY_PLACEHOLDER, Dialog, create_initial_request
from ims.sip.ids import IdSource
from ims.sip.message import Request, Response, make_response
from ims.sip.stack import TIMEOUT_REASON, SipStack, TuEvent
from ims.sip.transaction import (
    AckReceived,
    RequestReceived,
    ResponseReceived,
    TimerSettings,
    TransactionTerminated,
)
from ims.sip.uri import parse_uri

T = TypeVar("T")
WAIT = 5.0
IDS = IdSource()
BILL = parse_uri("sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org")
DAVE = parse_uri("sip:+15550100002@ims.mnc002.mcc001.3gppnetwork.org")


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


NO_IPV6 = pytest.mark.skipif(
    not _has_ipv6_loopback(), reason="this host cannot bind the IPv6 loopback ::1"
)
ENDPOINTS = [
    pytest.param("UDP", "127.0.0.1", id="udp-ipv4"),
    pytest.param("TCP", "127.0.0.1", id="tcp-ipv4"),
    pytest.param("UDP", "::1", id="udp-ipv6", marks=NO_IPV6),
    pytest.param("TCP", "::1", id="tcp-ipv6", marks=NO_IPV6),
]


def run(test: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(test(), 30))


def options() -> Request:
    return create_initial_request("OPTIONS", DAVE, from_=BILL, to=DAVE, ids=IDS)


def invite(contact: Address) -> Request:
    return create_initial_request(
        "INVITE",
        DAVE,
        from_=BILL,
        to=DAVE,
        ids=IDS,
        contact=parse_uri(f"sip:bill@{contact.hostport}"),
        body=b"v=0\r\n",
        content_type="application/sdp",
    )


class Uas:
    """A TU answering OPTIONS 200 and INVITE 180 then 200, recording every event."""

    def __init__(self) -> None:
        self.stack: SipStack | None = None
        self.events: list[TuEvent] = []
        self.acked = asyncio.Event()

    def __call__(self, event: TuEvent) -> None:
        self.events.append(event)
        assert self.stack is not None
        if isinstance(event, RequestReceived):
            request = event.request
            tag = IDS.tag()
            if request.method == "INVITE":
                self.stack.respond(event.key, make_response(request, 180, to_tag=tag))
                contact = [("Contact", f"<sip:dave@{event.source.hostport}>")]
                self.stack.respond(
                    event.key, make_response(request, 200, to_tag=tag, extra=contact)
                )
            else:
                self.stack.respond(event.key, make_response(request, 200, to_tag=tag))
        elif isinstance(event, AckReceived):
            self.acked.set()


async def pair(
    transport: str, host: str, timers: TimerSettings | None = None
) -> tuple[SipStack, SipStack, Uas, Address]:
    uas = Uas()
    server = SipStack(uas, timers=timers)
    uas.stack = server
    client = SipStack(lambda event: None, timers=timers)
    await client.listen(transport, host)
    listening = await server.listen(transport, host)
    return client, server, uas, listening.local


@pytest.mark.parametrize(("transport", "host"), ENDPOINTS)
def test_options_round_trip(transport: str, host: str) -> None:
    async def main() -> None:
        client, server, uas, destination = await pair(transport, host)
        response = await client.request(options(), destination)
        assert response.status_code == 200
        (received,) = [e for e in uas.events if isinstance(e, RequestReceived)]
        # RFC 3261 section 18.1.1: the placeholder sent-by became the sending endpoint.
        local = client.transports[0].local
        via = received.request.top_via
        assert via.host.strip("[]") == local.host and via.port == local.port
        assert via.transport == transport and via.host != SENT_BY_PLACEHOLDER
        await client.close()
        await server.close()

    run(main)


@pytest.mark.parametrize(("transport", "host"), ENDPOINTS[:2])
def test_invite_180_200_then_ack_for_2xx(transport: str, host: str) -> None:
    async def main() -> None:
        client, server, uas, destination = await pair(transport, host)
        request = invite(client.transports[0].local)
        provisionals: list[Response] = []
        response = await client.request(request, destination, on_provisional=provisionals.append)
        assert [r.status_code for r in provisionals] == [180]
        assert response.status_code == 200
        # RFC 3261 section 13.2.2.4: the UAC core sends the ACK for a 2xx, outside the
        # transaction (17.1.1.3), with a new branch.
        ack = Dialog.from_uac(request, response).create_ack(request, ids=IDS)
        client.send_stateless(ack, destination)
        await asyncio.wait_for(uas.acked.wait(), WAIT)
        (acked,) = [e for e in uas.events if isinstance(e, AckReceived)]
        assert acked.request.cseq.number == request.cseq.number
        assert acked.request.top_via.branch != request.top_via.branch
        await client.close()
        await server.close()

    run(main)


def test_rfc3261_8_1_3_1_timeout_yields_408_after_retransmissions() -> None:
    async def main() -> None:
        timers = TimerSettings(t1=0.01, t2=0.04, t4=0.05, timer_d=0.0)
        client = SipStack(lambda event: None, timers=timers)
        await client.listen("UDP", "127.0.0.1")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            silent.setblocking(False)
            destination = Address("UDP", "127.0.0.1", silent.getsockname()[1])
            loop = asyncio.get_running_loop()
            started = loop.time()
            response = await client.request(options(), destination)
            elapsed = loop.time() - started
            copies = []
            while True:
                try:
                    copies.append(silent.recv(65535))
                except BlockingIOError:
                    break
        assert response.status_code == 408 and response.reason == TIMEOUT_REASON
        # Timer F = 64*T1 = 0.64 s; Timer E retransmitted meanwhile (17.1.2.2).
        assert 0.6 <= elapsed < 5.0
        assert len(copies) >= 4 and len(set(copies)) == 1
        await client.close()

    run(main)


def test_rfc3261_8_1_3_1_tcp_connect_failure_yields_503() -> None:
    async def main() -> None:
        client = SipStack(lambda event: None)
        await client.listen("TCP", "127.0.0.1")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
        response = await client.request(options(), Address("TCP", "127.0.0.1", port))
        assert response.status_code == 503
        assert "cannot connect" in response.reason
        assert client.stats.send_failures == 1
        await client.close()

    run(main)


def test_no_transport_for_the_destination_yields_503() -> None:
    async def main() -> None:
        client = SipStack(lambda event: None)
        await client.listen("UDP", "127.0.0.1")
        response = await client.request(options(), Address("TCP", "127.0.0.1", 5060))
        assert response.status_code == 503 and "no transport" in response.reason
        await client.close()

    run(main)


def test_async_handler_and_events_without_a_waiter() -> None:
    async def main() -> None:
        server_events: list[TuEvent] = []
        client_events: asyncio.Queue[TuEvent] = asyncio.Queue()
        server: SipStack | None = None

        async def answer_later(event: TuEvent) -> None:
            server_events.append(event)
            if isinstance(event, RequestReceived):
                await asyncio.sleep(0.01)
                assert server is not None
                server.respond(event.key, make_response(event.request, 486, to_tag="x"))

        server = SipStack(answer_later)
        listening = await server.listen("UDP", "127.0.0.1")
        client = SipStack(client_events.put_nowait)
        await client.listen("UDP", "127.0.0.1")
        key = client.send_request(options(), listening.local)
        event = await asyncio.wait_for(client_events.get(), WAIT)
        assert isinstance(event, ResponseReceived) and event.key == key
        assert event.response.status_code == 486
        await client.close()
        await server.close()

    run(main)


def test_handler_failure_does_not_stop_the_stack() -> None:
    async def main() -> None:
        calls = 0
        server: SipStack | None = None

        def flaky(event: TuEvent) -> None:
            nonlocal calls
            if not isinstance(event, RequestReceived):
                return
            calls += 1
            if calls == 1:
                raise RuntimeError("TU bug")
            assert server is not None
            server.respond(event.key, make_response(event.request, 200, to_tag="y"))

        timers = TimerSettings(t1=0.01, t2=0.04, t4=0.05, timer_d=0.0)
        server = SipStack(flaky, timers=timers)
        listening = await server.listen("UDP", "127.0.0.1")
        client = SipStack(lambda event: None, timers=timers)
        await client.listen("UDP", "127.0.0.1")
        first = await client.request(options(), listening.local)
        # The first request's server transaction never got an answer: its retransmissions are
        # absorbed (17.2.2), the client times out; a new request is served normally.
        assert first.status_code == 408
        second = await client.request(options(), listening.local)
        assert second.status_code == 200
        assert server.stats.handler_errors == 1
        await client.close()
        await server.close()

    run(main)


def test_server_transactions_end_and_the_timer_is_rearmed() -> None:
    async def main() -> None:
        timers = TimerSettings(t1=0.01, t2=0.04, t4=0.05, timer_d=0.0)
        client, server, uas, destination = await pair("UDP", "127.0.0.1", timers)
        response = await client.request(options(), destination)
        assert response.status_code == 200
        for _ in range(100):  # Timer J = 64*T1 = 0.64 s, Timer K = T4; bounded wait
            if len(server.layer) == 0 and len(client.layer) == 0:
                break
            await asyncio.sleep(0.02)
        assert len(server.layer) == 0 and len(client.layer) == 0
        assert any(isinstance(e, TransactionTerminated) for e in uas.events)
        await client.close()
        await server.close()

    run(main)
