"""Registrar behaviour end to end (RFC 3261 section 10.3): several contacts for one AOR,
un-registration, and terminating requests forked to every registered contact."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ims.config import Role
from ims.sip.uri import SipUri, parse_uri
from ims.sip.useragent import CallFailed, IncomingCall, UserAgent
from tests.test_operator_flows import BETA, FAST, HELP, PASSWORD, _impi, run, world


def test_rfc3261_10_3_two_devices_both_ring_and_one_answers(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path, register=("bill", "dave")) as w:
            # Dave's second device registers the same AOR with its own contact.
            tablet = UserAgent(SipUri(host=BETA, user="+15550100002"), timers=FAST,
                               outbound_proxy=w.beta.address(Role.PCSCF))
            await tablet.start("127.0.0.1")
            try:
                await tablet.register(SipUri(host=BETA), username=_impi("dave"),
                                      password=PASSWORD.format("dave"))
                call_task = asyncio.create_task(
                    w.ues["bill"].call(parse_uri("tel:+15550100002"), extra=HELP))
                phone_rings: IncomingCall = await asyncio.wait_for(w.ues["dave"].incoming.get(), 5)
                tablet_rings: IncomingCall = await asyncio.wait_for(tablet.incoming.get(), 5)
                answered = await tablet_rings.accept()
                call = await asyncio.wait_for(call_task, 5)
                # The other branch is cancelled (RFC 3261 16.7 item 10): the phone stops ringing.
                for _ in range(100):
                    if phone_rings.cancelled:
                        break
                    await asyncio.sleep(0.02)
                assert phone_rings.cancelled
                await asyncio.wait_for(answered.acked.wait(), 5)
                assert (await call.bye()).status_code == 200
            finally:
                await tablet.close()

    run(scenario())


def test_rfc3261_10_2_2_unregistered_callee_is_temporarily_unavailable(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path, register=("bill", "dave")) as w:
            await w.ues["dave"].unregister()
            try:
                await w.ues["bill"].call(parse_uri("tel:+15550100002"), extra=HELP)
            except CallFailed as failed:
                assert failed.status_code == 480
                assert "not registered" in failed.reason
            else:
                raise AssertionError("a call to an unregistered callee was connected")

    run(scenario())
