"""docs/extension.md sections 5 and 7: the permission decider with a fake clock, the bodies,
the outcome table."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from itertools import count
from pathlib import Path
from typing import TypeVar

import pytest

from ims.permission.audit import How
from ims.permission.bodies import (
    ANSWER_TYPE,
    INQUIRY_TYPE,
    Answer,
    Inquiry,
    Withdrawal,
    check_content_type,
    parse_answer,
    parse_inquiry_body,
)
from ims.permission.errors import InvalidBody, PermissionUsageError, UnsupportedBody
from ims.permission.function import (
    AnswerIgnored,
    AnswerTaken,
    Contact,
    Decided,
    DeciderConfig,
    PermissionDecider,
    PermissionQuery,
    SendInquiry,
    SendWithdrawal,
)
from ims.permission.outcomes import Decision, Outcome, response_of
from ims.permission.rules import Rule, RuleSet

ALPHA = "ims.mnc001.mcc001.3gppnetwork.org"
BETA = "ims.mnc002.mcc001.3gppnetwork.org"
BILL = f"sip:+15550100001@{ALPHA}"
DAVE = "tel:+15550100002"
DAVE_SIP = f"sip:+15550100002@{BETA}"
EVE = f"sip:+15550100004@{BETA}"
PF = f"sip:permission@{BETA}"
PHONE = Contact("sip:dave@100.64.0.2:40112;ob", "<urn:uuid:00000000-0000-0000-0000-00000000000a>", 1)
TABLET = Contact("sip:dave@100.64.0.7:5060")
OLD = Contact("sip:dave@100.64.0.9:5060", ueconnect=False)
T0 = 1000.0
T = TypeVar("T")


def decider(**kw: int) -> PermissionDecider:
    ids = count(1)
    return PermissionDecider(DeciderConfig(PF, **kw),
                             new_inquiry_id=lambda: f"q-{next(ids):016d}")


def query(call_id: str = "c1", caller: str = BILL, **kw: object) -> PermissionQuery:
    return PermissionQuery(call_id, caller, ALPHA, DAVE, "com.example.pong",
                           callee_identities=(DAVE, DAVE_SIP), **kw)  # type: ignore[arg-type]


def only(actions: Sequence[object], kind: type[T]) -> list[T]:
    return [a for a in actions if isinstance(a, kind)]


def answer(inquiry: str, decision: str = "allow", **extra: object) -> bytes:
    return json.dumps({"version": 1, "inquiry": inquiry, "decision": decision, **extra}).encode()


def start(d: PermissionDecider, contacts: tuple[Contact, ...] = (PHONE, TABLET),
          **kw: object) -> tuple[str, list[SendInquiry]]:
    sent = only(d.begin(query(**kw), contacts, T0), SendInquiry)  # type: ignore[arg-type]
    assert sent
    return sent[0].inquiry.inquiry, sent


# --- section 5.1: the order of decision ----------------------------------------------------


def test_5_1_step_1_no_binding_is_480_not_registered() -> None:
    [decided] = decider().begin(query(), (), T0)
    assert isinstance(decided, Decided) and decided.outcome is Outcome.NOT_REGISTERED
    assert decided.how is How.NOT_REGISTERED


def test_5_1_step_2_rule_decides_before_any_inquiry() -> None:
    rules = RuleSet((Rule("friends", Decision.ALLOW, peer="tel:+15550100001"),
                     Rule("blocked", Decision.DENY, peer=EVE)))
    d = decider()
    [allowed] = d.begin(query(), (PHONE,), T0, rules=rules)
    assert isinstance(allowed, Decided)
    assert (allowed.outcome, allowed.how, allowed.rule_id) == (Outcome.ALLOWED, How.RULE,
                                                              "friends")
    [denied] = d.begin(query("c2", EVE), (PHONE,), T0, rules=rules)
    assert isinstance(denied, Decided) and denied.outcome is Outcome.DENIED_BY_RULE
    assert denied.rule_id == "blocked" and denied.record.inquiry is None
    assert d.get_timer() is None


def test_5_1_step_4_inquiry_to_every_ueconnect_contact() -> None:
    d = decider()
    actions = d.begin(query(), (PHONE, OLD, TABLET), T0)
    sent = only(actions, SendInquiry)
    assert [s.contact for s in sent] == [PHONE, TABLET]  # OLD lacks the option tag
    assert len(sent) == len(actions)
    s = sent[0]
    assert s.expires == 10 and s.deadline_at == T0 + 10 and s.content_type == INQUIRY_TYPE
    assert json.loads(s.body) == {
        "version": 1, "inquiry": "q-0000000000000001", "caller": BILL, "caller_mno": ALPHA,
        "callee": DAVE, "application": "com.example.pong", "deadline": 10, "reply_to": PF}
    assert sent[1].inquiry == s.inquiry  # one inquiry id for the whole wait
    assert d.get_timer() == T0 + 10


def test_5_1_step_4_no_ueconnect_contact_is_420_callee_lacks() -> None:
    [decided] = decider().begin(query(), (OLD,), T0)
    assert isinstance(decided, Decided)
    assert decided.outcome is Outcome.CALLEE_LACKS_EXTENSION
    assert response_of(decided.outcome).status_code == 420


def test_5_1_step_5_allow_answer_decides_and_withdraws_other_contact() -> None:
    d = decider()
    inquiry, _ = start(d)
    actions = d.answer(DAVE_SIP, PHONE, answer(inquiry, note="sure"), T0 + 2)
    assert only(actions, AnswerTaken) == [AnswerTaken(inquiry)]
    [decided] = only(actions, Decided)
    assert decided.outcome is Outcome.ALLOWED and decided.how is How.CONTACT
    assert decided.record.detail == PHONE.uri and decided.record.note == "sure"
    assert decided.record.inquiry == inquiry and decided.record.at == T0 + 2
    # section 5.5: the other contact's inquiry is withdrawn
    [withdrawal] = only(actions, SendWithdrawal)
    assert withdrawal.contact == TABLET and withdrawal.content_type == INQUIRY_TYPE
    assert json.loads(withdrawal.body) == {"version": 1, "inquiry": inquiry, "withdrawn": True}
    assert d.get_timer() is None


def test_5_1_step_5_deny_answer_is_603() -> None:
    d = decider()
    inquiry, _ = start(d)
    [decided] = only(d.answer(DAVE, TABLET, answer(inquiry, "deny"), T0 + 1), Decided)
    assert decided.outcome is Outcome.DENIED_BY_CALLEE
    assert response_of(decided.outcome).status_code == 603


def test_5_1_step_5_silence_until_deadline_is_refusal() -> None:
    d = decider()
    start(d)
    assert d.handle_timer(T0 + 9.99) == []
    actions = d.handle_timer(T0 + 10)
    [decided] = only(actions, Decided)
    assert decided.outcome is Outcome.NO_ANSWER and decided.how is How.DEADLINE
    assert str(decided.outcome) == "no answer in time"
    assert {w.contact for w in only(actions, SendWithdrawal)} == {PHONE, TABLET}
    assert d.get_timer() is None


def test_5_1_two_contacts_first_answer_wins() -> None:
    d = decider()
    inquiry, _ = start(d)
    first = d.answer(DAVE, TABLET, answer(inquiry, "deny"), T0 + 1)
    assert only(first, Decided)[0].outcome is Outcome.DENIED_BY_CALLEE
    late = d.answer(DAVE, PHONE, answer(inquiry, "allow"), T0 + 2)
    assert late == [AnswerIgnored(410, "Gone (inquiry already decided)", T0 + 2, DAVE, PHONE,
                                  inquiry)]


# --- section 5.4: who may answer -------------------------------------------------------------


def test_5_4_answer_from_contact_not_asked_is_403_and_ignored() -> None:
    d = decider()
    inquiry, _ = start(d, contacts=(PHONE,))
    [ignored] = d.answer(DAVE, TABLET, answer(inquiry), T0 + 1)
    assert isinstance(ignored, AnswerIgnored) and ignored.status_code == 403
    assert ignored.reason_phrase == "Forbidden (not a contact that was asked)"
    assert d.open_inquiries() == (inquiry,)  # nothing decided


def test_5_4_answer_with_another_identity_is_403() -> None:
    d = decider()
    inquiry, _ = start(d)
    [ignored] = d.answer(EVE, PHONE, answer(inquiry), T0 + 1)
    assert isinstance(ignored, AnswerIgnored) and ignored.status_code == 403
    assert "not the callee" in ignored.reason_phrase


def test_5_4_unknown_inquiry_is_403_and_same_flow_by_instance_id() -> None:
    d = decider()
    inquiry, _ = start(d)
    [ignored] = d.answer(DAVE, PHONE, answer("q-unknown-unknown-1"), T0 + 1)
    assert isinstance(ignored, AnswerIgnored) and ignored.status_code == 403
    # RFC 5626: the flow is the instance-id and reg-id, even from a new contact URI
    moved = Contact("sip:dave@100.64.0.3:1234", PHONE.instance_id, PHONE.reg_id)
    assert only(d.answer(DAVE, moved, answer(inquiry), T0 + 1), AnswerTaken)


def test_5_3_answer_after_deadline_is_410() -> None:
    d = decider()
    inquiry, _ = start(d)
    actions = d.answer(DAVE, PHONE, answer(inquiry), T0 + 11)  # handle_timer not yet called
    assert only(actions, Decided)[0].outcome is Outcome.NO_ANSWER
    [ignored] = only(actions, AnswerIgnored)
    assert (ignored.status_code, ignored.reason_phrase) == (410, "Gone (deadline passed)")


def test_5_3_malformed_answer_is_400() -> None:
    d = decider()
    inquiry, _ = start(d)
    [ignored] = d.answer(DAVE, PHONE, answer(inquiry, "maybe"), T0 + 1)
    assert isinstance(ignored, AnswerIgnored) and ignored.status_code == 400
    assert ignored.reason_phrase.startswith("Bad Request (answer body: decision")
    assert d.open_inquiries() == (inquiry,)


# --- section 5.5: caching --------------------------------------------------------------------


def test_5_5_cache_for_is_honoured_then_lapses() -> None:
    d = decider()
    inquiry, _ = start(d)
    d.answer(DAVE, PHONE, answer(inquiry, cache_for=60), T0 + 1)
    [cached] = d.begin(query("c2"), (PHONE,), T0 + 60)
    assert isinstance(cached, Decided) and cached.how is How.CACHE
    assert cached.outcome is Outcome.ALLOWED and cached.record.detail == inquiry
    # another application or caller is not covered
    assert only(d.begin(query("c3", EVE), (PHONE,), T0 + 2), SendInquiry)
    # the cache ends after cache_for
    assert only(d.begin(query("c4"), (PHONE,), T0 + 61), SendInquiry)


def test_5_5_cache_for_zero_is_not_kept_and_rule_change_clears() -> None:
    d = decider()
    inquiry, _ = start(d)
    d.answer(DAVE, PHONE, answer(inquiry, "deny"), T0 + 1)
    assert only(d.begin(query("c2"), (PHONE,), T0 + 2), SendInquiry)
    d2 = decider()
    inquiry, _ = start(d2)
    d2.answer(DAVE, PHONE, answer(inquiry, "deny", cache_for=600), T0 + 1)
    [cached] = d2.begin(query("c2"), (PHONE,), T0 + 2)
    assert isinstance(cached, Decided) and cached.outcome is Outcome.DENIED_BY_CALLEE
    assert d2.clear_cache([DAVE_SIP]) == 1
    assert only(d2.begin(query("c3"), (PHONE,), T0 + 3), SendInquiry)


def test_5_5_rule_decides_before_cache() -> None:
    d = decider()
    inquiry, _ = start(d)
    d.answer(DAVE, PHONE, answer(inquiry, cache_for=600), T0 + 1)
    rules = RuleSet((Rule("no", Decision.DENY),))
    [decided] = d.begin(query("c2"), (PHONE,), T0 + 2, rules=rules)
    assert isinstance(decided, Decided) and decided.how is How.RULE


# --- section 5.2: failed contacts, privacy ---------------------------------------------------


def test_5_2_failed_contacts_give_no_answer() -> None:
    d = decider()
    inquiry, _ = start(d)
    assert d.inquiry_failed(inquiry, PHONE, T0 + 1) == []
    actions = d.answer(DAVE, TABLET, answer(inquiry), T0 + 2)
    assert only(actions, Decided)[0].outcome is Outcome.ALLOWED  # a failed one does not block
    assert only(actions, SendWithdrawal) == []  # nor is it sent a withdrawal


def test_5_2_all_contacts_failed_decides_at_once() -> None:
    d = decider()
    inquiry, _ = start(d)
    d.inquiry_failed(inquiry, PHONE, T0 + 1)
    [decided] = d.inquiry_failed(inquiry, TABLET, T0 + 1)
    assert isinstance(decided, Decided) and decided.outcome is Outcome.NO_ANSWER
    assert decided.how is How.CONTACTS_FAILED
    d = decider()
    inquiry, _ = start(d)
    d.inquiry_failed(inquiry, PHONE, T0 + 1, unsupported=True)
    [decided] = d.inquiry_failed(inquiry, TABLET, T0 + 1, unsupported=True)
    assert isinstance(decided, Decided) and decided.outcome is Outcome.CALLEE_LACKS_EXTENSION


def test_privacy_caller_shown_as_anonymous_but_recorded() -> None:
    """Section 5.2 / 11: the callee sees "anonymous"; the audit keeps the asserted identity."""
    d = decider()
    [sent] = d.begin(query(anonymous=True), (PHONE,), T0)
    assert isinstance(sent, SendInquiry) and sent.inquiry.caller == "anonymous"
    [decided] = only(d.answer(DAVE, PHONE, answer(sent.inquiry.inquiry), T0 + 1), Decided)
    assert decided.record.caller == BILL and decided.record.anonymous
    assert decided.record.shown_caller == "anonymous"


# --- section 11: bounds, misuse ---------------------------------------------------------------


def test_11_open_inquiries_are_bounded_per_callee_and_caller() -> None:
    d = decider(max_open_per_callee=2, max_open_per_caller=5)
    start(d, call_id="a", caller=EVE)
    start(d, call_id="b")
    [busy] = d.begin(query("c", "sip:carol@" + ALPHA), (PHONE,), T0)
    assert isinstance(busy, Decided) and busy.outcome is Outcome.TOO_MANY_INQUIRIES
    assert response_of(busy.outcome).status_code == 486
    d = decider(max_open_per_callee=5, max_open_per_caller=1)
    start(d, call_id="a")
    other = PermissionQuery("b", BILL, ALPHA, "tel:+15550100004")
    [busy] = d.begin(other, (PHONE,), T0)
    assert isinstance(busy, Decided) and busy.how is How.LIMIT
    d.handle_timer(T0 + 10)  # the first one ends: room again
    assert only(d.begin(PermissionQuery("c", BILL, ALPHA, "tel:+15550100004"), (PHONE,),
                        T0 + 10), SendInquiry)


def test_same_call_twice_is_api_misuse() -> None:
    d = decider()
    start(d)
    with pytest.raises(PermissionUsageError):
        d.begin(query(), (PHONE,), T0)


def test_5_5_caller_cancel_records_cancelled_and_withdraws_every_contact() -> None:
    """RFC 3261 sections 9.2 / 16.10: the caller's CANCEL ends the wait at once; the decision
    is "cancelled by the caller" (not "no answer", section 11), every contact asked gets the
    section 5.5 withdrawal, and the deadline no longer fires."""
    d = decider()
    inquiry, _ = start(d)
    actions = d.cancel("c1", T0 + 1)
    [decided] = only(actions, Decided)
    assert (decided.outcome, decided.how, decided.record.inquiry, decided.record.at) == (
        Outcome.CANCELLED, How.CANCEL, inquiry, T0 + 1)
    assert str(decided.outcome) == "cancelled by the caller" and not decided.allowed
    withdrawals = only(actions, SendWithdrawal)
    assert {w.contact for w in withdrawals} == {PHONE, TABLET}
    assert all(json.loads(w.body) == {"version": 1, "inquiry": inquiry, "withdrawn": True}
               for w in withdrawals)
    assert d.get_timer() is None and d.handle_timer(T0 + 20) == []
    assert d.open_inquiries() == () and d.cancel("c1", T0 + 2) == []
    # A contact whose MESSAGE already failed is not sent a withdrawal.
    d = decider()
    start(d, call_id="c2")
    d.inquiry_failed("q-0000000000000001", TABLET, T0 + 0.5)
    assert [w.contact for w in only(d.cancel("c2", T0 + 1), SendWithdrawal)] == [PHONE]


def test_5_4_answer_after_the_caller_cancelled_is_410_and_changes_nothing() -> None:
    """Section 5.4: an answer counts only for an open inquiry; section 5.3: a cancelled one is
    gone (410). A late allow with cache_for must not become a cached consent either."""
    d = decider()
    inquiry, _ = start(d)
    d.cancel("c1", T0 + 1)
    late = d.answer(DAVE_SIP, PHONE, answer(inquiry, cache_for=3600), T0 + 2)
    assert late == [AnswerIgnored(410, "Gone (the caller cancelled)", T0 + 2, DAVE_SIP, PHONE,
                                  inquiry)]
    # The same caller again: no cached decision, a fresh inquiry.
    assert only(d.begin(query("c2"), (PHONE,), T0 + 3), SendInquiry)
    # Cancelling when nothing waits (decided by rule, or already decided) does nothing.
    d2 = decider()
    inquiry2, _ = start(d2)
    d2.answer(DAVE_SIP, PHONE, answer(inquiry2), T0 + 1)
    assert d2.cancel("c1", T0 + 2) == []


def test_config_limits_deadline() -> None:
    with pytest.raises(PermissionUsageError, match="1 to 30 seconds"):
        DeciderConfig(PF, deadline=31)
    assert DeciderConfig(PF, deadline=30).deadline == 30


# --- bodies (sections 5.2, 5.3, 5.5) ---------------------------------------------------------


def test_bodies_round_trip() -> None:
    inq = Inquiry("q-7c1f0e2a9b3d4e5f", BILL, ALPHA, DAVE, "com.example.pong", 10, PF)
    assert parse_inquiry_body(inq.encode()) == inq
    assert parse_inquiry_body(Withdrawal(inq.inquiry).encode()) == Withdrawal(inq.inquiry)
    ans = Answer(inq.inquiry, Decision.DENY, 300, "not now")
    assert parse_answer(ans.encode()) == ans


def test_spec_example_inquiry_parses() -> None:
    spec = Path(__file__).parent.parent / "docs" / "extension.md"
    text = spec.read_text()
    match = re.search(r'\{"version":1,"inquiry":"q-7c1f.*?\}', text, re.S)
    assert match
    inq = parse_inquiry_body(match.group(0))
    assert isinstance(inq, Inquiry) and inq.deadline == 10 and inq.reply_to == PF


@pytest.mark.parametrize(("data", "defect"), [
    (b'{"version":1,"inquiry":"short","decision":"allow"}', "inquiry"),
    (b'{"version":1,"inquiry":"q-0000000000000001","decision":"allow","cache_for":86401}',
     "cache_for 86401 is not 0 to 86400"),
    (b'{"version":1,"inquiry":"q-0000000000000001","decision":"allow","cache_for":true}',
     "cache_for must be an integer"),
    (b'{"version":1,"inquiry":"q-0000000000000001"}', "decision is missing"),
    (b'{"inquiry":"q-0000000000000001","decision":"allow"}', "version is missing"),
    (b'{"version":1,"inquiry":"q-0000000000000001","decision":"allow","note":"' + b"x" * 201
     + b'"}', "note"),
    (b"not json", "not JSON"),
])
def test_invalid_answers_name_defect(data: bytes, defect: str) -> None:
    with pytest.raises(InvalidBody) as caught:
        parse_answer(data)
    assert caught.value.status_code == 400 and defect in caught.value.reason_phrase


@pytest.mark.parametrize("change", [
    {"deadline": 31}, {"deadline": "10"}, {"caller": "mailto:x@example.com"},
    {"caller_mno": "not a domain"}, {"reply_to": "tel:+1555"}, {"application": "a b"},
    {"withdrawn": False},
])
def test_invalid_inquiries_are_400(change: dict[str, object]) -> None:
    good = json.loads(Inquiry("q-7c1f0e2a9b3d4e5f", BILL, ALPHA, DAVE, "*", 10, PF).encode())
    with pytest.raises(InvalidBody) as caught:
        parse_inquiry_body(json.dumps({**good, **change}))
    assert caught.value.status_code == 400


def test_content_type_check_is_415() -> None:
    check_content_type("Application/VND.ueconnect.answer+json; charset=utf-8", ANSWER_TYPE)
    with pytest.raises(UnsupportedBody) as caught:
        check_content_type("text/plain", ANSWER_TYPE)
    assert caught.value.status_code == 415


# --- section 7: the outcome table -------------------------------------------------------------


def _section_7_rows() -> list[tuple[str, int, str, str]]:
    spec = (Path(__file__).parent.parent / "docs" / "extension.md").read_text()
    section = spec.split("## 7.", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].isdigit():
            rows.append((cells[0], int(cells[1]), cells[2], cells[3]))
    return rows


def test_7_outcome_table_matches_the_spec() -> None:
    rows = _section_7_rows()
    assert len(rows) == len(Outcome)
    # The outcomes without a Reason (the 200, the 487 of a CANCEL) are told apart by status.
    by_cause = {}
    for outcome in Outcome:
        r = response_of(outcome)
        by_cause[r.cause or -r.status_code] = (outcome, r)
    for what, status, phrase, reason in rows:
        m = re.search(r"cause=(\d+)", reason)
        cause = int(m.group(1)) if m else None
        outcome, r = by_cause[cause or -status]
        assert (r.status_code, r.reason_phrase) == (status, phrase), what
        if cause is None:
            assert r.reason is None and reason == "-"
        else:
            assert reason.startswith(f"`{r.reason}`"), what
        assert r.retry_after == ("Retry-After" in reason)
        assert r.unsupported == (status == 420)
