"""The permission function on the wire (docs/extension.md sections 5, 6.3, 7): two operators on
loopback with [permission] (deadline 1 s), our UAs as UEs through ue_ua.agent.UeAgent.

Every call case asserts the caller's final response (status, reason phrase, Reason cause), the
audit record in Beta's store.decisions, and what Beta's connectivity gateway was asked (nothing
before consent, section 5.1)."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bench.sipp import Endpoint, SippRun, free_port, start_sipp
from ims.cli import permission as permission_cli
from ims.config import Role
from ims.operator import Operator
from ims.permission.audit import DecisionRecord, How
from ims.permission.bodies import ANSWER_TYPE, INQUIRY_TYPE, Answer, Inquiry
from ims.permission.outcomes import Decision, Outcome
from ims.scscf import Scscf
from ims.seams import ConnectRequest, Leg, Refusal
from ims.sip.address import Address
from ims.sip.dialog import create_initial_request, with_sent_by
from ims.sip.headers import NameAddress
from ims.sip.message import Request, Response
from ims.sip.proxy import Defer, Forward
from ims.sip.transaction import make_cancel
from ims.sip.uri import SipUri, parse_uri
from ims.sip.useragent import CallFailed, IncomingCall, UserAgent
from ims.store import Store
from tests.interop.sipp import sipp_or_skip
from tests.test_operator_flows import (
    ALPHA,
    BETA,
    DOMAINS,
    FAST,
    HELP,
    PASSWORD,
    PEOPLE,
    _impi,
    start_operators,
)
from ue_ua.agent import UeAgent
from ue_ua.permissions import RuleBook

DAVE = "tel:+15550100002"
DAVE_SIP = f"sip:+15550100002@{BETA}"
BILL_SIP = f"sip:+15550100001@{ALPHA}"
PONG = "com.example.pong"
CALL = [*HELP, ("Target-MNO", "001-02"), ("Application-ID", PONG)]
DEADLINE = 1


@dataclass
class RecordingGateway:
    """Beta's connectivity gateway (a SessionGateway, so that the S-CSCF releases it): records
    each request and how many decisions the store held for it when asked (consent must come
    first); a release is recorded as -1. With
    `hold` set, `prepare` waits for it (a PCP request under way) after recording."""

    store: Store | None = None
    asked: list[tuple[str, int]] = field(default_factory=list)
    hold: asyncio.Event | None = None

    async def prepare(self, request: ConnectRequest) -> Request | Refusal:
        assert self.store is not None
        decided = [d for d in self.store.decisions.list(DAVE, 100)
                   if d.call_id == request.call_id]
        self.asked.append((request.call_id, len(decided)))
        if self.hold is not None:
            await self.hold.wait()
        return request.request

    def complete(self, call_id: str, response: Response) -> Response:
        return response

    async def refresh(self, request: Request) -> None:
        return None

    async def release(self, call_id: str) -> None:
        self.asked.append((call_id, -1))


@dataclass
class App:
    """A UE's application: `decision` after `gate` opens (None: never answers)."""

    decision: str | None = None
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    asked: list[Inquiry] = field(default_factory=list)

    async def ask(self, inquiry: Inquiry) -> str | None:
        self.asked.append(inquiry)
        if self.decision is None:
            await asyncio.sleep(3600)  # silence, cut by the answerer at its deadline
        await self.gate.wait()
        return self.decision


@dataclass
class World:
    alpha: Operator
    beta: Operator
    stores: dict[str, Store]
    agents: dict[str, UeAgent]
    apps: dict[str, App]
    gateway: RecordingGateway


async def _agent(stack: AsyncExitStack, name: str, ops: dict[str, Operator], app: App,
                 *, device: str = "") -> UeAgent:
    op, number = PEOPLE[name]
    ua = UserAgent(SipUri(host=DOMAINS[op], user=number), timers=FAST,
                   outbound_proxy=ops[op].address(Role.PCSCF))
    await ua.start("127.0.0.1")
    if device:  # a second device of the same subscriber: its own contact
        assert ua.contact is not None
        ua.contact = SipUri(host=ua.contact.host, user=f"{number}-{device}", port=ua.contact.port)
    stack.push_async_callback(ua.close)
    agent = UeAgent(ua, home_domain=DOMAINS[op], rulebook=RuleBook(), ask=app.ask)
    stack.push_async_callback(agent.close)
    return agent


@asynccontextmanager
async def world(tmp_path: Path, *, register: tuple[str, ...] = ("bill", "dave"),
                plain: tuple[str, ...] = (), second_dave: bool = False,
                deadline: int = DEADLINE) -> AsyncIterator[World]:
    """Alpha and Beta with [permission] (`deadline` seconds); `register` UEs with Supported:
    ueconnect, `plain` ones without; `second_dave` a second device of Dave ("dave2"), with the
    extension."""
    async with AsyncExitStack() as stack:
        permission = f"\n[permission]\ndeadline = {deadline}\n"
        made: list[RecordingGateway] = []

        def recording(store: Store) -> RecordingGateway:
            made.append(RecordingGateway(store))
            return made[-1]

        ops, stores = await start_operators(
            stack, tmp_path, extra={"alpha": permission, "beta": permission},
            gateways={"beta": recording},
        )
        alpha, beta = ops["alpha"], ops["beta"]
        gateway = made[0]
        apps = {name: App() for name in (*PEOPLE, "dave2")}
        agents = {name: await _agent(stack, name, ops, apps[name]) for name in PEOPLE}
        if second_dave:
            agents["dave2"] = await _agent(stack, "dave", ops, apps["dave2"], device="two")
        for name in (*register, *plain, *(("dave2",) if second_dave else ())):
            person = "dave" if name == "dave2" else name
            registrar = SipUri(host=DOMAINS[PEOPLE[person][0]])
            username, password = _impi(person), PASSWORD.format(person)
            if name in plain:
                await agents[name].ua.register(registrar, username=username, password=password)
            else:
                await agents[name].register(registrar, username=username, password=password)
        yield World(alpha, beta, stores, agents, apps, gateway)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


async def _refused(w: World, target: str = DAVE, extra: list[tuple[str, str]] = CALL
                   ) -> Response:
    with pytest.raises(CallFailed) as failed:
        await w.agents["bill"].ua.call(parse_uri(target), extra=extra)
    return failed.value.response


async def _connected(w: World, callee: str = "dave") -> str:
    """Bill calls Dave, `callee`'s UA accepts; the Call-ID."""
    task = asyncio.create_task(w.agents["bill"].ua.call(parse_uri(DAVE), extra=CALL))
    incoming: IncomingCall = await asyncio.wait_for(w.agents[callee].ua.incoming.get(), 5)
    # Section 11: the caller is the one Alpha asserted.
    assert incoming.request.headers.get("P-Asserted-Identity") == f"<{BILL_SIP}>"
    answered = await incoming.accept()
    call = await task
    await asyncio.wait_for(answered.acked.wait(), 5)
    assert (await call.bye()).status_code == 200
    return call.invite.call_id


def _decision(w: World) -> DecisionRecord:
    records = w.stores["beta"].decisions.list(DAVE, 10)
    assert len(records) == 1, records
    record = records[0]
    assert (record.caller, record.caller_mno, record.application) == (BILL_SIP, ALPHA, PONG)
    return record


def _assert_refusal(response: Response, status: int, phrase: str, reason: str) -> None:
    """Section 7: status, reason phrase and Reason (RFC 3326) of the caller's final response."""
    assert (response.status_code, response.reason) == (status, phrase)
    assert response.headers.get("Reason") == reason


async def _publish(w: World, name: str, rules: object, *, expires: int = 3600) -> Response:
    agent = w.agents[name]
    agent.rulebook = RuleBook.from_json(json.dumps(rules))
    return await agent.publish_rules(expires=expires)


def _rules(*rules: dict[str, str]) -> dict[str, object]:
    return {"version": 1, "rules": list(rules)}


# --- standing rules (sections 5.1 step 2, 6) ------------------------------------------------


def test_allowed_by_rule_connects_without_inquiry(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as w:
            published = await _publish(w, "dave", _rules(
                {"id": "friends", "action": "allow", "peer": "tel:+15550100001"}))
            # RFC 3903 section 4.1 / spec 6.3: 200 with SIP-ETag and the granted Expires.
            assert published.status_code == 200
            assert published.headers.get("SIP-ETag") and published.headers.get("Expires") == "3600"
            call_id = await _connected(w)
            record = _decision(w)
            assert (record.outcome, record.how, record.rule_id) == (
                Outcome.ALLOWED, How.RULE, "friends")
            assert record.call_id == call_id
            assert w.apps["dave"].asked == []  # decided by rule: no inquiry
            # The gateway was asked only once the decision was recorded.
            assert w.gateway.asked and w.gateway.asked[0] == (call_id, 1)

    run(scenario())


def test_denied_by_rule_is_403_cause_1(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as w:
            assert (await _publish(w, "dave", _rules(
                {"id": "blocked", "action": "deny", "peer": BILL_SIP}))).status_code == 200
            response = await _refused(w)
            _assert_refusal(response, 403, "Forbidden (denied by the callee's rule)",
                            'ueconnect;cause=1;text="denied by rule"')
            record = _decision(w)
            assert (record.outcome, record.how, record.rule_id) == (
                Outcome.DENIED_BY_RULE, How.RULE, "blocked")
            assert w.gateway.asked == []
            assert w.agents["dave"].ua.incoming.empty()  # the INVITE was held at Beta

    run(scenario())


def test_expired_rule_falls_through_to_inquiry(tmp_path: Path) -> None:
    """Section 6.2 step 1: a rule past its `expires` is ignored; the inquiry decides."""
    async def scenario() -> None:
        async with world(tmp_path) as w:
            assert (await _publish(w, "dave", _rules(
                {"id": "old", "action": "allow", "expires": "2020-01-01T00:00:00Z"}))
            ).status_code == 200
            w.apps["dave"].decision = "deny"
            w.apps["dave"].gate.set()
            response = await _refused(w)
            _assert_refusal(response, 603, "Decline (denied by the callee)",
                            'ueconnect;cause=2;text="denied by the callee"')
            record = _decision(w)
            assert (record.outcome, record.how) == (Outcome.DENIED_BY_CALLEE, How.CONTACT)
            assert len(w.apps["dave"].asked) == 1
            assert w.gateway.asked == []

    run(scenario())


# --- inquiries (sections 5.1 steps 4-5, 5.2, 5.3) ---------------------------------------------


def test_inquiry_allowed_connects(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as w:
            w.apps["dave"].decision = "allow"
            w.apps["dave"].gate.set()
            dave = w.agents["dave"].ua
            seen: list[Request] = []
            handler = dave.on_request
            assert handler is not None

            def spy(request: Request, source: Address) -> Awaitable[Response] | Response:
                seen.append(request)
                return handler(request, source)

            dave.on_request = spy
            call_id = await _connected(w)
            # Section 5.2: the MESSAGE to the contact, from and asserting the function's URI,
            # Expires = the deadline, over the flow Dave registered on (he accepted it).
            message = seen[0]
            assert (message.method, str(message.uri)) == ("MESSAGE", str(dave.contact))
            assert str(message.from_.uri) == f"sip:permission@{BETA}"
            assert message.headers.get("P-Asserted-Identity") == f"<sip:permission@{BETA}>"
            assert message.headers.get("Expires") == str(DEADLINE)
            assert message.headers.get("Content-Type") == INQUIRY_TYPE
            inquiry = w.apps["dave"].asked[0]
            # Section 5.2: the inquiry's members, the caller as Alpha asserted it; the callee
            # as called at Beta: the SIP URI Alpha's border had from ENUM (section 4: ENUM
            # first for a tel: Request-URI, even with Target-MNO).
            assert (inquiry.caller, inquiry.caller_mno, inquiry.callee, inquiry.application,
                    inquiry.deadline, inquiry.reply_to) == (
                BILL_SIP, ALPHA, f"sip:+15550100002@{BETA}", PONG, DEADLINE,
                f"sip:permission@{BETA}")
            record = _decision(w)
            assert (record.outcome, record.how, record.inquiry) == (
                Outcome.ALLOWED, How.CONTACT, inquiry.inquiry)
            assert record.detail == str(w.agents["dave"].ua.contact)
            sent = await asyncio.wait_for(w.agents["dave"].answers.get(), 2)
            assert sent.response.status_code == 200  # section 5.3: the answer was taken
            assert w.gateway.asked[0] == (call_id, 1)

    run(scenario())


def test_inquiry_denied_is_603_cause_2(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as w:
            w.apps["dave"].decision = "deny"
            w.apps["dave"].gate.set()
            response = await _refused(w)
            _assert_refusal(response, 603, "Decline (denied by the callee)",
                            'ueconnect;cause=2;text="denied by the callee"')
            record = _decision(w)
            assert (record.outcome, record.how) == (Outcome.DENIED_BY_CALLEE, How.CONTACT)
            assert w.gateway.asked == []
            assert w.agents["dave"].ua.incoming.empty()

    run(scenario())


def test_inquiry_unanswered_is_480_cause_3_at_the_deadline(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as w:
            started = time.monotonic()
            response = await _refused(w)
            waited = time.monotonic() - started
            _assert_refusal(response, 480, "Temporarily Unavailable (no permission answer)",
                            'ueconnect;cause=3;text="no answer in time"')
            assert DEADLINE - 0.1 <= waited < DEADLINE + 2
            record = _decision(w)
            assert (record.outcome, record.how) == (Outcome.NO_ANSWER, How.DEADLINE)
            assert len(w.apps["dave"].asked) == 1
            assert w.gateway.asked == []

    run(scenario())


def test_two_devices_first_answer_wins_other_withdrawn(tmp_path: Path) -> None:
    """Section 5.1 step 4 (every ueconnect contact asked), step 5 (first answer decides),
    section 5.5 (the other contact gets a withdrawal)."""
    async def scenario() -> None:
        async with world(tmp_path, second_dave=True) as w:
            w.apps["dave"].decision = "allow"
            w.apps["dave"].gate.set()  # dave2's app never answers
            task = asyncio.create_task(w.agents["bill"].ua.call(parse_uri(DAVE), extra=CALL))
            asked = await asyncio.wait_for(w.agents["dave2"].inquiries.get(), 5)
            withdrawn = await asyncio.wait_for(w.agents["dave2"].withdrawn.get(), 5)
            assert withdrawn == asked.inquiry
            incoming = await asyncio.wait_for(w.agents["dave"].ua.incoming.get(), 5)
            answered = await incoming.accept()
            call = await task
            await asyncio.wait_for(answered.acked.wait(), 5)
            await call.bye()
            record = _decision(w)
            assert (record.outcome, record.how, record.inquiry) == (
                Outcome.ALLOWED, How.CONTACT, asked.inquiry)
            assert record.detail == str(w.agents["dave"].ua.contact)

    run(scenario())


def test_callee_not_registered_is_480_cause_4(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path, register=("bill",)) as w:
            response = await _refused(w)
            _assert_refusal(response, 480, "Temporarily Unavailable (callee not registered)",
                            'ueconnect;cause=4;text="not registered"')
            record = _decision(w)
            assert (record.outcome, record.how) == (Outcome.NOT_REGISTERED, How.NOT_REGISTERED)
            assert w.gateway.asked == []

    run(scenario())


def test_callee_without_extension_is_420_cause_5(tmp_path: Path) -> None:
    """Sections 3, 5.1 step 4 and 9: a binding registered without Supported: ueconnect is
    never asked; 420 with Unsupported: ueconnect (RFC 3261 section 20.40)."""
    async def scenario() -> None:
        async with world(tmp_path, register=("bill",), plain=("dave",)) as w:
            response = await _refused(w)
            _assert_refusal(response, 420, "Bad Extension (callee lacks ueconnect)",
                            'ueconnect;cause=5;text="callee lacks the extension"')
            assert response.headers.get("Unsupported") == "ueconnect"
            record = _decision(w)
            assert (record.outcome, record.how) == (
                Outcome.CALLEE_LACKS_EXTENSION, How.NO_CAPABLE_CONTACT)
            assert w.apps["dave"].asked == []
            assert w.gateway.asked == []

    run(scenario())


def test_answer_from_another_ue_is_403_and_ignored(tmp_path: Path) -> None:
    """Section 5.4: an answer counts only from the callee's identity over a contact that was
    asked; Eve's answer to Dave's inquiry gets 403 and changes nothing."""
    async def scenario() -> None:
        async with world(tmp_path, register=("bill", "dave", "eve")) as w:
            w.apps["dave"].decision = "deny"
            task = asyncio.create_task(_refused(w))
            inquiry = await asyncio.wait_for(w.agents["dave"].inquiries.get(), 5)
            forged = Answer(inquiry.inquiry, Decision.ALLOW).encode()
            response = await w.agents["eve"].ua.send_request(
                "MESSAGE", parse_uri(inquiry.reply_to), body=forged, content_type=ANSWER_TYPE)
            assert (response.status_code, response.reason) == (
                403, "Forbidden (not the callee's identity)")
            w.apps["dave"].gate.set()
            refused = await task
            _assert_refusal(refused, 603, "Decline (denied by the callee)",
                            'ueconnect;cause=2;text="denied by the callee"')
            record = _decision(w)
            assert (record.outcome, record.how) == (Outcome.DENIED_BY_CALLEE, How.CONTACT)
            assert record.detail == str(w.agents["dave"].ua.contact)
            assert w.gateway.asked == []
            # Too late now: section 5.3, 410 for a decided inquiry (from the one asked).
            late = await w.agents["dave"].ua.send_request(
                "MESSAGE", parse_uri(inquiry.reply_to), body=forged, content_type=ANSWER_TYPE)
            assert late.status_code == 410

    run(scenario())


def test_ue_refuses_inquiry_not_from_its_p_cscf(tmp_path: Path) -> None:
    """Section 5.2 / 11: an inquiry that did not come over the registered flow from the
    UE's P-CSCF is answered 403, even when it asserts the operator's permission URI."""
    async def scenario() -> None:
        async with world(tmp_path, register=("dave",)) as w:
            dave = w.agents["dave"].ua
            assert dave.contact is not None
            intruder = UserAgent(SipUri(host="127.0.0.1", user="mallory"), timers=FAST)
            await intruder.start("127.0.0.1")
            try:
                body = Inquiry("q-0123456789abcdefghij", BILL_SIP, ALPHA, DAVE, PONG, 5,
                               f"sip:permission@{BETA}").encode()
                response = await intruder.send_request(
                    "MESSAGE", dave.contact, body=body, content_type=INQUIRY_TYPE,
                    extra=[("P-Asserted-Identity", f"<sip:permission@{BETA}>")])
                assert response.status_code == 403
                assert w.apps["dave"].asked == [] and w.agents["dave"].inquiries.empty()
            finally:
                await intruder.close()

    run(scenario())


# --- the caller's CANCEL during the inquiry (section 5.5; RFC 3261 sections 9, 16.10) ---------

# The proxy core stops a deferred routing step when a CANCEL ends the request; the S-CSCF's
# permission wait is such a step (ims.sip.proxy.Defer.on_cancel).
CANCEL_DEADLINE = 5  # long enough that learning of the CANCEL at the deadline shows
ALPHA_PEER_HOST = "127.0.1.20"  # in Alpha's network as the world's Beta admits it


@dataclass
class Cancelled:
    """What Bill's side saw of an INVITE it cancelled during Dave's inquiry."""

    invite: Request
    cancel: Response
    final: Response
    inquiry: Inquiry
    withdrawn_after: float  # seconds from the CANCEL to Dave's withdrawal


async def _cancel_during_inquiry(w: World) -> Cancelled:
    """Bill's UA sends the INVITE, waits for Dave's inquiry, then CANCELs (RFC 3261 section
    9.1: the CANCEL is built from the INVITE as sent, after a provisional came)."""
    bill = w.agents["bill"].ua
    hop = bill.outbound_proxy
    assert hop is not None and bill.contact is not None
    invite = create_initial_request(
        "INVITE", parse_uri(DAVE), from_=NameAddress(bill.aor), to=parse_uri(DAVE),
        ids=bill.ids, contact=bill.contact, route_set=bill.route_set, extra=CALL)
    transport = bill.stack.transport_for(hop)
    assert transport is not None
    invite = with_sent_by(invite, transport.local)
    provisional = asyncio.Event()
    outcome = asyncio.create_task(bill.stack.request(
        invite, hop, on_provisional=lambda _: provisional.set()))
    inquiry = await asyncio.wait_for(w.agents["dave"].inquiries.get(), 5)
    await asyncio.wait_for(provisional.wait(), 5)
    cancelled_at = time.monotonic()
    cancel = await bill.stack.request(make_cancel(invite), hop)
    final = await asyncio.wait_for(outcome, 5)
    withdrawn = await asyncio.wait_for(w.agents["dave"].withdrawn.get(), CANCEL_DEADLINE + 2)
    assert withdrawn == inquiry.inquiry
    return Cancelled(invite, cancel, final, inquiry, time.monotonic() - cancelled_at)


def test_5_5_caller_cancel_during_inquiry_ends_it_at_once(tmp_path: Path) -> None:
    """RFC 3261 sections 9.2 / 16.10: the CANCEL is answered 200 and the INVITE 487; section
    5.5: Dave's inquiry is withdrawn at once (not at the deadline), the decision recorded as
    cancelled by the caller; section 5.4: Dave's answer afterwards is 410 and opens nothing."""
    async def scenario() -> None:
        async with world(tmp_path, deadline=CANCEL_DEADLINE) as w:
            seen = await _cancel_during_inquiry(w)
            assert seen.cancel.status_code == 200
            assert (seen.final.status_code, seen.final.reason) == (487, "Request Terminated")
            assert seen.withdrawn_after < CANCEL_DEADLINE / 2
            record = _decision(w)
            assert (record.outcome, record.how, record.inquiry, record.call_id) == (
                Outcome.CANCELLED, How.CANCEL, seen.inquiry.inquiry, seen.invite.call_id)
            late = await w.agents["dave"].ua.send_request(
                "MESSAGE", parse_uri(seen.inquiry.reply_to), content_type=ANSWER_TYPE,
                body=Answer(seen.inquiry.inquiry, Decision.ALLOW, cache_for=600).encode())
            assert (late.status_code, late.reason) == (410, "Gone (the caller cancelled)")
            assert _decision(w).outcome is Outcome.CANCELLED  # unchanged, nothing cached
            assert w.gateway.asked == []  # nothing prepared for a caller that left
            assert w.agents["dave"].ua.incoming.empty()

    run(scenario())


def test_5_5_cancelled_permission_wait_records_and_withdraws(tmp_path: Path) -> None:
    """The S-CSCF's side of a CANCEL: when its deferred routing is cancelled, the permission
    function's wait ends as "cancelled by the caller" and Dave's inquiry is withdrawn."""
    async def scenario() -> None:
        async with world(tmp_path, deadline=CANCEL_DEADLINE) as w:
            assert w.beta.permission is not None
            invite = _terminating_invite(w)
            ask = ConnectRequest(Leg.TERMINATING, BILL_SIP, DAVE_SIP, invite.call_id, None,
                                 invite)
            check = asyncio.create_task(w.beta.permission.check(ask))
            inquiry = await asyncio.wait_for(w.agents["dave"].inquiries.get(), 5)
            check.cancel()
            with pytest.raises(asyncio.CancelledError):
                await check
            withdrawn = await asyncio.wait_for(w.agents["dave"].withdrawn.get(), 2)
            assert withdrawn == inquiry.inquiry
            record = _decision(w)
            assert (record.outcome, record.how, record.call_id) == (
                Outcome.CANCELLED, How.CANCEL, invite.call_id)
            assert w.beta.permission.decider.open_inquiries() == ()

    run(scenario())


def test_cancel_while_the_gateway_prepares_releases_it(tmp_path: Path) -> None:
    """Section 11, nothing stays open: a CANCEL that stops the S-CSCF's deferred routing
    while Beta's gateway is preparing Dave's side (after an allow) releases that side."""
    async def scenario() -> None:
        async with world(tmp_path) as w:
            assert (await _publish(w, "dave", _rules(
                {"id": "friends", "action": "allow", "peer": BILL_SIP}))).status_code == 200
            w.gateway.hold = asyncio.Event()
            scscf = w.beta.elements_of(Role.SCSCF)[0].router
            assert isinstance(scscf, Scscf)
            deferred: list[Awaitable[Forward | Response]] = []

            def defer(request: Request, work: Awaitable[Forward | Response]) -> Defer:
                deferred.append(work)
                return Defer(request.call_id)

            scscf.defer = defer
            invite = _terminating_invite(w)
            assert isinstance(scscf(invite, w.beta.address(Role.BORDER)), Defer)
            routing = asyncio.ensure_future(deferred[0])
            for _ in range(200):  # bounded: the gateway is asked once the rule allowed
                if w.gateway.asked:
                    break
                await asyncio.sleep(0.01)
            assert w.gateway.asked == [(invite.call_id, 1)]
            routing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await routing
            await asyncio.sleep(0.05)  # the release runs as its own task
            assert w.gateway.asked == [(invite.call_id, 1), (invite.call_id, -1)]

    run(scenario())


# sipp as the caller's operator: a real, independent CANCEL reaching Beta's border.
_SIPP_CANCEL = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="ueconnect: CANCEL during the permission inquiry">
  <send>
    <![CDATA[
INVITE sip:+15550100002@{beta} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-w5-[pid]-[call_number]
Max-Forwards: 70
From: <sip:+15550100001@{alpha}>;tag=w5-[call_number]
To: <tel:+15550100002>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:+15550100001@[local_ip]:[local_port]>
P-Asserted-Identity: <sip:+15550100001@{alpha}>
Require: ueconnect
Supported: ueconnect
Proxy-Require: ueconnect
Application-ID: {app}
Content-Length: 0

    ]]>
  </send>
  <recv response="100"/>
  <pause milliseconds="{pause}"/>
  <send>
    <![CDATA[
CANCEL sip:+15550100002@{beta} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-w5-[pid]-[call_number]
Max-Forwards: 70
From: <sip:+15550100001@{alpha}>;tag=w5-[call_number]
To: <tel:+15550100002>
Call-ID: [call_id]
CSeq: 1 CANCEL
Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
  <recv response="487"/>
  <send>
    <![CDATA[
ACK sip:+15550100002@{beta} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-w5-[pid]-[call_number]
Max-Forwards: 70
From: <sip:+15550100001@{alpha}>;tag=w5-[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: 1 ACK
Content-Length: 0

    ]]>
  </send>
</scenario>
"""


def test_5_5_sipp_cancel_at_the_border_withdraws_the_inquiry(tmp_path: Path) -> None:
    """sipp, standing in for Alpha's border (a peer Beta admits), CANCELs its INVITE while
    Dave is asked: 200 and 487 come back at once (RFC 3261 sections 9.2, 16.10), Dave's
    inquiry is withdrawn long before the deadline, the decision is cancelled by the caller."""
    sipp = sipp_or_skip()
    scenario_file = tmp_path / "uac_cancel_inquiry.xml"
    scenario_file.write_text(_SIPP_CANCEL.format(alpha=ALPHA, beta=BETA, app=PONG, pause=300),
                             encoding="ascii")

    async def scenario() -> None:
        async with world(tmp_path, register=("dave",), deadline=CANCEL_DEADLINE) as w:
            border = w.beta.address(Role.BORDER)
            # Alpha's network as Beta's border admits it (admit_from 127.0.1.0/24).
            local = Endpoint(ALPHA_PEER_HOST, free_port(ALPHA_PEER_HOST))
            run = SippRun(scenario=scenario_file, local=local,
                          remote=Endpoint(border.host, border.port), deadline=CANCEL_DEADLINE,
                          trace_messages=True)
            started = time.monotonic()
            with start_sipp(run, tmp_path / "sipp", sipp) as peer:
                inquiry = await asyncio.wait_for(w.agents["dave"].inquiries.get(), 5)
                withdrawn = await asyncio.wait_for(w.agents["dave"].withdrawn.get(),
                                                   CANCEL_DEADLINE)
                assert withdrawn == inquiry.inquiry
                assert time.monotonic() - started < CANCEL_DEADLINE / 2
                result = await peer.wait_async(CANCEL_DEADLINE)
            assert result.ok, result.describe()
            record = _decision(w)
            assert (record.outcome, record.how, record.inquiry) == (
                Outcome.CANCELLED, How.CANCEL, inquiry.inquiry)
            assert w.gateway.asked == []

    run(scenario())


def _terminating_invite(w: World) -> Request:
    """Bill's INVITE as Beta's S-CSCF gets it from Beta's border (asserted, Require)."""
    bill = w.agents["bill"].ua
    return create_initial_request(
        "INVITE", parse_uri(DAVE_SIP), from_=NameAddress(bill.aor), to=parse_uri(DAVE),
        ids=bill.ids, contact=bill.contact,
        extra=[*HELP, ("Application-ID", PONG), ("P-Asserted-Identity", f"<{BILL_SIP}>")])


# --- PUBLISH of the rules (section 6.3) -------------------------------------------------------


def test_publish_refusals(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path, register=("bill", "dave", "eve")) as w:
            dave = w.agents["dave"]
            typo = await _publish(w, "dave", _rules({"id": "friends", "action": "allow"}))
            assert typo.status_code == 200
            bad = await dave.ua.send_request(
                "PUBLISH", dave.ua.aor, extra=[("Event", "ueconnect-rules")],
                body=b'{"version":1,"rules":[{"id":"friends","action":"alow"}]}',
                content_type="application/vnd.ueconnect.rules+json")
            assert bad.status_code == 400
            assert bad.reason.startswith('Bad Request (rule "friends": unknown action "alow"')
            many = {"version": 1, "rules": [{"id": f"r{n}", "action": "allow"}
                                            for n in range(101)]}
            big = await dave.ua.send_request(
                "PUBLISH", dave.ua.aor, extra=[("Event", "ueconnect-rules")],
                body=json.dumps(many).encode(), content_type="application/vnd.ueconnect.rules+json")
            assert big.status_code == 413
            other = await dave.ua.send_request(
                "PUBLISH", dave.ua.aor, extra=[("Event", "presence")], body=b"x",
                content_type="application/pidf+xml")
            assert other.status_code == 489
            # Eve may not publish Dave's rules: her asserted identity is not his.
            eve = w.agents["eve"]
            forged = await eve.ua.send_request(
                "PUBLISH", parse_uri(DAVE_SIP), extra=[("Event", "ueconnect-rules")],
                body=b'{"version":1,"rules":[]}',
                content_type="application/vnd.ueconnect.rules+json")
            assert forged.status_code == 403
            stale = await dave.ua.send_request(
                "PUBLISH", dave.ua.aor, extra=[("Event", "ueconnect-rules"),
                                               ("SIP-If-Match", "nosuchetag")],
                body=b'{"version":1,"rules":[]}',
                content_type="application/vnd.ueconnect.rules+json")
            assert stale.status_code == 412
            # The first set stands.
            stored = w.stores["beta"].rules.get(DAVE, time.time())
            assert stored is not None and json.loads(stored.body)["rules"][0]["id"] == "friends"
            assert stored.etag == dave.etag
            removed = await dave.publish_rules(expires=0)
            assert removed.status_code == 200
            assert w.stores["beta"].rules.get(DAVE, time.time()) is None

    run(scenario())


# --- the CLI -----------------------------------------------------------------------------------


def test_cli_shows_rules_and_decisions(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as w:
            assert (await _publish(w, "dave", _rules(
                {"id": "blocked", "action": "deny", "peer": BILL_SIP,
                 "application": PONG}))).status_code == 200
            await _refused(w)

    run(scenario())
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    permission_cli.register(sub)
    config = str(tmp_path / "beta.toml")
    args = parser.parse_args(["permission", "rules", "--config", config, DAVE])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "blocked" in out and "deny" in out and BILL_SIP in out and PONG in out
    args = parser.parse_args(["permission", "decisions", "--config", config, DAVE,
                              "--limit", "5"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "denied by rule" in out and "blocked" in out and BILL_SIP in out
    args = parser.parse_args(["permission", "rules", "--config", config, "tel:+15559999999"])
    assert args.func(args) == 1
    assert "no subscriber" in capsys.readouterr().err
