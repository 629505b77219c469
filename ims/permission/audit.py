"""What the permission function records for every decision (spec section 11).

A `DecisionRecord` says when, who called (the asserted identity and its operator), whom, for
which application, the outcome, how it was reached (`How` and a `detail`: the rule id, the
answering contact, the inquiry a cached decision came from) and the inquiry identifier.
An inquiry the caller cancelled is recorded too (`Outcome.CANCELLED`, `How.CANCEL`).
Records stay at the operator (the store's `decisions` table); `shown_caller` is what the
subscriber may be shown, which hides a caller that asked for privacy (RFC 3323).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from ims.permission.errors import PermissionUsageError
from ims.permission.outcomes import Outcome
from ims.permission.rules import ANONYMOUS

__all__ = ["DecisionRecord", "How"]


class How(enum.StrEnum):
    """How a decision was reached; `DecisionRecord.detail` names the particular."""

    RULE = "rule"  # detail: the rule id (section 6.2)
    CACHE = "cache"  # detail: the inquiry whose answer was cached (section 5.5)
    CONTACT = "contact"  # detail: the contact URI that answered (section 5.1 step 5)
    DEADLINE = "deadline"  # silence until the deadline (section 5.1 step 5)
    CONTACTS_FAILED = "contacts failed"  # every inquiry's transaction failed (section 5.2)
    NOT_REGISTERED = "not registered"  # section 5.1 step 1
    NO_CAPABLE_CONTACT = "no ueconnect contact"  # section 5.1 step 4
    LIMIT = "open inquiry limit"  # section 11, resource exhaustion
    CANCEL = "caller's CANCEL"  # the caller cancelled during the inquiry (section 5.5)


@dataclass(frozen=True)
class DecisionRecord:
    """One decision. `at` is seconds since the epoch; `call_id` the INVITE's Call-ID."""

    at: float
    call_id: str
    caller: str
    caller_mno: str
    callee: str
    application: str
    outcome: Outcome
    how: How
    detail: str | None = None
    inquiry: str | None = None
    anonymous: bool = False
    note: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.at, bool) or not isinstance(self.at, int | float) or not math.isfinite(
                self.at):
            raise PermissionUsageError(f"a decision's time must be finite seconds, not "
                                       f"{self.at!r}")
        try:
            object.__setattr__(self, "outcome", Outcome(self.outcome))
            object.__setattr__(self, "how", How(self.how))
        except ValueError as exc:
            raise PermissionUsageError(f"decision record: {exc}") from None
        for name in ("caller", "caller_mno", "callee", "application"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise PermissionUsageError(f"a decision record needs a non-empty {name}")

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOWED

    @property
    def rule_id(self) -> str | None:
        return self.detail if self.how is How.RULE else None

    @property
    def shown_caller(self) -> str:
        """The caller as the callee may see it (section 11, privacy)."""
        return ANONYMOUS if self.anonymous else self.caller
