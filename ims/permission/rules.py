"""The callee's standing rules (spec section 6): the rule set model, its JSON, its evaluation.

    {"version": 1, "rules": [{"id": "friends", "action": "allow",
                              "peer": "tel:+15550100001", "application": "com.example.pong"}]}

A rule set is validated as a whole (section 6.3: one defect rejects the set, with a reason
phrase naming the rule); unknown members are errors so that a typo cannot widen a permission
(section 6.1). Evaluation (section 6.2) takes `now` (seconds since the epoch) for `expires`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ims.dns.errors import InvalidMnoId
from ims.dns.plmn import Plmn
from ims.permission import _json
from ims.permission.errors import InvalidRuleSet, TooManyRules
from ims.permission.outcomes import Decision
from ims.sip import abnf
from ims.sip.errors import ParseError
from ims.sip.uri import SipUri, TelUri, parse_uri
from ims.store import InvalidIdentity, canonical_aor

__all__ = [
    "ANONYMOUS",
    "ANY",
    "MAX_RULES",
    "RULES_VERSION",
    "Rule",
    "RuleSet",
    "home_domain_of",
    "identity_matches",
    "parse_rule_set",
]

ANY = "*"
ANONYMOUS = "anonymous"  # the caller as shown when it asked for privacy (RFC 3323)
MAX_RULES = 100  # section 6.1
RULES_VERSION = 1

_RULE_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_PLMN_ID = re.compile(r"([0-9]{3})-([0-9]{2,3})")  # section 4: mcc "-" mnc
# RFC 3339 section 5.6 date-time; `datetime.fromisoformat` alone accepts far more.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_MEMBERS = ("id", "action", "peer", "peer_mno", "application", "expires")


# --- identities --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Identity:
    """A public identity as compared here: its AOR (RFC 3261 section 10.3 step 5) and, when
    it names a telephone number, that number (RFC 3966 section 4)."""

    aor: str
    number: str | None


def _identity(text: str) -> _Identity:
    """Raises InvalidIdentity / ParseError for what is not a tel:, sip: or sips: URI."""
    uri = parse_uri(text.strip())
    aor = canonical_aor(text)
    if isinstance(uri, TelUri):
        return _Identity(aor, uri.e164)
    number = None
    if isinstance(uri, SipUri) and uri.user is not None:
        # RFC 3261 section 19.1.6: a user part that is a global number is that telephone
        # number (IMS writes it with or without user=phone, TS 23.003 section 13.4).
        user = canonical_aor(text).split(":", 1)[1].rsplit("@", 1)[0]
        if abnf.GLOBAL_NUMBER_RE.fullmatch(user):
            number = TelUri(user).e164
    return _Identity(aor, number)


def _rule_identity(rule_peer: str) -> _Identity:
    # A sip: rule names that AOR only: its number does not widen it to other operators.
    ident = _identity(rule_peer)
    return ident if rule_peer.strip().lower().startswith("tel:") else _Identity(ident.aor, None)


def identity_matches(rule_peer: str, caller: str) -> bool:
    """Whether the identity `caller` is the `rule_peer` of a rule (section 6.1 `peer`): a tel:
    rule matches that number as a tel: URI or as a sip: URI whose user part is the number; a
    sip: rule matches that AOR. Malformed identities match nothing."""
    try:
        rule, who = _rule_identity(rule_peer), _identity(caller)
    except (ParseError, InvalidIdentity):
        return False
    return rule.aor == who.aor or (rule.number is not None and rule.number == who.number)


def home_domain_of(mno_id: str) -> str:
    """The home domain an MNO identifier names (section 4: a plmn-id maps to
    `ims.mnc<MNC>.mcc<MCC>.3gppnetwork.org` with the MNC digits as written, TS 23.003
    section 13.2), lower-cased; raises ValueError naming the defect."""
    text = mno_id.strip()
    match = _PLMN_ID.fullmatch(text)
    if match:
        try:
            return Plmn(match.group(1), match.group(2)).home_domain
        except InvalidMnoId as exc:  # pragma: no cover - the pattern already ensures it
            raise ValueError(str(exc)) from None
    if not abnf.HOSTNAME_RE.fullmatch(text) or "." not in text.rstrip("."):
        raise ValueError(f"{text[:80]!r} is neither MCC-MNC (e.g. 001-02) nor a home domain")
    return text.rstrip(".").lower()


def _parse_time(text: str) -> float:
    if not _RFC3339.fullmatch(text):
        raise ValueError("not an RFC 3339 time such as 2026-12-31T23:59:59Z")
    try:
        return datetime.fromisoformat(text.upper()).timestamp()
    except ValueError as exc:
        raise ValueError(f"not a valid time ({exc})") from None


# --- the model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One rule (section 6.1). Members keep the text as written (for `to_json`); construction
    validates and raises InvalidRuleSet naming this rule and the defect."""

    id: str
    action: Decision
    peer: str = ANY
    peer_mno: str = ANY
    application: str = ANY
    expires: str | None = None
    _peer: _Identity | None = field(init=False, repr=False, compare=False)
    _mno: str = field(init=False, repr=False, compare=False)
    _expires_at: float | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _RULE_ID.fullmatch(self.id):
            raise InvalidRuleSet("id must be 1 to 64 characters of A-Z a-z 0-9 _ . -",
                                 self.id if isinstance(self.id, str) else None)
        try:
            object.__setattr__(self, "action", Decision(self.action))
        except ValueError:
            raise InvalidRuleSet(f'unknown action "{_short(self.action)}" (allow or deny)',
                                 self.id) from None
        for name in ("peer", "peer_mno", "application"):
            if not isinstance(getattr(self, name), str):
                raise InvalidRuleSet(f"{name} must be a string", self.id)
        peer: _Identity | None = None
        if self.peer != ANY:
            try:
                peer = _rule_identity(self.peer)
            except (ParseError, InvalidIdentity):
                raise InvalidRuleSet(f'peer "{_short(self.peer)}" is not "*" nor a tel: or '
                                     "sip: public identity", self.id) from None
        object.__setattr__(self, "_peer", peer)
        mno = ANY
        if self.peer_mno != ANY:
            try:
                mno = home_domain_of(self.peer_mno)
            except ValueError as exc:
                raise InvalidRuleSet(f"peer_mno {exc}", self.id) from None
        object.__setattr__(self, "_mno", mno)
        if self.application != ANY and not abnf.TOKEN_RE.fullmatch(self.application):
            raise InvalidRuleSet(f'application "{_short(self.application)}" is not "*" nor a '
                                 "token (RFC 3261 section 25.1)", self.id)
        expires_at = None
        if self.expires is not None:
            if not isinstance(self.expires, str):
                raise InvalidRuleSet("expires must be an RFC 3339 time string", self.id)
            try:
                expires_at = _parse_time(self.expires)
            except ValueError as exc:
                raise InvalidRuleSet(f"expires {exc}", self.id) from None
        object.__setattr__(self, "_expires_at", expires_at)

    @property
    def expires_at(self) -> float | None:
        """`expires` in seconds since the epoch."""
        return self._expires_at

    @property
    def specificity(self) -> int:
        """Section 6.2 step 3: peer 4, application 2, peer_mno 1."""
        return ((4 if self.peer != ANY else 0) + (2 if self.application != ANY else 0)
                + (1 if self.peer_mno != ANY else 0))

    def expired(self, now: float) -> bool:
        """Section 6.2 step 1: ignored once `expires` has passed."""
        return self._expires_at is not None and now > self._expires_at

    def matches(self, callers: Sequence[str] | None, caller_mno: str, application: str) -> bool:
        """Section 6.2 step 2. `callers` are the caller's asserted identities, None for an
        anonymous caller (which matches only rules whose peer is "*")."""
        if self._peer is not None and (
                callers is None or not any(identity_matches(self.peer, c) for c in callers)):
            return False
        if self._mno != ANY:
            try:
                if home_domain_of(caller_mno) != self._mno:
                    return False
            except ValueError:
                return False
        return self.application == ANY or self.application == application

    def to_object(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "action": str(self.action)}
        for name in ("peer", "peer_mno", "application"):
            if getattr(self, name) != ANY:
                out[name] = getattr(self, name)
        if self.expires is not None:
            out["expires"] = self.expires
        return out


@dataclass(frozen=True)
class RuleSet:
    """A whole rule set (section 6.1): at most 100 rules, ids unique."""

    rules: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        if len(self.rules) > MAX_RULES:
            raise TooManyRules(len(self.rules), MAX_RULES)
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise InvalidRuleSet("id appears twice in the set", rule.id)
            seen.add(rule.id)

    def evaluate(
        self,
        caller: str,
        caller_mno: str,
        application: str,
        now: float,
        *,
        anonymous: bool = False,
        aliases: Iterable[str] = (),
    ) -> Rule | None:
        """The rule that decides (section 6.2), None when none matches.

        `caller` and `aliases` are the network-asserted identities (RFC 3325 allows a sip: and
        a tel: one); `anonymous` (or `caller` "anonymous") matches only peer "*" rules.
        """
        callers: tuple[str, ...] | None = (caller, *aliases)
        if anonymous or caller == ANONYMOUS:
            callers = None
        best: Rule | None = None
        for rule in self.rules:
            if rule.expired(now) or not rule.matches(callers, caller_mno, application):
                continue
            if best is None or rule.specificity > best.specificity or (
                    rule.specificity == best.specificity
                    and rule.action is Decision.DENY and best.action is Decision.ALLOW):
                best = rule  # step 3: the most specific; deny wins a tie; else the first
        return best

    def without_expired(self, now: float) -> RuleSet:
        return RuleSet(tuple(r for r in self.rules if not r.expired(now)))

    def to_object(self) -> dict[str, Any]:
        return {"version": RULES_VERSION, "rules": [r.to_object() for r in self.rules]}

    def to_json(self) -> bytes:
        """The body of a PUBLISH (section 6.3), UTF-8 JSON."""
        return _json.dump(self.to_object())


def parse_rule_set(data: bytes | str | Mapping[str, Any]) -> RuleSet:
    """Parse and validate a rule set body; raises InvalidRuleSet (400) or TooManyRules (413)
    whose reason phrase names the rule and the defect (section 6.3)."""
    if isinstance(data, Mapping):
        top = dict(data)
    else:
        try:
            top = _json.load_object(data)
        except _json.JsonDefect as exc:
            raise InvalidRuleSet(f"rule set {exc}") from None
    unknown = sorted(set(top) - {"version", "rules"})
    if unknown:
        raise InvalidRuleSet(f'unknown member "{_short(unknown[0])}" in the rule set')
    if "version" not in top:
        raise InvalidRuleSet("the rule set has no version")
    if not _json.is_int(top["version"]) or top["version"] != RULES_VERSION:
        raise InvalidRuleSet(f"version {_short(top['version'])} is not supported (only 1)")
    items = top.get("rules")
    if not isinstance(items, list):
        raise InvalidRuleSet("rules must be an array")
    if len(items) > MAX_RULES:
        raise TooManyRules(len(items), MAX_RULES)
    return RuleSet(tuple(_parse_rule(item, n) for n, item in enumerate(items, 1)))


def _parse_rule(item: object, position: int) -> Rule:
    if not isinstance(item, dict):
        raise InvalidRuleSet("not a JSON object", position=position)
    rule_id = item.get("id")
    label: dict[str, Any] = (
        {"rule_id": rule_id} if isinstance(rule_id, str) and _RULE_ID.fullmatch(rule_id)
        else {"position": position})
    if rule_id is None:
        raise InvalidRuleSet("id is missing", **label)
    unknown = [name for name in item if name not in _MEMBERS]
    if unknown:
        raise InvalidRuleSet(f'unknown member "{_short(unknown[0])}"', **label)
    if "action" not in item:
        raise InvalidRuleSet("action is missing", **label)
    try:
        action = Decision(item["action"])
    except ValueError:
        raise InvalidRuleSet(f'unknown action "{_short(item["action"])}" (allow or deny)',
                             **label) from None
    try:
        return Rule(
            id=rule_id,
            action=action,
            peer=item.get("peer", ANY),
            peer_mno=item.get("peer_mno", ANY),
            application=item.get("application", ANY),
            expires=item.get("expires"),
        )
    except InvalidRuleSet as exc:
        if exc.rule_id is None and "position" in label:
            raise InvalidRuleSet(exc.rule_defect, position=position) from None
        raise


def _short(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return "".join(c if c.isprintable() and c != '"' else "?" for c in text[:40])
