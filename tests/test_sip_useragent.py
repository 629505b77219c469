"""The asyncio user agent: two UAs on loopback call each other directly."""

from __future__ import annotations

import asyncio

import pytest

from ims.sip.address import Address
from ims.sip.transaction import TimerSettings
from ims.sip.uri import SipUri
from ims.sip.useragent import CallFailed, IncomingCall, UserAgent

FAST = TimerSettings(t1=0.05, t2=0.4, t4=0.5)


async def _pair(transport: str = "UDP") -> tuple[UserAgent, UserAgent]:
    alice = UserAgent(SipUri(host="127.0.0.1", user="alice"), timers=FAST)
    bob = UserAgent(SipUri(host="127.0.0.1", user="bob"), timers=FAST)
    await alice.start(transport=transport)
    await bob.start(transport=transport)
    return alice, bob


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_call_confirmed_and_ended_by_bye(transport: str) -> None:
    async def scenario() -> None:
        alice, bob = await _pair(transport)
        try:
            seen: list[str | None] = []

            async def answer(incoming: IncomingCall) -> None:
                seen.append(incoming.request.headers.get("X-Game"))
                incoming.ring()
                await incoming.accept(b"v=0\r\n", "application/sdp")

            bob.on_incoming = answer
            assert bob.contact is not None
            call = await alice.call(bob.contact, extra=[("X-Game", "lobby-7")], body=b"v=0\r\n", content_type="application/sdp")
            assert seen == ["lobby-7"]
            assert call.remote_body == b"v=0\r\n"
            bob_call = next(iter(bob.calls.values()))
            await asyncio.wait_for(bob_call.acked.wait(), 2)
            response = await call.bye()
            assert response.status_code == 200
            await asyncio.wait_for(bob_call.ended.wait(), 2)
            assert not alice.calls and not bob.calls
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(scenario())


def test_rejected_call_raises_call_failed_with_status() -> None:
    async def scenario() -> None:
        alice, bob = await _pair()
        try:
            bob.on_incoming = lambda incoming: incoming.reject(486, "Busy Here")
            assert bob.contact is not None
            with pytest.raises(CallFailed) as exc:
                await alice.call(bob.contact)
            assert exc.value.status_code == 486 and exc.value.reason == "Busy Here"
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(scenario())


def test_call_to_silent_port_times_out_with_408() -> None:
    async def scenario() -> None:
        alice = UserAgent(SipUri(host="127.0.0.1", user="alice"), timers=TimerSettings(t1=0.01, t2=0.08, t4=0.1))
        await alice.start()
        try:
            # A bound UDP socket that never answers.
            loop = asyncio.get_running_loop()
            sink, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
            port = sink.get_extra_info("sockname")[1]
            with pytest.raises(CallFailed) as exc:
                await alice.call(SipUri(host="127.0.0.1", user="nobody", port=port))
            assert exc.value.status_code == 408
            sink.close()
        finally:
            await alice.close()

    asyncio.run(scenario())


def test_outbound_proxy_address_is_used_for_every_request() -> None:
    async def scenario() -> None:
        alice, bob = await _pair()
        try:
            bob.on_incoming = lambda incoming: incoming.reject(603)
            assert bob.contact is not None
            # The Request-URI names a host that does not exist; the outbound proxy is bob.
            alice.outbound_proxy = Address("UDP", "127.0.0.1", bob.contact.port or 5060)
            with pytest.raises(CallFailed) as exc:
                await alice.call(SipUri(host="bob.invalid", user="bob"))
            assert exc.value.status_code == 603
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(scenario())
