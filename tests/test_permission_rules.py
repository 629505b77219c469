"""docs/extension.md section 6: rule set parsing (6.1, 6.3 errors) and evaluation (6.2)."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest

from ims.permission.errors import InvalidRuleSet, TooManyRules
from ims.permission.outcomes import Decision
from ims.permission.rules import MAX_RULES, Rule, RuleSet, home_domain_of, parse_rule_set

ALPHA = "ims.mnc001.mcc001.3gppnetwork.org"
BETA = "ims.mnc002.mcc001.3gppnetwork.org"
BILL_SIP = f"sip:+15550100001@{ALPHA}"
BILL_TEL = "tel:+15550100001"
EVE = f"sip:+15550100004@{BETA}"
PONG = "com.example.pong"
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z

SPEC_EXAMPLE = """{
  "version": 1,
  "rules": [
    {"id": "friends", "action": "allow", "peer": "tel:+15550100001", "application": "com.example.pong"},
    {"id": "beta-only", "action": "allow", "peer_mno": "ims.mnc002.mcc001.3gppnetwork.org",
     "expires": "2026-12-31T23:59:59Z"},
    {"id": "blocked", "action": "deny", "peer": "sip:+15550100004@ims.mnc002.mcc001.3gppnetwork.org"}
  ]
}"""


def body(*rules: Mapping[str, object]) -> str:
    return json.dumps({"version": 1, "rules": list(rules)})


def test_spec_example_parses_and_round_trips() -> None:
    rules = parse_rule_set(SPEC_EXAMPLE)
    assert [r.id for r in rules.rules] == ["friends", "beta-only", "blocked"]
    assert parse_rule_set(rules.to_json()) == rules


@pytest.mark.parametrize(("rules", "phrase", "status"), [
    (body({"id": "friends", "action": "alow"}),
     'Bad Request (rule "friends": unknown action "alow" (allow or deny))', 400),
    (body({"id": "friends", "action": "allow", "peer-mno": "001-02"}),
     'Bad Request (rule "friends": unknown member "peer-mno")', 400),
    (body({"action": "allow"}), "Bad Request (rule #1: id is missing)", 400),
    (body({"id": "a b", "action": "allow"}),
     'Bad Request (rule "a b": id must be 1 to 64 characters of A-Z a-z 0-9 _ . -)', 400),
    (body({"id": "x", "action": "allow"}, {"id": "x", "action": "deny"}),
     'Bad Request (rule "x": id appears twice in the set)', 400),
    (body({"id": "p", "action": "allow", "peer": "mailto:bill@example.com"}),
     'Bad Request (rule "p": peer "mailto:bill@example.com" is not "*" nor a tel: or sip: '
     "public identity)", 400),
    (body({"id": "m", "action": "allow", "peer_mno": "0010-2"}),
     "Bad Request (rule \"m\": peer_mno '0010-2' is neither MCC-MNC (e.g. 001-02) nor a home "
     "domain)", 400),
    (body({"id": "a", "action": "allow", "application": "com example"}),
     'Bad Request (rule "a": application "com example" is not "*" nor a token (RFC 3261 '
     "section 25.1))", 400),
    (body({"id": "e", "action": "allow", "expires": "2026-12-31"}),
     'Bad Request (rule "e": expires not an RFC 3339 time such as 2026-12-31T23:59:59Z)', 400),
    (body({"id": "e", "action": "allow", "expires": "2026-02-30T00:00:00Z"}), None, 400),
    (body({"id": "e", "action": "allow", "expires": 1767225600}),
     'Bad Request (rule "e": expires must be an RFC 3339 time string)', 400),
    ('{"version": 2, "rules": []}', "Bad Request (version 2 is not supported (only 1))", 400),
    ('{"version": 1, "rules": [], "extra": 1}',
     'Bad Request (unknown member "extra" in the rule set)', 400),
    ('{"version": 1, "rules": [], "rules": []}',
     'Bad Request (rule set member "rules" appears twice)', 400),
    ('{"version": 1, "rules": {}}', "Bad Request (rules must be an array)", 400),
    ("[1]", "Bad Request (rule set not a JSON object)", 400),
    (b"\xff", "Bad Request (rule set not UTF-8 (byte 0))", 400),
    ('{"version": 1, "rules": [NaN]}', "Bad Request (rule set NaN is not JSON)", 400),
    (body(*({"id": f"r{n}", "action": "allow"} for n in range(MAX_RULES + 1))),
     "Request Entity Too Large (101 rules, at most 100 are allowed)", 413),
])
def test_invalid_rule_sets_name_rule_and_defect(
        rules: str | bytes, phrase: str | None, status: int) -> None:
    """Section 6.3: the set is rejected as a whole, the reason naming rule and defect; 413
    for more than 100 rules (section 6.1)."""
    with pytest.raises(InvalidRuleSet) as caught:
        parse_rule_set(rules)
    assert caught.value.status_code == status
    if phrase is not None:
        assert caught.value.reason_phrase == phrase


def test_max_rules_exactly_100_is_fine() -> None:
    rules = parse_rule_set(body(*({"id": f"r{n}", "action": "allow"} for n in range(100))))
    assert len(rules.rules) == 100
    with pytest.raises(TooManyRules):
        RuleSet((*rules.rules, Rule("one-more", Decision.ALLOW)))


def test_plmn_id_is_compared_as_home_domain() -> None:
    """Section 6.1 peer_mno: a plmn-id maps to its home domain (section 4, TS 23.003 13.2)."""
    assert home_domain_of("001-02") == BETA
    assert home_domain_of("001-002") == "ims.mnc002.mcc001.3gppnetwork.org"
    assert home_domain_of("IMS.MNC002.MCC001.3GPPNETWORK.ORG.") == BETA
    rules = RuleSet((Rule("beta", Decision.ALLOW, peer_mno="001-02"),))
    assert rules.evaluate(EVE, BETA, PONG, NOW) is not None
    assert rules.evaluate(BILL_SIP, ALPHA, PONG, NOW) is None


def ev(rules: RuleSet, caller: str = BILL_SIP, mno: str = ALPHA, app: str = PONG,
       now: float = NOW, **kw: object) -> str | None:
    rule = rules.evaluate(caller, mno, app, now, **kw)  # type: ignore[arg-type]
    return None if rule is None else rule.id


def test_evaluation_table_section_6_2() -> None:
    rules = RuleSet((
        Rule("all-deny", Decision.DENY),
        Rule("alpha-allow", Decision.ALLOW, peer_mno=ALPHA),
        Rule("pong-allow", Decision.ALLOW, application=PONG),
        Rule("pong-alpha-deny", Decision.DENY, peer_mno="001-01", application=PONG),
        Rule("bill-allow", Decision.ALLOW, peer=BILL_TEL),
        Rule("eve-deny", Decision.DENY, peer=EVE),
    ))
    # step 3: peer (4) beats application+mno (3) beats application (2) beats mno (1)
    assert ev(rules) == "bill-allow"
    assert ev(rules, caller="sip:+15550100003@" + ALPHA) == "pong-alpha-deny"
    assert ev(rules, caller="sip:+15550100003@" + ALPHA, app="other") == "alpha-allow"
    assert ev(rules, caller=EVE, mno=BETA, app="other") == "eve-deny"
    assert ev(rules, caller="sip:+15550109999@" + BETA, mno=BETA) == "pong-allow"
    assert ev(rules, caller="sip:+15550109999@" + BETA, mno=BETA, app="other") == "all-deny"
    assert ev(RuleSet(())) is None  # step 4: no rule, no decision


def test_deny_wins_between_equally_specific_rules() -> None:
    """Section 6.2 step 3: between equally specific rules, deny wins (either order)."""
    allow, deny = (Rule("a", Decision.ALLOW, application=PONG),
                   Rule("d", Decision.DENY, peer_mno=ALPHA, application="*"))
    assert allow.specificity == 2 and deny.specificity == 1
    same = Rule("d2", Decision.DENY, application=PONG)
    assert ev(RuleSet((allow, same))) == "d2"
    assert ev(RuleSet((same, allow))) == "d2"
    assert ev(RuleSet((allow, deny))) == "a"  # more specific allow beats less specific deny


def test_expired_rules_are_ignored() -> None:
    """Section 6.2 step 1: a rule whose `expires` has passed is ignored."""
    rules = RuleSet((Rule("short", Decision.ALLOW, expires="2026-01-01T00:00:10Z"),))
    assert ev(rules, now=NOW + 10) == "short"  # at the instant itself: not yet passed
    assert ev(rules, now=NOW + 10.001) is None
    offset = Rule("off", Decision.ALLOW, expires="2026-01-01T01:00:10+01:00")
    assert offset.expires_at == NOW + 10


def test_anonymous_caller_matches_only_wildcard_peer() -> None:
    """Section 6.2 step 2 / section 11: an anonymous caller matches only peer "*" rules."""
    rules = RuleSet((Rule("bill", Decision.ALLOW, peer=BILL_SIP),
                     Rule("alpha", Decision.DENY, peer_mno=ALPHA)))
    assert ev(rules) == "bill"
    assert ev(rules, anonymous=True) == "alpha"
    assert ev(rules, caller="anonymous") == "alpha"


def test_peer_identity_comparison() -> None:
    """Section 6.1 peer: AORs compared (RFC 3261 19.1.4 after 10.3 step 5), tel: numbers
    without visual separators (RFC 3966 section 4); a tel: rule matches a sip: identity whose
    user part is that global number; a sip: rule matches only its AOR."""
    tel = RuleSet((Rule("t", Decision.ALLOW, peer="tel:+1-555-010-0001"),))
    assert ev(tel, caller=BILL_TEL) == "t"
    assert ev(tel, caller=BILL_SIP) == "t"
    assert ev(tel, caller=BILL_SIP + ";user=phone") == "t"
    assert ev(tel, caller="sip:bill@" + ALPHA) is None
    sip = RuleSet((Rule("s", Decision.ALLOW, peer=f"sip:+15550100001@{ALPHA.upper()}"),))
    assert ev(sip, caller=BILL_SIP + ";user=phone") == "s"
    assert ev(sip, caller=BILL_TEL) is None
    assert ev(sip, caller=f"sip:+15550100001@{BETA}") is None
    # RFC 3325 section 9.1: a tel: alias asserted beside the sip: identity
    assert ev(RuleSet((Rule("x", Decision.ALLOW, peer=BILL_TEL),)),
              caller="sip:bill@" + ALPHA, aliases=(BILL_TEL,)) == "x"


def test_rule_set_round_trips_through_json() -> None:
    rules = RuleSet((Rule("a", Decision.ALLOW, peer=BILL_TEL, peer_mno="001-01",
                          application=PONG, expires="2026-12-31T23:59:59Z"),
                     Rule("b", Decision.DENY)))
    text = rules.to_json()
    assert json.loads(text)["rules"][1] == {"id": "b", "action": "deny"}
    assert parse_rule_set(text) == rules
