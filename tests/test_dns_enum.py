"""ENUM: RFC 6116 domains, RFC 3403 ordering, RFC 3402 substitution expressions."""

from __future__ import annotations

import pytest

from ims.dns.enum import NaptrRule, aus, enum_domain, order_rules, parse_regexp, resolve_enum
from ims.dns.errors import InvalidNumber, NaptrRegexpError


def test_rfc6116_section_2_4_domain_is_reversed_digits_under_suffix() -> None:
    assert enum_domain("+15550100001").to_text() == "1.0.0.0.0.1.0.5.5.5.1.e164.arpa."
    assert enum_domain("+1-555-010-0001", "e164.example").to_text() == (
        "1.0.0.0.0.1.0.5.5.5.1.e164.example."
    )


@pytest.mark.parametrize("bad", ["15550100001", "+", "+0123", "+1555abc", "+1234567890123456"])
def test_rfc6116_section_2_4_rejects_non_e164(bad: str) -> None:
    with pytest.raises(InvalidNumber):
        enum_domain(bad)


def test_rfc6116_aus_is_plus_and_digits() -> None:
    assert aus("+1 (555) 010-0001") == "+15550100001"


# RFC 3402 section 3.2 and the RFC 3403 / RFC 6116 examples.
@pytest.mark.parametrize(
    ("regexp", "text", "result"),
    [
        # RFC 6116 section 3.2.1 (as in RFC 3761): the whole AUS replaced.
        ("!^.*$!sip:info@example.com!", "+441632960083", "sip:info@example.com"),
        # RFC 3403 section 6.2 style back-reference.
        ("!^\\+441632960083$!sip:+441632960083@example.com!", "+441632960083",
         "sip:+441632960083@example.com"),
        ("!^\\+(44.*)$!sip:\\1@example.com!", "+441632960083", "sip:441632960083@example.com"),
        # Two back-references, another delimiter.
        ("#^\\+1(555)(.*)$#sip:+1\\1\\2@x.test#", "+15550100002", "sip:+15550100002@x.test"),
        # Any delimiter that is not a digit 1-9 or a flag: "/", "|", "%", "0".
        ("/^(.*)$/tel:\\1/", "+1555", "tel:+1555"),
        ("|^.*$|sip:a@b|", "+1555", "sip:a@b"),
        ("%^.*$%sip:a@b%", "+1555", "sip:a@b"),
        ("0^.*$0sip:a@b0", "+1555", "sip:a@b"),
        # An escaped delimiter inside the ERE and inside repl.
        ("!^\\+1(5)\\!?(.*)$!sip:\\1\\!\\2@b!", "+1555", "sip:5!55@b"),
        # sed-like: an unanchored ERE replaces only the matched part.
        ("!555!666!", "+15550100001", "+16660100001"),
        # The POSIX bracket class [:digit:].
        ("!^\\+([[:digit:]]+)$!sip:\\1@b!", "+1555", "sip:1555@b"),
        # An empty group is replaced by nothing.
        ("!^\\+1()(.*)$!sip:\\1\\2@b!", "+1555", "sip:555@b"),
    ],
)
def test_rfc3402_section_3_2_substitution(regexp: str, text: str, result: str) -> None:
    assert parse_regexp(regexp).apply(text) == result


def test_rfc3402_section_3_2_i_flag_makes_the_ere_case_insensitive() -> None:
    assert parse_regexp("!^ABC(.*)$!sip:\\1@b!i").apply("abcdef") == "sip:def@b"
    assert parse_regexp("!^ABC(.*)$!sip:\\1@b!").apply("abcdef") is None


def test_rfc3402_no_match_means_the_rule_does_not_apply() -> None:
    assert parse_regexp("!^\\+44.*$!sip:x@b!").apply("+1555") is None


@pytest.mark.parametrize(
    ("regexp", "defect"),
    [
        ("!^.*$!sip:\\2@b!", "back-reference \\2"),
        ("!^(.*$!sip:x@b!", "bad ERE"),
        ("!^.*$!sip:x@b", "three '!' delimiters"),
        ("!^.*$!sip:x@b!x", "unknown flags"),
        ("1^.*1sip:x@b1", "cannot be the delimiter"),
        ("i^.*isip:x@bi", "cannot be the delimiter"),
        ("!(?i)a!b!", "not POSIX ERE"),
        ("!a!b\\", "lone backslash"),
        ("!!", "too short"),
    ],
)
def test_rfc3402_malformed_regexp_names_the_defect(regexp: str, defect: str) -> None:
    with pytest.raises(NaptrRegexpError, match=None) as info:
        parse_regexp(regexp)
    assert defect in str(info.value)


def _rule(order: int, pref: int, service: str, regexp: str, flags: str = "u") -> NaptrRule:
    return NaptrRule(order, pref, flags, service, regexp, ".")


def test_rfc3403_section_4_1_order_then_preference() -> None:
    rules = [_rule(20, 10, "E2U+sip", "a"), _rule(10, 50, "E2U+sip", "b"),
             _rule(10, 10, "E2U+sip", "c")]
    assert [r.regexp for r in order_rules(rules)] == ["c", "b", "a"]


def test_rfc6116_only_sip_enumservices_are_used() -> None:
    rules = [
        _rule(10, 10, "E2U+email:mailto", "!^.*$!mailto:a@b!"),
        _rule(10, 20, "E2U+pstn:sip", "!^.*$!sip:pstn@b!"),
        _rule(10, 30, "E2U+sip", "!^.*$!sip:sip@b!"),
    ]
    uri, skipped = resolve_enum("+1555", rules)
    assert uri == "sip:pstn@b"
    assert "not a SIP enumservice" in skipped[0].reason
    uri, _ = resolve_enum("+1555", [_rule(10, 10, "e2u+SIP", "!^.*$!sip:x@b!")])
    assert uri == "sip:x@b"  # RFC 3403 section 4.1: service compared case-insensitively


def test_malformed_regexp_is_skipped_with_a_reason_never_raised() -> None:
    rules = [_rule(10, 10, "E2U+sip", "!^(.*$!sip:x@b!"), _rule(20, 10, "E2U+sip", "!.*!sip:y@b!")]
    uri, skipped = resolve_enum("+1555", rules)
    assert uri == "sip:y@b"
    assert "bad ERE" in skipped[0].reason


def test_non_terminal_and_non_sip_results_are_skipped() -> None:
    rules = [
        _rule(10, 10, "E2U+sip", "!^.*$!sip:x@b!", flags=""),
        _rule(10, 20, "E2U+sip", "!^.*$!http://x!"),
    ]
    uri, skipped = resolve_enum("+1555", rules)
    assert uri is None
    assert [s.reason.split(":")[0] for s in skipped] == ["flags ''", "result 'http"]
