"""A stock pjsua2 UE sends an INVITE with a custom header through our stateful proxy to our
UAS; the call is confirmed and ended (issue 2, item 4). pjsua2 runs as a subprocess (GPL,
test-only; see README.md here)."""

from __future__ import annotations

import asyncio

import pytest

from ims.sip.address import Address
from ims.sip.fixed_route_proxy import serve
from ims.sip.uri import SipUri
from ims.sip.useragent import IncomingCall, UserAgent
from tests.interop.pjsua2_runner import UeArgs, free_ports, pjsua2_skip_reason, run_ue

pytestmark = pytest.mark.interop

# Media stays off the wire (a=inactive on loopback): the test is about signalling.
ANSWER_SDP = (
    b"v=0\r\no=dave 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=inactive\r\n"
)


def test_pjsua2_invite_with_custom_header_through_proxy_to_our_uas() -> None:
    reason = pjsua2_skip_reason()
    if reason is not None:
        pytest.skip(reason)

    async def scenario() -> None:
        proxy_port, ue_port = free_ports(2)
        uas = UserAgent(SipUri(host="127.0.0.1", user="dave"))
        await uas.start()
        assert uas.contact is not None and uas.contact.port is not None
        received: list[IncomingCall] = []

        async def answer(incoming: IncomingCall) -> None:
            received.append(incoming)
            incoming.ring()
            await incoming.accept(ANSWER_SDP, "application/sdp")

        uas.on_incoming = answer
        stop, ready = asyncio.Event(), asyncio.Event()
        proxy = asyncio.create_task(
            serve(
                Address("UDP", "127.0.0.1", proxy_port),
                Address("UDP", "127.0.0.1", uas.contact.port),
                ready=ready,
                stop=stop,
            )
        )
        try:
            await asyncio.wait_for(ready.wait(), 5)
            args = UeArgs(
                local_port=ue_port,
                call=f"sip:dave@127.0.0.1:{uas.contact.port}",
                proxy=f"sip:127.0.0.1:{proxy_port};lr",
                headers=("X-Game-Session: lobby-42",),
                hangup_after=0.5,
                timeout=15,
            )
            run = await asyncio.to_thread(run_ue, args)
            assert run.ok, run.describe()
            assert run.first("confirmed") is not None
            assert len(received) == 1
            invite = received[0].request
            assert invite.headers.get("X-Game-Session") == "lobby-42"
            # The INVITE came through the proxy: its Via on top, its Record-Route present.
            assert invite.top_via.port == proxy_port
            assert f"127.0.0.1:{proxy_port};lr" in (invite.headers.get("Record-Route") or "")
            call = next(iter(uas.calls.values()), None)
            if call is not None:  # the BYE may still be on its way
                await asyncio.wait_for(call.ended.wait(), 5)
            assert not uas.calls
            disconnected = run.first("disconnected")
            assert disconnected["by_us"] is True
        finally:
            stop.set()
            await proxy
            await uas.close()

    asyncio.run(scenario())
