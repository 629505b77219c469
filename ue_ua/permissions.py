"""The UE's permissions (docs/extension.md sections 5.2, 5.3, 6), sans-IO with a thin asyncio
wrapper.

- `RuleBook`: the standing rules the application edits; `to_json()` is the PUBLISH body
  (section 6.3, media type `RULES_TYPE`).
- `InquiryAnswerer`: given an inquiry body and `now`, answers from the UE's own rules, else
  asks the application (an `AskApplication` event with the time by which to decide); the
  application's `decide()` produces the answer body. Withdrawals and deadlines end the asking.
- `AsyncInquiryAnswerer`: the same with an `async` application callback and the real clock.
- `trusted_inquirer`: section 5.2's check that an inquiry comes from the UE's own operator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from ims.permission.bodies import (
    ANSWER_TYPE,
    INQUIRY_TYPE,
    RULES_TYPE,
    Answer,
    Inquiry,
    Withdrawal,
    parse_inquiry_body,
)
from ims.permission.outcomes import Decision
from ims.permission.rules import ANY, Rule, RuleSet, parse_rule_set
from ims.sip.errors import ParseError
from ims.sip.uri import SipUri, parse_uri

__all__ = [
    "ANSWER_TYPE",
    "INQUIRY_TYPE",
    "RULES_TYPE",
    "Answered",
    "AskApplication",
    "AsyncInquiryAnswerer",
    "InquiryAnswerer",
    "RuleBook",
    "StopAsking",
    "trusted_inquirer",
]


def trusted_inquirer(asserted_identity: str | None, home_domain: str) -> bool:
    """Section 5.2: an inquiry counts only when it asserts a sip: identity of the UE's own
    home domain (the caller also checks that it came over the registered flow)."""
    if not asserted_identity:
        return False
    text = asserted_identity.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    try:
        uri = parse_uri(text)
    except ParseError:
        return False
    return isinstance(uri, SipUri) and uri.host.lower().rstrip(".") == home_domain.lower()


# --- the rule book ------------------------------------------------------------------------


class RuleBook:
    """The UE's standing rules, edited by the application (section 6.1 limits apply: at most
    100 rules, unique ids; a bad edit raises InvalidRuleSet and changes nothing)."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._set = RuleSet(tuple(rules))

    @classmethod
    def from_json(cls, data: bytes | str) -> RuleBook:
        return cls(parse_rule_set(data).rules)

    @property
    def rule_set(self) -> RuleSet:
        return self._set

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._set.rules

    def add(self, rule: Rule) -> None:
        """Add `rule`, replacing the rule with the same id."""
        kept = tuple(r for r in self._set.rules if r.id != rule.id)
        self._set = RuleSet((*kept, rule))

    def allow(self, rule_id: str, *, peer: str = ANY, peer_mno: str = ANY,
              application: str = ANY, expires: str | None = None) -> Rule:
        rule = Rule(rule_id, Decision.ALLOW, peer, peer_mno, application, expires)
        self.add(rule)
        return rule

    def deny(self, rule_id: str, *, peer: str = ANY, peer_mno: str = ANY,
             application: str = ANY, expires: str | None = None) -> Rule:
        rule = Rule(rule_id, Decision.DENY, peer, peer_mno, application, expires)
        self.add(rule)
        return rule

    def remove(self, rule_id: str) -> Rule | None:
        found = next((r for r in self._set.rules if r.id == rule_id), None)
        if found is not None:
            self._set = RuleSet(tuple(r for r in self._set.rules if r.id != rule_id))
        return found

    def expire(self, now: float) -> tuple[Rule, ...]:
        """Drop the rules whose `expires` has passed; returns them."""
        gone = tuple(r for r in self._set.rules if r.expired(now))
        if gone:
            self._set = self._set.without_expired(now)
        return gone

    def to_json(self) -> bytes:
        """The PUBLISH body (section 6.3)."""
        return self._set.to_json()


# --- answering inquiries ------------------------------------------------------------------


@dataclass(frozen=True)
class Answered:
    """Send `body` (ANSWER_TYPE) in a MESSAGE to `reply_to` (section 5.3). `rule_id` names
    the UE's rule that decided, None when the application did."""

    inquiry: Inquiry
    answer: Answer
    body: bytes
    rule_id: str | None = None

    @property
    def reply_to(self) -> str:
        return self.inquiry.reply_to


@dataclass(frozen=True)
class AskApplication:
    """No rule decides: the application (or its user) should decide by `answer_by`."""

    inquiry: Inquiry
    answer_by: float


@dataclass(frozen=True)
class StopAsking:
    """Stop asking about `inquiry`: it was withdrawn (section 5.5) or its deadline passed."""

    inquiry: str
    why: str


UeEvent = Answered | AskApplication | StopAsking


class InquiryAnswerer:
    """Answers inquiries from `rulebook`, else through the application (sans-IO).

    `margin` seconds are kept before the operator's deadline for the answer to travel.
    `cache_for` is what rule-based answers offer the operator (section 5.3).
    """

    def __init__(self, rulebook: RuleBook, *, margin: float = 1.0, cache_for: int = 0) -> None:
        self.rulebook = rulebook
        self.margin = margin
        self.cache_for = cache_for
        self._asking: dict[str, tuple[Inquiry, float]] = {}

    def receive(self, body: bytes | str, now: float) -> list[UeEvent]:
        """An inquiry MESSAGE's body (INQUIRY_TYPE). Raises InvalidBody: answer it 400
        (section 5.2); otherwise answer it 202 and act on the events."""
        parsed = parse_inquiry_body(body)
        if isinstance(parsed, Withdrawal):
            if self._asking.pop(parsed.inquiry, None) is None:
                return []
            return [StopAsking(parsed.inquiry, "withdrawn")]
        return self.on_inquiry(parsed, now)

    def on_inquiry(self, inquiry: Inquiry, now: float) -> list[UeEvent]:
        if inquiry.inquiry in self._asking:  # a retransmitted or repeated inquiry
            return []
        rule = self.rulebook.rule_set.evaluate(
            inquiry.caller, inquiry.caller_mno, inquiry.application, now)
        if rule is not None:
            answer = Answer(inquiry.inquiry, rule.action, self.cache_for)
            return [Answered(inquiry, answer, answer.encode(), rule.id)]
        answer_by = now + inquiry.deadline - min(self.margin, inquiry.deadline / 2)
        self._asking[inquiry.inquiry] = (inquiry, answer_by)
        return [AskApplication(inquiry, answer_by)]

    def decide(
        self, inquiry: str, decision: Decision | str, now: float, *, cache_for: int = 0,
        note: str | None = None,
    ) -> list[UeEvent]:
        """The application's decision; [] when the inquiry is no longer open (withdrawn,
        past its time, unknown)."""
        self.handle_timer(now)
        found = self._asking.pop(inquiry, None)
        if found is None:
            return []
        answer = Answer(inquiry, Decision(decision), cache_for, note)
        return [Answered(found[0], answer, answer.encode())]

    def handle_timer(self, now: float) -> list[UeEvent]:
        """Stop asking where the time is up: silence is a refusal at the operator."""
        due = [i for i, (_q, by) in self._asking.items() if by <= now]
        for inquiry in due:
            del self._asking[inquiry]
        return [StopAsking(i, "deadline passed") for i in due]

    def give_up(self, inquiry: str) -> list[UeEvent]:
        """The application will not decide: stop asking (nothing is sent)."""
        if self._asking.pop(inquiry, None) is None:
            return []
        return [StopAsking(inquiry, "the application gave no decision")]

    def get_timer(self) -> float | None:
        return min((by for _q, by in self._asking.values()), default=None)

    def asking(self) -> tuple[str, ...]:
        return tuple(self._asking)


AskCallback = Callable[[Inquiry], Awaitable[Decision | str | None]]


class AsyncInquiryAnswerer:
    """`InquiryAnswerer` with the real clock and an async application callback.

    `handle(body)` returns the `Answered` to send, or None when nothing is to be sent (a
    withdrawal, the application's silence or refusal to say, its time running out).
    """

    def __init__(self, answerer: InquiryAnswerer, ask: AskCallback,
                 clock: Callable[[], float] = time.time) -> None:
        self.answerer = answerer
        self._ask = ask
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[Decision | str | None]] = {}

    async def handle(self, body: bytes | str) -> Answered | None:
        events = self.answerer.receive(body, self._clock())
        for event in events:
            if isinstance(event, Answered):
                return event
            if isinstance(event, StopAsking):
                task = self._tasks.pop(event.inquiry, None)
                if task is not None:
                    task.cancel()
            if isinstance(event, AskApplication):
                return await self._asked(event)
        return None

    async def _asked(self, event: AskApplication) -> Answered | None:
        inquiry = event.inquiry.inquiry
        task = asyncio.ensure_future(self._ask(event.inquiry))
        self._tasks[inquiry] = task
        try:
            done, _ = await asyncio.wait({task}, timeout=max(0.0, event.answer_by - self._clock()))
        finally:
            self._tasks.pop(inquiry, None)
            if not task.done():  # time is up, or we were cancelled ourselves
                task.cancel()
                self.answerer.give_up(inquiry)
        if task not in done or task.cancelled() or task.exception() is not None:
            # Time up, withdrawn, or the application failed: silence, which the operator
            # takes as a refusal (section 5.1).
            self.answerer.give_up(inquiry)
            return None
        decision = task.result()
        if decision is None:
            self.answerer.give_up(inquiry)
            return None
        events = self.answerer.decide(inquiry, decision, self._clock())
        return next((e for e in events if isinstance(e, Answered)), None)
