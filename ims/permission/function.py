"""The permission function's decision logic (spec sections 5.1, 5.4, 5.5), sans-IO.

`PermissionDecider` is driven by its shell (the S-CSCF's asyncio part): each call takes `now`
and returns actions to carry out; `get_timer()` says when `handle_timer(now)` is next due.

    begin(query, contacts, now, rules=...)  ->  [Decided]                  (rule, cache, ...)
                                            or  [SendInquiry, ...]         (one per contact)
    answer(from_identity, via, body, now)   ->  [AnswerTaken, Decided, SendWithdrawal, ...]
                                            or  [AnswerIgnored]            (403 / 410 / 400)
    inquiry_failed(inquiry, contact, now)   ->  [] or [Decided, ...]       (all contacts failed)
    cancel(call_id, now)                    ->  [] or [Decided, SendWithdrawal, ...] (CANCEL)
    handle_timer(now)                       ->  [Decided, SendWithdrawal, ...] (deadlines)

The order of section 5.1: no binding -> 480; a matching rule decides; a cached decision
decides; else an inquiry to every contact that registered with `ueconnect`, and the first
definitive answer from a contact that was asked decides; silence until the deadline refuses.
Nothing may be prepared for the caller before a `Decided` whose outcome is ALLOWED.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ims.extension import OPTION_TAG
from ims.permission.audit import DecisionRecord, How
from ims.permission.bodies import (
    INQUIRY_TYPE,
    MAX_DEADLINE,
    Answer,
    Inquiry,
    Withdrawal,
    parse_answer,
)
from ims.permission.errors import InvalidBody, PermissionUsageError
from ims.permission.outcomes import Decision, Outcome
from ims.permission.rules import ANONYMOUS, ANY, RuleSet
from ims.sip.errors import ParseError
from ims.sip.uri import parse_uri
from ims.store import Binding, InvalidIdentity, canonical_aor

__all__ = [
    "Action",
    "AnswerIgnored",
    "AnswerTaken",
    "Contact",
    "Decided",
    "DeciderConfig",
    "PermissionDecider",
    "PermissionQuery",
    "SendInquiry",
    "SendWithdrawal",
]

DEFAULT_DEADLINE = 10  # section 5.5
# How long a decided inquiry is remembered so that a late answer gets 410, not 403.
CLOSED_RETENTION_S = 2.0 * MAX_DEADLINE
MAX_CLOSED = 10_000


# --- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contact:
    """One registered binding of the callee (RFC 3261 section 10.3): its contact URI, its
    RFC 5626 instance-id and reg-id, its Path (the inquiry follows it, section 5.2), and
    whether it registered with the `ueconnect` option tag (only those are asked)."""

    uri: str
    instance_id: str | None = None
    reg_id: int | None = None
    path: tuple[str, ...] = ()
    ueconnect: bool = True

    @classmethod
    def from_binding(cls, binding: Binding) -> Contact:
        return cls(binding.contact, binding.instance_id, binding.reg_id, binding.path,
                   OPTION_TAG in binding.supports)

    def same_binding(self, other: Contact) -> bool:
        """Section 5.4: the same flow (instance-id and reg-id, RFC 5626 section 6) or the same
        contact URI (RFC 3261 section 19.1.4)."""
        if self.instance_id is not None and self.reg_id is not None:
            return self.instance_id == other.instance_id and self.reg_id == other.reg_id
        try:
            return parse_uri(self.uri).equivalent(parse_uri(other.uri))
        except ParseError:
            return self.uri == other.uri


@dataclass(frozen=True)
class PermissionQuery:
    """What the terminating operator knows of a `Require: ueconnect` INVITE (section 5.1).

    `caller` is the network-asserted identity (P-Asserted-Identity, RFC 3325; never From) and
    `caller_aliases` any further asserted one; `anonymous` is set when the caller asked for
    privacy (RFC 3323 `Privacy: id`): the callee then sees "anonymous" and only wildcard
    rules apply, while caching and bounds still use the asserted identity. `callee` is the
    identity called, `callee_identities` all the callee subscriber's public identities (an
    answer must assert one of them, section 5.4; default: just `callee`).
    """

    call_id: str
    caller: str
    caller_mno: str
    callee: str
    application: str = ANY
    anonymous: bool = False
    caller_aliases: tuple[str, ...] = ()
    callee_identities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("call_id", "caller", "caller_mno", "callee", "application"):
            if not getattr(self, name):
                raise PermissionUsageError(f"a permission query needs a {name}")
        if not self.callee_identities:
            object.__setattr__(self, "callee_identities", (self.callee,))

    @property
    def shown_caller(self) -> str:
        return ANONYMOUS if self.anonymous or self.caller == ANONYMOUS else self.caller


@dataclass(frozen=True)
class DeciderConfig:
    """`permission_uri` is the function's own SIP URI (From, P-Asserted-Identity, reply_to of
    section 5.2); `deadline` the wait in seconds (section 5.5: at most 30); the bounds are
    section 11's: open inquiries per callee and per caller, cached decisions kept."""

    permission_uri: str
    deadline: int = DEFAULT_DEADLINE
    max_open_per_callee: int = 4
    max_open_per_caller: int = 4
    max_cached: int = 10_000

    def __post_init__(self) -> None:
        try:
            parse_uri(self.permission_uri)
        except ParseError as exc:
            raise PermissionUsageError(f"permission_uri: {exc}") from None
        if isinstance(self.deadline, bool) or not 1 <= self.deadline <= MAX_DEADLINE:
            raise PermissionUsageError(
                f"deadline must be 1 to {MAX_DEADLINE} seconds (section 5.5), not "
                f"{self.deadline!r}")
        for name in ("max_open_per_callee", "max_open_per_caller", "max_cached"):
            if getattr(self, name) < 1:
                raise PermissionUsageError(f"{name} must be at least 1")


# --- actions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decided:
    """The decision for the INVITE `call_id`; `record` goes to the audit (store.decisions)."""

    call_id: str
    record: DecisionRecord

    @property
    def outcome(self) -> Outcome:
        return self.record.outcome

    @property
    def how(self) -> How:
        return self.record.how

    @property
    def rule_id(self) -> str | None:
        return self.record.rule_id

    @property
    def allowed(self) -> bool:
        return self.record.allowed


@dataclass(frozen=True)
class SendInquiry:
    """Send a MESSAGE (section 5.2) to `contact` along its Path: `body` with `content_type`,
    `Expires: expires`. `deadline_at` is when the wait ends. A failed transaction or a 415 is
    reported back with `inquiry_failed`."""

    call_id: str
    contact: Contact
    inquiry: Inquiry
    body: bytes
    expires: int
    deadline_at: float
    content_type: str = INQUIRY_TYPE


@dataclass(frozen=True)
class SendWithdrawal:
    """Send a MESSAGE withdrawing the inquiry at `contact` (section 5.5)."""

    call_id: str
    contact: Contact
    withdrawal: Withdrawal
    body: bytes
    content_type: str = INQUIRY_TYPE


@dataclass(frozen=True)
class AnswerTaken:
    """Answer the answer's MESSAGE with 200 (section 5.3)."""

    inquiry: str
    status_code: int = 200
    reason_phrase: str = "OK"


@dataclass(frozen=True)
class AnswerIgnored:
    """Answer the answer's MESSAGE with `status_code` (403, 410 or 400, section 5.3), record
    it, and change nothing (section 5.4)."""

    status_code: int
    reason_phrase: str
    at: float
    from_identity: str
    via: Contact
    inquiry: str | None


Action = Decided | SendInquiry | SendWithdrawal | AnswerTaken | AnswerIgnored


# --- the decider ----------------------------------------------------------------------------


@dataclass
class _Open:
    """One inquiry: the same identifier goes to every contact asked."""

    inquiry: str
    query: PermissionQuery
    contacts: tuple[Contact, ...]
    deadline_at: float
    callee_key: str
    caller_key: str
    failed: set[int] = field(default_factory=set)
    unsupported: set[int] = field(default_factory=set)
    closed_at: float | None = None
    closed_why: str = ""


@dataclass(frozen=True)
class _Cached:
    decision: Decision
    until: float
    inquiry: str
    callees: frozenset[str]  # every public identity of the callee, for clear_cache


def _key(identity: str) -> str:
    try:
        return canonical_aor(identity)
    except InvalidIdentity:
        return identity.strip()


def _new_inquiry_id() -> str:
    return "q-" + secrets.token_urlsafe(15)  # 22 characters of [A-Za-z0-9_-]


class PermissionDecider:
    """Rules, then the cache, then inquiries; first definitive answer wins (section 5.1)."""

    def __init__(
        self, config: DeciderConfig, *, new_inquiry_id: Callable[[], str] = _new_inquiry_id
    ) -> None:
        self.config = config
        self._new_id = new_inquiry_id
        self._inquiries: dict[str, _Open] = {}  # open and recently closed, by inquiry id
        self._by_call: dict[str, str] = {}  # open only: Call-ID -> inquiry id
        self._cache: dict[tuple[str, str, str], _Cached] = {}

    # -- inputs ---------------------------------------------------------------------------

    def begin(
        self,
        query: PermissionQuery,
        contacts: Sequence[Contact],
        now: float,
        *,
        rules: RuleSet | None = None,
    ) -> list[Action]:
        """Start deciding for one INVITE. `contacts` are all the callee's registered bindings
        (unexpired), `rules` its standing rule set (None when it has none)."""
        if query.call_id in self._by_call:
            raise PermissionUsageError(f"a decision for Call-ID {query.call_id!r} is already "
                                       "under way")
        self._purge(now)
        if not contacts:
            return [self._decided(query, now, Outcome.NOT_REGISTERED, How.NOT_REGISTERED)]
        if rules is not None:
            rule = rules.evaluate(query.caller, query.caller_mno, query.application, now,
                                  anonymous=query.anonymous, aliases=query.caller_aliases)
            if rule is not None:
                outcome = (Outcome.ALLOWED if rule.action is Decision.ALLOW
                           else Outcome.DENIED_BY_RULE)
                return [self._decided(query, now, outcome, How.RULE, detail=rule.id)]
        cached = self._cache.get(self._cache_key(query))
        if cached is not None and cached.until > now:
            outcome = (Outcome.ALLOWED if cached.decision is Decision.ALLOW
                       else Outcome.DENIED_BY_CALLEE)
            return [self._decided(query, now, outcome, How.CACHE, detail=cached.inquiry)]
        capable = tuple(c for c in contacts if c.ueconnect)
        if not capable:
            return [self._decided(query, now, Outcome.CALLEE_LACKS_EXTENSION,
                                  How.NO_CAPABLE_CONTACT)]
        callee_key, caller_key = _key(query.callee), _key(query.caller)
        open_now = [q for q in self._inquiries.values() if q.closed_at is None]
        if (sum(q.callee_key == callee_key for q in open_now) >= self.config.max_open_per_callee
                or sum(q.caller_key == caller_key for q in open_now)
                >= self.config.max_open_per_caller):
            return [self._decided(query, now, Outcome.TOO_MANY_INQUIRIES, How.LIMIT)]
        inquiry_id = self._new_id()
        if inquiry_id in self._inquiries:
            raise PermissionUsageError(f"new_inquiry_id gave {inquiry_id!r} twice")
        deadline = self.config.deadline
        inquiry = Inquiry(
            inquiry=inquiry_id, caller=query.shown_caller, caller_mno=query.caller_mno,
            callee=query.callee, application=query.application, deadline=deadline,
            reply_to=self.config.permission_uri,
        )
        self._inquiries[inquiry_id] = _Open(inquiry_id, query, capable, now + deadline,
                                            callee_key, caller_key)
        self._by_call[query.call_id] = inquiry_id
        body = inquiry.encode()
        return [SendInquiry(query.call_id, c, inquiry, body, deadline, now + deadline)
                for c in capable]

    def answer(
        self, from_identity: str, via: Contact, body: bytes | str | Answer, now: float
    ) -> list[Action]:
        """An answer MESSAGE (section 5.3): `from_identity` is its P-Asserted-Identity as the
        operator's own P-CSCF asserted it, `via` the binding whose flow it came over."""
        actions: list[Action] = list(self.handle_timer(now))  # a late answer meets a closed one
        try:
            answer = body if isinstance(body, Answer) else parse_answer(body)
        except InvalidBody as exc:
            return [*actions, AnswerIgnored(400, exc.reason_phrase, now, from_identity, via,
                                            None)]
        state = self._inquiries.get(answer.inquiry)

        def ignored(status: int, phrase: str) -> list[Action]:
            return [*actions, AnswerIgnored(status, phrase, now, from_identity, via,
                                            answer.inquiry)]

        # Section 5.4: the callee's asserted identity, a binding that was asked, an open
        # inquiry; 403 before 410 so that no one else learns which inquiries exist.
        if state is None:
            return ignored(403, "Forbidden (no such inquiry)")
        if _key(from_identity) not in {_key(i) for i in state.query.callee_identities}:
            return ignored(403, "Forbidden (not the callee's identity)")
        index = next((n for n, c in enumerate(state.contacts) if c.same_binding(via)), None)
        if index is None:
            return ignored(403, "Forbidden (not a contact that was asked)")
        if state.closed_at is not None:
            return ignored(410, f"Gone ({state.closed_why})")
        query = state.query
        if answer.cache_for > 0:
            self._remember(query, answer.decision, now + answer.cache_for, state.inquiry)
        outcome = Outcome.ALLOWED if answer.decision is Decision.ALLOW else Outcome.DENIED_BY_CALLEE
        actions.append(AnswerTaken(answer.inquiry))
        actions += self._close(state, now, outcome, How.CONTACT, detail=state.contacts[index].uri,
                               note=answer.note, answered=index, why="inquiry already decided")
        return actions

    def inquiry_failed(
        self, inquiry: str, contact: Contact, now: float, *, unsupported: bool = False
    ) -> list[Action]:
        """The MESSAGE to `contact` failed (timeout, 408, 480, 5xx) or, with `unsupported`,
        was answered 415: that contact gives no answer (section 5.2). When no contact is left
        the decision comes at once: 420 if every one answered 415, else as for silence."""
        state = self._inquiries.get(inquiry)
        if state is None or state.closed_at is not None:
            return []
        index = next((n for n, c in enumerate(state.contacts) if c.same_binding(contact)), None)
        if index is None:
            return []
        state.failed.add(index)
        if unsupported:
            state.unsupported.add(index)
        if len(state.failed) < len(state.contacts):
            return []
        if len(state.unsupported) == len(state.contacts):
            return self._close(state, now, Outcome.CALLEE_LACKS_EXTENSION, How.CONTACTS_FAILED,
                               why="inquiry already decided")
        return self._close(state, now, Outcome.NO_ANSWER, How.CONTACTS_FAILED,
                           why="inquiry already decided")

    def cancel(self, call_id: str, now: float) -> list[Action]:
        """The caller gave up while its inquiry was open (a CANCEL, RFC 3261 sections 9.2 and
        16.10: the INVITE was answered 487): the inquiry ends as "cancelled by the caller"
        (recorded, section 11), every contact still asked gets the withdrawal and a later
        answer gets 410 (section 5.5). [] when no inquiry of `call_id` is open."""
        inquiry = self._by_call.get(call_id)
        if inquiry is None:
            return []
        return self._close(self._inquiries[inquiry], now, Outcome.CANCELLED, How.CANCEL,
                           why="the caller cancelled")

    def handle_timer(self, now: float) -> list[Action]:
        """Decide every inquiry whose deadline has come: silence is a refusal (section 5.1)."""
        actions: list[Action] = []
        due = sorted((s for s in self._inquiries.values()
                      if s.closed_at is None and s.deadline_at <= now),
                     key=lambda s: s.deadline_at)
        for state in due:
            actions += self._close(state, now, Outcome.NO_ANSWER, How.DEADLINE,
                                   why="deadline passed")
        self._purge(now)
        return actions

    def get_timer(self) -> float | None:
        """When `handle_timer` is next due, None when nothing waits."""
        return min((s.deadline_at for s in self._inquiries.values() if s.closed_at is None),
                   default=None)

    def clear_cache(self, callee_identities: Iterable[str]) -> int:
        """A rule change by the callee clears its cached decisions (section 5.5); returns how
        many were dropped."""
        keys = {_key(i) for i in callee_identities}
        drop = [k for k, c in self._cache.items() if c.callees & keys]
        for k in drop:
            del self._cache[k]
        return len(drop)

    # -- inspection -------------------------------------------------------------------------

    def open_inquiries(self) -> tuple[str, ...]:
        return tuple(i for i, s in self._inquiries.items() if s.closed_at is None)

    # -- internals --------------------------------------------------------------------------

    def _cache_key(self, query: PermissionQuery) -> tuple[str, str, str]:
        # The asserted caller also when it is shown as anonymous: a consent to one hidden
        # caller must not become a consent to every hidden caller.
        return (_key(query.caller), _key(query.callee), query.application)

    def _remember(self, query: PermissionQuery, decision: Decision, until: float,
                  inquiry: str) -> None:
        key = self._cache_key(query)
        self._cache.pop(key, None)
        while len(self._cache) >= self.config.max_cached:  # bounded: drop the soonest to end
            del self._cache[min(self._cache, key=lambda k: self._cache[k].until)]
        self._cache[key] = _Cached(decision, until, inquiry,
                                   frozenset(_key(i) for i in query.callee_identities))

    def _decided(
        self, query: PermissionQuery, now: float, outcome: Outcome, how: How, *,
        detail: str | None = None, inquiry: str | None = None, note: str | None = None,
    ) -> Decided:
        return Decided(query.call_id, DecisionRecord(
            at=now, call_id=query.call_id, caller=query.caller, caller_mno=query.caller_mno,
            callee=query.callee, application=query.application, outcome=outcome, how=how,
            detail=detail, inquiry=inquiry, anonymous=query.shown_caller == ANONYMOUS,
            note=note,
        ))

    def _close(
        self, state: _Open, now: float, outcome: Outcome, how: How, *, why: str,
        detail: str | None = None, note: str | None = None, answered: int | None = None,
    ) -> list[Action]:
        state.closed_at, state.closed_why = now, why
        self._by_call.pop(state.query.call_id, None)
        decided = self._decided(state.query, now, outcome, how, detail=detail,
                                inquiry=state.inquiry, note=note)
        return [decided, *self._withdrawals(state, answered)]

    def _withdrawals(self, state: _Open, answered: int | None) -> list[Action]:
        # Section 5.5: every other contact still asked stops asking its user.
        withdrawal = Withdrawal(state.inquiry)
        body = withdrawal.encode()
        return [SendWithdrawal(state.query.call_id, c, withdrawal, body)
                for n, c in enumerate(state.contacts)
                if n != answered and n not in state.failed]

    def _purge(self, now: float) -> None:
        for inquiry, state in list(self._inquiries.items()):
            if state.closed_at is not None and state.closed_at + CLOSED_RETENTION_S <= now:
                del self._inquiries[inquiry]
        closed = [i for i, s in self._inquiries.items() if s.closed_at is not None]
        for inquiry in closed[:max(0, len(closed) - MAX_CLOSED)]:
            del self._inquiries[inquiry]
        for key in [k for k, c in self._cache.items() if c.until <= now]:
            del self._cache[key]
