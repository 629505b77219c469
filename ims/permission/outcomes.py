"""Permission decisions and what the caller receives for each outcome (spec section 7).

`Decision` is the permission decision of section 1.1 (a rule's `action`, an answer's
`decision`). `Outcome` is every way a `Require: ueconnect` INVITE can end; `response_of`
gives its final response: status, reason phrase and the RFC 3326 Reason header value
`ueconnect;cause=N[;text="..."]` that lets a UE tell refusals apart without parsing phrases.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ims.extension import OPTION_TAG

__all__ = [
    "REASON_PROTOCOL",
    "Decision",
    "FinalResponse",
    "Outcome",
    "response_of",
]

REASON_PROTOCOL = OPTION_TAG
"""The Reason header protocol value of section 12 (RFC 3326 section 2)."""


class Decision(enum.StrEnum):
    """allow or deny (spec section 1.1)."""

    ALLOW = "allow"
    DENY = "deny"


class Outcome(enum.StrEnum):
    """How a request for a connection ended; values are what the audit records."""

    ALLOWED = "allowed"  # permission given; 200 once the connection is set up
    DENIED_BY_RULE = "denied by rule"
    DENIED_BY_CALLEE = "denied by the callee"
    NO_ANSWER = "no answer in time"
    NOT_REGISTERED = "not registered"
    CALLEE_LACKS_EXTENSION = "callee lacks the extension"
    OPERATOR_LACKS_EXTENSION = "operator lacks the extension"
    UNKNOWN_NUMBER = "unknown number"
    UNKNOWN_OPERATOR = "unknown operator"
    PEER_UNREACHABLE = "peer operator unreachable"
    NO_DATA_PATH = "no data path"
    TOO_MANY_INQUIRIES = "too many inquiries"
    CANCELLED = "cancelled by the caller"  # a CANCEL ended the inquiry (section 5.5)

    @property
    def allowed(self) -> bool:
        return self is Outcome.ALLOWED


@dataclass(frozen=True, slots=True)
class FinalResponse:
    """The final response for an outcome. `reason` is the Reason header value (None for the
    200); `unsupported` asks for `Unsupported: ueconnect` (RFC 3261 section 20.40);
    `retry_after` asks for a Retry-After header (its value is the operator's choice)."""

    status_code: int
    reason_phrase: str
    cause: int | None
    reason: str | None
    unsupported: bool = False
    retry_after: bool = False


def _refusal(
    status: int, phrase: str, cause: int, text: str | None = None, **flags: bool
) -> FinalResponse:
    value = f"{REASON_PROTOCOL};cause={cause}"
    if text is not None:
        value += f';text="{text}"'
    return FinalResponse(status, phrase, cause, value, **flags)


# Section 7, row by row.
_RESPONSES: dict[Outcome, FinalResponse] = {
    Outcome.ALLOWED: FinalResponse(200, "OK", None, None),
    Outcome.DENIED_BY_RULE: _refusal(
        403, "Forbidden (denied by the callee's rule)", 1, "denied by rule"),
    Outcome.DENIED_BY_CALLEE: _refusal(
        603, "Decline (denied by the callee)", 2, "denied by the callee"),
    Outcome.NO_ANSWER: _refusal(
        480, "Temporarily Unavailable (no permission answer)", 3, "no answer in time"),
    Outcome.NOT_REGISTERED: _refusal(
        480, "Temporarily Unavailable (callee not registered)", 4, "not registered"),
    Outcome.CALLEE_LACKS_EXTENSION: _refusal(
        420, "Bad Extension (callee lacks ueconnect)", 5, "callee lacks the extension",
        unsupported=True),
    Outcome.OPERATOR_LACKS_EXTENSION: _refusal(
        420, "Bad Extension (callee's operator lacks ueconnect)", 6,
        "operator lacks the extension", unsupported=True),
    Outcome.UNKNOWN_NUMBER: _refusal(404, "Not Found (no such number)", 7),
    Outcome.UNKNOWN_OPERATOR: _refusal(604, "Does Not Exist Anywhere (no such operator)", 8),
    Outcome.PEER_UNREACHABLE: _refusal(
        503, "Service Unavailable (peer operator unreachable)", 9, retry_after=True),
    Outcome.NO_DATA_PATH: _refusal(488, "Not Acceptable Here (no data path)", 10),
    Outcome.TOO_MANY_INQUIRIES: _refusal(
        486, "Busy Here (too many permission inquiries)", 11, "too many inquiries"),
    # RFC 3261 section 9.2 / 16.10: the proxy that received the CANCEL answers 487 itself.
    Outcome.CANCELLED: FinalResponse(487, "Request Terminated", None, None),
}


def response_of(outcome: Outcome) -> FinalResponse:
    """The final response section 7 gives for `outcome`."""
    return _RESPONSES[outcome]
