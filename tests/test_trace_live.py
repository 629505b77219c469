"""A real call traced end to end: Bill's UA, a stateful proxy ("Alpha P-CSCF") and Dave's UA,
each stack with its own TraceRecorder on one shared file, over UDP and TCP on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ims.sip.address import Address
from ims.sip.dialog import Dialog, create_initial_request
from ims.sip.fixed_route_proxy import FixedRoute, resolve_literal
from ims.sip.ids import IdSource
from ims.sip.message import make_response
from ims.sip.proxy import ProxyConfig, ProxyCore
from ims.sip.stack import SipStack, TuEvent
from ims.sip.transaction import RequestReceived, TransactionLayer
from ims.sip.uri import SipUri, parse_uri
from ims.trace import TraceRecorder, build_ladder, calls, read_trace, render_ladder

IDS = IdSource()


async def traced_call(transport: str, path: Path) -> None:
    t = transport.lower()
    with TraceRecorder(path, "ue", "Alpha") as bill_trace, \
            TraceRecorder(path, "pcscf", "Alpha") as proxy_trace, \
            TraceRecorder(path, "ue", "Beta") as dave_trace:
        dave_end: list[Address] = []
        dave_stack: list[SipStack] = []

        def dave(event: TuEvent) -> None:
            if isinstance(event, RequestReceived):
                request, tag = event.request, IDS.tag()
                if request.method == "INVITE":
                    dave_stack[0].respond(event.key, make_response(request, 180, to_tag=tag))
                    contact = ("Contact", f"<sip:dave@{dave_end[0].hostport};transport={t}>")
                    dave_stack[0].respond(
                        event.key, make_response(request, 200, to_tag=tag, extra=[contact]))
                else:
                    dave_stack[0].respond(event.key, make_response(request, 200, to_tag=tag))

        uas = SipStack(dave, observer=dave_trace)
        dave_stack.append(uas)
        dave_end.append((await uas.listen(transport, "127.0.0.1")).local)

        layer = TransactionLayer(check_messages=False)
        proxy = SipStack(lambda event: None, layer=layer, observer=proxy_trace)
        proxy_end = (await proxy.listen(transport, "127.0.0.1")).local
        config = ProxyConfig(uri=SipUri(host="127.0.0.1", port=proxy_end.port))
        proxy.core = ProxyCore(layer, config, FixedRoute(dave_end[0], (config.uri,)),
                               resolve_literal)

        uac = SipStack(lambda event: None, observer=bill_trace)
        bill_end = (await uac.listen(transport, "127.0.0.1")).local
        invite = create_initial_request(
            "INVITE", parse_uri(f"sip:dave@127.0.0.1:{proxy_end.port};transport={t}"),
            from_=parse_uri("sip:bill@127.0.0.1"), to=parse_uri("sip:dave@127.0.0.1"), ids=IDS,
            contact=parse_uri(f"sip:bill@{bill_end.hostport};transport={t}"))
        answer = await uac.request(invite, proxy_end)
        assert answer.status_code == 200
        dialog = Dialog.from_uac(invite, answer)
        uac.send_stateless(dialog.create_ack(invite, ids=IDS), proxy_end)
        dialog, bye = dialog.create_bye(ids=IDS)
        assert (await uac.request(bye, proxy_end)).status_code == 200
        await asyncio.sleep(0.1)  # Dave's ACK record
        for stack in (uac, proxy, uas):
            await stack.close()


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_traced_call_through_a_proxy_draws_three_columns(transport: str,
                                                         tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    asyncio.run(asyncio.wait_for(traced_call(transport, path), 30))
    entries = read_trace(path)
    (call,) = calls(entries)
    # Over TCP the proxy sees Bill's connection port: the ladder still has one Bill column.
    assert call.participants == ("Alpha UE", "Alpha P-CSCF", "Beta UE")
    ladder = build_ladder(entries, call.call_id)
    hops = [(a.source, a.destination, a.label.split()[0]) for a in ladder.arrows]
    # Each message traced at both ends is one arrow; no retransmission on a quiet loopback.
    assert sorted(hops) == sorted([
        (0, 1, "INVITE"), (1, 0, "100"), (1, 2, "INVITE"), (2, 1, "180"), (2, 1, "200"),
        (1, 0, "180"), (1, 0, "200"), (0, 1, "ACK"), (1, 2, "ACK"), (0, 1, "BYE"),
        (1, 2, "BYE"), (2, 1, "200"), (1, 0, "200")])
    assert not any(a.retransmission for a in ladder.arrows)
    assert hops[0] == (0, 1, "INVITE") and hops[-1] == (1, 0, "200")
    assert [a.epoch for a in ladder.arrows] == sorted(a.epoch for a in ladder.arrows)
    text = render_ladder(entries, call.call_id, width=100)
    assert text.splitlines()[3].split() == ["Alpha", "UE", "Alpha", "P-CSCF", "Beta", "UE"]
