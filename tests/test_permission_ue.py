"""The UE side (ue_ua.permissions): the rule book and the inquiry answerer (docs/extension.md
sections 5.2, 5.3, 5.5, 6)."""

from __future__ import annotations

import asyncio
import json

import pytest

from ims.permission.bodies import Inquiry, Withdrawal, parse_answer
from ims.permission.errors import InvalidBody, InvalidRuleSet
from ims.permission.outcomes import Decision
from ims.permission.rules import parse_rule_set
from ue_ua.permissions import (
    Answered,
    AskApplication,
    AsyncInquiryAnswerer,
    InquiryAnswerer,
    RuleBook,
    StopAsking,
    trusted_inquirer,
)

ALPHA = "ims.mnc001.mcc001.3gppnetwork.org"
BETA = "ims.mnc002.mcc001.3gppnetwork.org"
BILL = f"sip:+15550100001@{ALPHA}"
PF = f"sip:permission@{BETA}"
T0 = 1_767_225_600.0


def inquiry(n: int = 1, caller: str = BILL, deadline: int = 10) -> Inquiry:
    return Inquiry(f"q-{n:016d}", caller, ALPHA, "tel:+15550100002", "com.example.pong",
                   deadline, PF)


def test_rule_book_edits_and_publish_body() -> None:
    book = RuleBook()
    book.allow("friends", peer="tel:+15550100001", application="com.example.pong")
    book.deny("late", expires="2026-01-01T00:00:05Z")
    book.allow("friends", peer="tel:+15550100003")  # same id replaces
    assert [r.id for r in book.rules] == ["late", "friends"]
    assert book.rules[1].peer == "tel:+15550100003"
    assert json.loads(book.to_json())["version"] == 1
    assert RuleBook.from_json(book.to_json()).rule_set == book.rule_set
    assert book.expire(T0 + 5) == ()
    assert [r.id for r in book.expire(T0 + 6)] == ["late"]
    assert book.remove("friends") is not None and book.remove("friends") is None
    assert parse_rule_set(book.to_json()).rules == ()
    with pytest.raises(InvalidRuleSet):
        book.allow("bad", peer="nonsense")
    assert book.rules == ()  # a bad edit changes nothing
    for n in range(100):
        book.allow(f"r{n}")
    with pytest.raises(InvalidRuleSet):
        book.allow("r100")
    assert len(book.rules) == 100


def test_answer_from_own_rules_at_once() -> None:
    book = RuleBook()
    book.deny("no-bill", peer="tel:+15550100001")
    answerer = InquiryAnswerer(book, cache_for=60)
    [event] = answerer.receive(inquiry().encode(), T0)
    assert isinstance(event, Answered) and event.rule_id == "no-bill"
    assert event.reply_to == PF
    assert parse_answer(event.body) == event.answer
    assert (event.answer.decision, event.answer.cache_for) == (Decision.DENY, 60)


def test_anonymous_inquiry_matches_only_wildcard_rules() -> None:
    book = RuleBook()
    book.allow("bill", peer=BILL)
    book.deny("alpha", peer_mno="001-01")
    [event] = InquiryAnswerer(book).receive(inquiry(caller="anonymous").encode(), T0)
    assert isinstance(event, Answered) and event.rule_id == "alpha"


def test_ask_application_with_deadline_then_decide() -> None:
    answerer = InquiryAnswerer(RuleBook(), margin=1.0)
    [ask] = answerer.receive(inquiry().encode(), T0)
    assert isinstance(ask, AskApplication) and ask.answer_by == T0 + 9
    assert answerer.get_timer() == T0 + 9
    assert answerer.receive(inquiry().encode(), T0 + 1) == []  # repeated inquiry
    [answered] = answerer.decide(ask.inquiry.inquiry, "allow", T0 + 3, cache_for=30, note="ok")
    assert isinstance(answered, Answered) and answered.rule_id is None
    assert parse_answer(answered.body).cache_for == 30
    assert answerer.decide(ask.inquiry.inquiry, "deny", T0 + 4) == []  # answered already


def test_application_too_late_and_withdrawal() -> None:
    answerer = InquiryAnswerer(RuleBook())
    answerer.receive(inquiry(1).encode(), T0)
    answerer.receive(inquiry(2).encode(), T0)
    assert answerer.handle_timer(T0 + 9) == [StopAsking("q-0000000000000001",
                                                        "deadline passed"),
                                             StopAsking("q-0000000000000002",
                                                        "deadline passed")]
    assert answerer.decide("q-0000000000000001", "allow", T0 + 9.5) == []
    answerer.receive(inquiry(3).encode(), T0)
    assert answerer.receive(Withdrawal("q-0000000000000003").encode(), T0 + 1) == [
        StopAsking("q-0000000000000003", "withdrawn")]
    assert answerer.asking() == ()


def test_malformed_inquiry_raises_400() -> None:
    with pytest.raises(InvalidBody) as caught:
        InquiryAnswerer(RuleBook()).receive(b'{"version":1}', T0)
    assert caught.value.status_code == 400


def test_5_2_only_own_operator_may_inquire() -> None:
    assert trusted_inquirer(f"<{PF}>", BETA)
    assert not trusted_inquirer(f"<sip:permission@{ALPHA}>", BETA)
    assert not trusted_inquirer("<tel:+15550100002>", BETA)
    assert not trusted_inquirer(None, BETA)


class FakeClock:
    def __init__(self) -> None:
        self.start = asyncio.get_running_loop().time()

    def __call__(self) -> float:
        return T0 + asyncio.get_running_loop().time() - self.start


def test_async_answerer_callback_and_deadline() -> None:
    async def run() -> tuple[Answered | None, Answered | None, Answered | None]:
        clock = FakeClock()

        async def ask(inq: Inquiry) -> Decision | None:
            if inq.inquiry.endswith("1"):
                return Decision.ALLOW
            await asyncio.sleep(60)  # the user never decides
            return Decision.ALLOW

        answerer = AsyncInquiryAnswerer(InquiryAnswerer(RuleBook(), margin=0.9), ask, clock)
        quick = await answerer.handle(inquiry(1).encode())
        started = asyncio.get_running_loop().time()
        slow = await answerer.handle(inquiry(2, deadline=1).encode())
        waited = asyncio.get_running_loop().time() - started
        assert 0.4 <= waited < 2.0  # deadline 1 s less the margin (at most half of it)
        # a withdrawal stops the asking: handle() then sends nothing
        pending = asyncio.ensure_future(answerer.handle(inquiry(3).encode()))
        await asyncio.sleep(0.05)
        assert await answerer.handle(Withdrawal("q-0000000000000003").encode()) is None
        withdrawn = await asyncio.wait_for(pending, 2)
        return quick, slow, withdrawn

    quick, slow, withdrawn = asyncio.run(run())
    assert quick is not None and quick.answer.decision is Decision.ALLOW
    assert slow is None and withdrawn is None
