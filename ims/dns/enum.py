"""ENUM (RFC 6116): E.164 number -> domain, NAPTR ordering, RFC 3402 substitution. Pure.

The DDDS substitution expression (RFC 3402 section 3.2) is sed-like:
    subst-expr = delim-char ere delim-char repl delim-char *flags
with any delimiter that is not a digit 1-9 nor a flag, `\\<delim>` escaping the delimiter,
`\\1`..`\\9` back-references in repl and the single flag `i` (case-insensitive ere).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import dns.name

from ims.dns.errors import InvalidNumber, NaptrRegexpError

# RFC 6116 section 3.4.3 / RFC 3764 (E2U+sip) and RFC 4769 (E2U+pstn:sip): the services whose
# URIs a SIP element can route on. Compared case-insensitively (RFC 3403 section 4.1).
SIP_ENUMSERVICES = ("e2u+sip", "e2u+pstn:sip")

_E164 = re.compile(r"\+[1-9][0-9]{0,14}")
# POSIX bracket classes the ERE may use, spelled as Python's re understands them.
_POSIX_CLASSES = {
    "[:digit:]": "0-9",
    "[:alpha:]": "A-Za-z",
    "[:alnum:]": "0-9A-Za-z",
    "[:upper:]": "A-Z",
    "[:lower:]": "a-z",
    "[:space:]": " \\t\\n\\r\\f\\v",
    "[:xdigit:]": "0-9A-Fa-f",
    "[:punct:]": re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
}


def enum_domain(e164: str, suffix: str = "e164.arpa.") -> dns.name.Name:
    """The ENUM domain for an E.164 number (RFC 6116 section 2.4).

    "+1-555-010-0001" and "+15550100001" both give 1.0.0.0.0.1.0.5.5.5.1.<suffix>: visual
    separators are dropped, the digits reversed one label each.
    """
    compact = re.sub(r"[\s().-]", "", e164)
    if not _E164.fullmatch(compact):
        raise InvalidNumber(e164, "expected '+' then 1 to 15 digits, the first not 0")
    labels = ".".join(reversed(compact[1:]))
    return dns.name.from_text(f"{labels}.{suffix.rstrip('.')}.")


def aus(e164: str) -> str:
    """The Application Unique String: the number in its `+digits` form (RFC 6116 section 2.4)."""
    compact = re.sub(r"[\s().-]", "", e164)
    if not _E164.fullmatch(compact):
        raise InvalidNumber(e164, "expected '+' then 1 to 15 digits, the first not 0")
    return compact


@dataclass(frozen=True)
class SubstitutionExpression:
    """A parsed NAPTR regexp: the ERE (as a compiled Python pattern) and the replacement.

    `replacement` is a tuple of literal strings and back-reference numbers.
    """

    source: str
    pattern: re.Pattern[str]
    replacement: tuple[str | int, ...]

    def apply(self, text: str) -> str | None:
        """Apply to `text` (the AUS); None if the ERE does not match (rule does not apply).

        As with sed, the first match is replaced by repl and the rest of the string kept; the
        usual anchored `^...$` ERE replaces the whole string.
        """
        match = self.pattern.search(text)
        if match is None:
            return None
        parts = []
        for part in self.replacement:
            parts.append(part if isinstance(part, str) else match.group(part) or "")
        return text[: match.start()] + "".join(parts) + text[match.end() :]


def _split_fields(regexp: str) -> tuple[str, list[str], list[str], str]:
    """Split into delimiter, ERE and repl (as escape-preserving token lists) and flags."""
    if len(regexp) < 3:
        raise NaptrRegexpError(regexp, "too short for delim ere delim repl delim")
    delim = regexp[0]
    # RFC 3402 section 3.2: delim-char is any octet not in POS-DIGIT or flags; a backslash
    # would make every escape ambiguous.
    if delim in "123456789i\\":
        raise NaptrRegexpError(regexp, f"{delim!r} cannot be the delimiter")
    fields: list[list[str]] = [[]]
    i = 1
    while i < len(regexp):
        char = regexp[i]
        if char == "\\":
            if i + 1 >= len(regexp):
                raise NaptrRegexpError(regexp, "ends with a lone backslash")
            fields[-1].append(regexp[i : i + 2])
            i += 2
            continue
        if char == delim:
            fields.append([])
            if len(fields) == 3:
                break
        else:
            fields[-1].append(char)
        i += 1
    if len(fields) < 3:
        raise NaptrRegexpError(regexp, f"needs three {delim!r} delimiters")
    flags = regexp[i + 1 :]
    return delim, fields[0], fields[1], flags


def parse_regexp(regexp: str) -> SubstitutionExpression:
    """Parse an RFC 3402 substitution expression; NaptrRegexpError names the defect."""
    delim, ere_tokens, repl_tokens, flags = _split_fields(regexp)
    if flags not in ("", "i"):
        raise NaptrRegexpError(regexp, f"unknown flags {flags!r} (only 'i' is defined)")
    ere = []
    for token in ere_tokens:
        # An escaped delimiter stands for the delimiter itself, matched literally.
        ere.append(re.escape(delim) if token == "\\" + delim else token)
    ere_text = "".join(ere)
    if "(?" in ere_text:
        raise NaptrRegexpError(regexp, "'(?' is not POSIX ERE syntax")
    for posix, python in _POSIX_CLASSES.items():
        ere_text = ere_text.replace(posix, python)
    try:
        pattern = re.compile(ere_text, re.IGNORECASE if flags == "i" else 0)
    except re.error as exc:
        raise NaptrRegexpError(regexp, f"bad ERE: {exc}") from None
    replacement: list[str | int] = []
    for token in repl_tokens:
        if len(token) == 2 and token[1] in "123456789":
            number = int(token[1])
            if number > pattern.groups:
                raise NaptrRegexpError(
                    regexp, f"back-reference \\{number} but the ERE has {pattern.groups} groups"
                )
            replacement.append(number)
        elif len(token) == 2:
            # \<delim> and \\ stand for the character itself; RFC 3402 defines no other escape
            # in repl, so any other escaped character is taken literally too.
            replacement.append(token[1])
        else:
            replacement.append(token)
    merged: list[str | int] = []
    for part in replacement:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] = merged[-1] + part
        else:
            merged.append(part)
    return SubstitutionExpression(regexp, pattern, tuple(merged))


@dataclass(frozen=True)
class NaptrRule:
    """The fields of one NAPTR record (RFC 3403 section 4.1) that ENUM processing reads."""

    order: int
    preference: int
    flags: str
    service: str
    regexp: str
    replacement: str


@dataclass(frozen=True)
class Skipped:
    """A NAPTR record that was not used, and why (for the log)."""

    rule: NaptrRule
    reason: str


def order_rules(rules: Iterable[NaptrRule]) -> list[NaptrRule]:
    """RFC 3403 section 4.1: lowest Order first, then lowest Preference.

    The remaining fields break ties so that the outcome never depends on the order in which
    a server happened to put the records.
    """
    return sorted(
        rules,
        key=lambda r: (r.order, r.preference, r.service.lower(), r.flags, r.regexp, r.replacement),
    )


def resolve_enum(
    number: str, rules: Iterable[NaptrRule], services: tuple[str, ...] = SIP_ENUMSERVICES
) -> tuple[str | None, list[Skipped]]:
    """The SIP URI the first applicable rule yields, and the rules skipped on the way.

    A rule applies when its service is one of `services`, it is terminal ("u" flag, RFC 6116
    section 2.4.1), its regexp parses and matches the AUS, and the result is a sip:/sips: URI.
    """
    text = aus(number)
    skipped: list[Skipped] = []
    for rule in order_rules(rules):
        if rule.service.lower() not in services:
            skipped.append(Skipped(rule, f"service {rule.service!r} is not a SIP enumservice"))
            continue
        if rule.flags.lower() != "u":
            skipped.append(
                Skipped(rule, f"flags {rule.flags!r}: only terminal 'u' rules are supported")
            )
            continue
        try:
            expression = parse_regexp(rule.regexp)
        except NaptrRegexpError as exc:
            skipped.append(Skipped(rule, str(exc)))
            continue
        uri = expression.apply(text)
        if uri is None:
            skipped.append(Skipped(rule, f"regexp does not match {text}"))
            continue
        if not uri.lower().startswith(("sip:", "sips:")):
            skipped.append(Skipped(rule, f"result {uri!r} is not a sip: or sips: URI"))
            continue
        return uri, skipped
    return None, skipped
