"""The inquiry, answer and withdrawal bodies (spec sections 5.2, 5.3, 5.5) and media types.

Encoding is a pure pair per body: `encode(x) -> bytes`, `parse_*(bytes) -> x` raising
InvalidBody (400) with the defect named. Members this version does not know are ignored (a
later version may add some); members it knows are checked for type and range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ims.permission import _json
from ims.permission.errors import InvalidBody, UnsupportedBody
from ims.permission.outcomes import Decision
from ims.permission.rules import ANONYMOUS, ANY, home_domain_of
from ims.sip import abnf
from ims.sip.errors import ParseError
from ims.sip.uri import SipUri, TelUri, parse_uri

__all__ = [
    "ANSWER_TYPE",
    "BODY_VERSION",
    "INQUIRY_TYPE",
    "MAX_CACHE_FOR",
    "MAX_DEADLINE",
    "MAX_NOTE",
    "RULES_EVENT",
    "RULES_TYPE",
    "Answer",
    "Inquiry",
    "Withdrawal",
    "check_content_type",
    "encode",
    "parse_answer",
    "parse_inquiry_body",
]

INQUIRY_TYPE = "application/vnd.ueconnect.inquiry+json"  # inquiries and withdrawals
ANSWER_TYPE = "application/vnd.ueconnect.answer+json"
RULES_TYPE = "application/vnd.ueconnect.rules+json"  # PUBLISH, section 6.3
RULES_EVENT = "ueconnect-rules"  # the PUBLISH's Event package, section 6.3

BODY_VERSION = 1
MAX_DEADLINE = 30  # section 5.5: the operator waits at most 30 s
MAX_CACHE_FOR = 86400  # section 5.3
MAX_NOTE = 200  # section 5.3
_INQUIRY_ID = re.compile(r"[A-Za-z0-9_\-]{16,64}")  # section 5.2


def check_content_type(content_type: str | None, expected: str) -> None:
    """Raise UnsupportedBody (415) unless `content_type` is `expected` (media types compare
    case-insensitively, parameters aside: RFC 3261 section 7.3.1 / RFC 2045 section 5.1)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != expected:
        raise UnsupportedBody(content_type or "", expected)


# --- member checks (each returns the value or raises ValueError with the defect) -------------


def _identity(value: str) -> str:
    try:
        uri = parse_uri(value)
    except ParseError:
        raise ValueError("is not a URI") from None
    if not isinstance(uri, SipUri | TelUri):
        raise ValueError("is not a sip:, sips: or tel: URI")
    return value


def _sip_uri(value: str) -> str:
    try:
        uri = parse_uri(value)
    except ParseError:
        raise ValueError("is not a URI") from None
    if not isinstance(uri, SipUri):
        raise ValueError("is not a sip: or sips: URI")
    return value


def _inquiry_id(value: str) -> str:
    if not _INQUIRY_ID.fullmatch(value):
        raise ValueError("must be 16 to 64 characters of A-Z a-z 0-9 _ -")
    return value


def _caller(value: str) -> str:
    return value if value == ANONYMOUS else _identity(value)


def _domain(value: str) -> str:
    home_domain_of(value)  # raises ValueError naming the defect
    return value


def _application(value: str) -> str:
    if value != ANY and not abnf.TOKEN_RE.fullmatch(value):
        raise ValueError('is not "*" nor a token (RFC 3261 section 25.1)')
    return value


# --- the bodies -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Inquiry:
    """Section 5.2: may `caller` (at `caller_mno`) connect to `callee` for `application`?"""

    inquiry: str
    caller: str
    caller_mno: str
    callee: str
    application: str
    deadline: int
    reply_to: str

    def __post_init__(self) -> None:
        _validate(self, "inquiry", _INQUIRY_MEMBERS)
        if not 1 <= self.deadline <= MAX_DEADLINE:
            raise InvalidBody("inquiry", f"deadline {self.deadline} is not 1 to {MAX_DEADLINE}")

    def encode(self) -> bytes:
        return _json.dump({
            "version": BODY_VERSION, "inquiry": self.inquiry, "caller": self.caller,
            "caller_mno": self.caller_mno, "callee": self.callee,
            "application": self.application, "deadline": self.deadline,
            "reply_to": self.reply_to,
        })


@dataclass(frozen=True)
class Withdrawal:
    """Section 5.5: the inquiry is decided elsewhere; the UE stops asking its user."""

    inquiry: str

    def __post_init__(self) -> None:
        _validate(self, "withdrawal", (("inquiry", str, _inquiry_id),))

    def encode(self) -> bytes:
        return _json.dump({"version": BODY_VERSION, "inquiry": self.inquiry, "withdrawn": True})


@dataclass(frozen=True)
class Answer:
    """Section 5.3: the UE's decision on an inquiry; `cache_for` seconds of reuse."""

    inquiry: str
    decision: Decision
    cache_for: int = 0
    note: str | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "decision", Decision(self.decision))
        except ValueError:
            raise InvalidBody("answer", f"decision {_short(self.decision)} is not "
                              '"allow" nor "deny"') from None
        _validate(self, "answer", _ANSWER_MEMBERS)
        if not 0 <= self.cache_for <= MAX_CACHE_FOR:
            raise InvalidBody("answer", f"cache_for {self.cache_for} is not 0 to {MAX_CACHE_FOR}")
        if self.note is not None and (len(self.note) > MAX_NOTE or not self.note.isprintable()):
            raise InvalidBody("answer", f"note must be printable text of at most {MAX_NOTE} "
                              "characters")

    def encode(self) -> bytes:
        out: dict[str, Any] = {"version": BODY_VERSION, "inquiry": self.inquiry,
                               "decision": str(self.decision)}
        if self.cache_for:
            out["cache_for"] = self.cache_for
        if self.note is not None:
            out["note"] = self.note
        return _json.dump(out)


def encode(body: Inquiry | Withdrawal | Answer) -> bytes:
    return body.encode()


def parse_inquiry_body(data: bytes | str) -> Inquiry | Withdrawal:
    """A body of INQUIRY_TYPE: an inquiry, or a withdrawal (`"withdrawn": true`)."""
    obj = _load(data, "inquiry")
    if "withdrawn" in obj:
        if obj["withdrawn"] is not True:
            raise InvalidBody("withdrawal", "withdrawn must be true")
        return Withdrawal(_member(obj, "withdrawal", "inquiry", str))
    return Inquiry(**{name: _member(obj, "inquiry", name, kind)
                      for name, kind, _check in _INQUIRY_MEMBERS})


def parse_answer(data: bytes | str) -> Answer:
    """A body of ANSWER_TYPE."""
    obj = _load(data, "answer")
    note = obj.get("note")
    if note is not None and not isinstance(note, str):
        raise InvalidBody("answer", "note must be a string")
    cache_for = obj.get("cache_for", 0)
    if not _json.is_int(cache_for):
        raise InvalidBody("answer", "cache_for must be an integer number of seconds")
    return Answer(
        inquiry=_member(obj, "answer", "inquiry", str),
        decision=_member(obj, "answer", "decision", str),
        cache_for=cache_for,
        note=note,
    )


# --- plumbing -------------------------------------------------------------------------------

_Check = tuple[str, type, Any]
_INQUIRY_MEMBERS: tuple[_Check, ...] = (
    ("inquiry", str, _inquiry_id),
    ("caller", str, _caller),
    ("caller_mno", str, _domain),
    ("callee", str, _identity),
    ("application", str, _application),
    ("deadline", int, None),
    ("reply_to", str, _sip_uri),
)
_ANSWER_MEMBERS: tuple[_Check, ...] = (("inquiry", str, _inquiry_id),)


def _load(data: bytes | str, kind: str) -> dict[str, Any]:
    try:
        obj = _json.load_object(data)
    except _json.JsonDefect as exc:
        raise InvalidBody(kind, str(exc)) from None
    version = obj.get("version")
    if version is None:
        raise InvalidBody(kind, "version is missing")
    if not _json.is_int(version) or version != BODY_VERSION:
        raise InvalidBody(kind, f"version {_short(version)} is not supported (only 1)")
    return obj


def _member(obj: dict[str, Any], kind: str, name: str, expected: type) -> Any:
    if name not in obj:
        raise InvalidBody(kind, f"{name} is missing")
    value = obj[name]
    ok = _json.is_int(value) if expected is int else isinstance(value, expected)
    if not ok:
        raise InvalidBody(kind, f"{name} must be {_kind(expected)}")
    return value


def _kind(expected: type) -> str:
    return "an integer" if expected is int else "a string"


def _validate(body: object, kind: str, members: tuple[_Check, ...]) -> None:
    for name, expected, check in members:
        value = getattr(body, name)
        ok = _json.is_int(value) if expected is int else isinstance(value, expected)
        if not ok:
            raise InvalidBody(kind, f"{name} must be {_kind(expected)}")
        if check is not None:
            try:
                check(value)
            except ValueError as exc:
                raise InvalidBody(kind, f"{name} {_short(value)} {exc}") from None


def _short(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    shown = "".join(c if c.isprintable() and c != '"' else "?" for c in text[:60])
    return f'"{shown}"'


