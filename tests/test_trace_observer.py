"""The stack's MessageObserver hook (ims.sip.stack): every message in and out, wall-clock
time, retransmissions included, and an observer's failure never breaks the stack."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import pytest

from ims.sip.address import Address
from ims.sip.dialog import create_initial_request
from ims.sip.ids import IdSource
from ims.sip.message import Message, Request, Response, make_response
from ims.sip.stack import Direction, SipStack, TuEvent
from ims.sip.transaction import RequestReceived, TimerSettings
from ims.sip.uri import parse_uri

T = TypeVar("T")
IDS = IdSource()
BILL = parse_uri("sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org")
DAVE = parse_uri("sip:+15550100002@ims.mnc002.mcc001.3gppnetwork.org")


def run(test: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(test(), 30))


def options() -> Request:
    return create_initial_request("OPTIONS", DAVE, from_=BILL, to=DAVE, ids=IDS)


@dataclass(frozen=True)
class Seen:
    direction: Direction
    message: Message
    local: Address
    remote: Address
    now: float


class Recording:
    def __init__(self) -> None:
        self.seen: list[Seen] = []

    def on_message(self, direction: Direction, message: Message, local: Address,
                   remote: Address, now: float) -> None:
        self.seen.append(Seen(direction, message, local, remote, now))


class Failing:
    calls = 0

    def on_message(self, direction: Direction, message: Message, local: Address,
                   remote: Address, now: float) -> None:
        self.calls += 1
        raise RuntimeError("observer bug")


def answer_200(stack_box: list[SipStack]) -> Callable[[TuEvent], None]:
    def handler(event: TuEvent) -> None:
        if isinstance(event, RequestReceived):
            stack_box[0].respond(event.key, make_response(event.request, 200, to_tag=IDS.tag()))
    return handler


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_observer_sees_options_round_trip_in_and_out(transport: str) -> None:
    async def main() -> None:
        client_seen, server_seen = Recording(), Recording()
        box: list[SipStack] = []
        server = SipStack(answer_200(box), observer=server_seen)
        box.append(server)
        client = SipStack(lambda event: None, observer=client_seen)
        client_end = (await client.listen(transport, "127.0.0.1")).local
        server_end = (await server.listen(transport, "127.0.0.1")).local
        before = time.time()
        response = await client.request(options(), server_end)
        assert response.status_code == 200
        await asyncio.sleep(0.05)  # the 200's "out" record on TCP follows its write
        after = time.time()

        assert [(s.direction, type(s.message)) for s in client_seen.seen] == [
            ("out", Request), ("in", Response)]
        assert [(s.direction, type(s.message)) for s in server_seen.seen] == [
            ("in", Request), ("out", Response)]
        out, back = client_seen.seen
        assert out.local == client_end and out.remote == server_end
        assert back.local == client_end and back.remote == server_end
        got, answered = server_seen.seen
        assert got.local == server_end and answered.local == server_end
        if transport == "UDP":  # over TCP the server sees the connection's ephemeral port
            assert got.remote == client_end and answered.remote == client_end
        # The request seen going out is the one on the wire: its Via sent-by is filled.
        assert out.message.top_via.port == client_end.port
        assert got.message.call_id == out.message.call_id
        # Wall-clock time (time.time()), not the loop's clock.
        for s in client_seen.seen + server_seen.seen:
            assert before - 1 <= s.now <= after + 1
        await client.close()
        await server.close()

    run(main)


def test_observer_failure_is_counted_and_never_breaks_the_stack() -> None:
    async def main() -> None:
        failing = Failing()
        box: list[SipStack] = []
        server = SipStack(answer_200(box), observer=failing)
        box.append(server)
        client = SipStack(lambda event: None, observer=failing)
        await client.listen("UDP", "127.0.0.1")
        server_end = (await server.listen("UDP", "127.0.0.1")).local
        for _ in range(2):
            response = await client.request(options(), server_end)
            assert response.status_code == 200
        await asyncio.sleep(0.05)
        assert client.stats.observer_errors == 4  # request out, response in, twice
        assert server.stats.observer_errors == 4
        assert failing.calls == 8
        await client.close()
        await server.close()

    run(main)


def test_rfc3261_17_1_2_2_retransmissions_are_observed() -> None:
    async def main() -> None:
        seen = Recording()
        timers = TimerSettings(t1=0.01, t2=0.04, t4=0.05, timer_d=0.0)
        client = SipStack(lambda event: None, timers=timers, observer=seen)
        await client.listen("UDP", "127.0.0.1")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            destination = Address("UDP", "127.0.0.1", silent.getsockname()[1])
            response = await client.request(options(), destination)
        assert response.status_code == 408
        sent = [s for s in seen.seen if s.direction == "out"]
        # Timer E retransmits the same request until Timer F: each copy is observed.
        assert len(sent) >= 4
        assert len({s.message.top_via.branch for s in sent}) == 1
        assert all(s.remote == destination for s in sent)
        await client.close()

    run(main)


def test_no_observer_is_the_default() -> None:
    async def main() -> None:
        box: list[SipStack] = []
        server = SipStack(answer_200(box))
        box.append(server)
        client = SipStack(lambda event: None)
        await client.listen("UDP", "127.0.0.1")
        server_end = (await server.listen("UDP", "127.0.0.1")).local
        assert (await client.request(options(), server_end)).status_code == 200
        assert client.stats.observer_errors == 0
        await client.close()
        await server.close()

    run(main)
