"""The UE API's errors: one family, `UeError`, with typed leaves a game can act on.

- `ConnectError` and its leaves: `connect()` did not give a connection. `ConnectRefused` is a
  final non-2xx response: one subclass per cause of docs/extension.md section 7 (the
  `Reason: ueconnect;cause=N` header field, RFC 3326, tells them apart, never the phrase) and
  `OtherRefusal` for any other final response. `ConnectivityFailed`: the signalling succeeded
  but no ICE candidate pair worked in time. `InvalidAnswer`: the peer's answer broke the rules
  (its fault, not ours).
- `ConnectionClosed`: send/recv on a connection that ended (locally, by the peer's BYE, or by
  consent loss, RFC 7675).
- `RegistrationFailed`: the operator refused or never answered the REGISTER.
- `UeUsageError`: the application misused the API (kept apart from the peer's faults).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ims.permission.outcomes import REASON_PROTOCOL
from ims.sip import headers

__all__ = [
    "CalleeLacksExtension",
    "ConnectError",
    "ConnectRefused",
    "ConnectionClosed",
    "ConnectivityFailed",
    "DeniedByCallee",
    "DeniedByRule",
    "InvalidAnswer",
    "NoAnswerInTime",
    "NoDataPath",
    "NotRegistered",
    "OperatorLacksExtension",
    "OperatorUnreachable",
    "OtherRefusal",
    "RegistrationFailed",
    "TooManyInquiries",
    "UeError",
    "UeUsageError",
    "UnknownNumber",
    "UnknownOperator",
    "reason_cause",
    "refusal_of",
]


class UeError(Exception):
    """Every error the UE API raises."""


class UeUsageError(UeError):
    """The application called the API wrongly (not started, not registered, bad argument)."""


class RegistrationFailed(UeError):
    """The REGISTER ended with a final non-2xx response (or a local 408 when the P-CSCF did
    not answer)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"registration failed: {status} {reason} ({self._hint(status)})")
        self.status = status
        self.reason = reason

    @staticmethod
    def _hint(status: int) -> str:
        # Worded for both the API and the CLI: the fields are `impi`, `password` and `pcscf`
        # in UeConfig and in the [ue] table of the UE's TOML file alike.
        if status in (401, 403):  # the registrar's digest challenge was not met
            return "check impi and password in the UE's configuration"
        if status == 408:  # RFC 3261 section 8.1.3.1: no answer, Timer F
            return ("no answer: check pcscf in the UE's configuration and that the operator "
                    "runs")
        return "check impi, password and pcscf in the UE's configuration"


class ConnectError(UeError):
    """`connect()` gave no connection."""


class ConnectRefused(ConnectError):
    """A final non-2xx response to the INVITE. `status` and `reason` are the status code and
    reason phrase; `cause` the docs/extension.md section 7 cause, None when absent."""

    hint = "the request was refused"

    def __init__(self, status: int, reason: str, cause: int | None) -> None:
        cause_text = f", cause {cause}" if cause is not None else ""
        super().__init__(f"{status} {reason}{cause_text}: {self.hint}")
        self.status = status
        self.reason = reason
        self.cause = cause


class DeniedByRule(ConnectRefused):
    hint = "one of the callee's standing rules denies you (cause 1)"


class DeniedByCallee(ConnectRefused):
    hint = "the callee's UE answered deny (cause 2)"


class NoAnswerInTime(ConnectRefused):
    hint = "the callee's UE gave no permission answer before the deadline; try later (cause 3)"


class NotRegistered(ConnectRefused):
    hint = "the callee is not registered with their operator now; try later (cause 4)"


class CalleeLacksExtension(ConnectRefused):
    hint = "the callee's UE does not support ueconnect (cause 5)"


class OperatorLacksExtension(ConnectRefused):
    hint = "the callee's operator does not support ueconnect (cause 6)"


class UnknownNumber(ConnectRefused):
    hint = "no subscriber has that number; check the peer's UE identifier (cause 7)"


class UnknownOperator(ConnectRefused):
    hint = "no operator is known by that identifier; check the peer's MNO identifier (cause 8)"


class OperatorUnreachable(ConnectRefused):
    hint = "the callee's operator cannot be reached now; try later (cause 9)"


class NoDataPath(ConnectRefused):
    hint = "the operators could open no data path for this session (cause 10)"


class TooManyInquiries(ConnectRefused):
    hint = "too many permission inquiries are open for the callee; try later (cause 11)"


class OtherRefusal(ConnectRefused):
    """A final response without a known ueconnect cause (a stock UE's 486, a local 408 when
    the P-CSCF did not answer, ...)."""

    hint = "refused without a ueconnect cause"


REFUSALS: Mapping[int, type[ConnectRefused]] = MappingProxyType(
    {
        1: DeniedByRule,
        2: DeniedByCallee,
        3: NoAnswerInTime,
        4: NotRegistered,
        5: CalleeLacksExtension,
        6: OperatorLacksExtension,
        7: UnknownNumber,
        8: UnknownOperator,
        9: OperatorUnreachable,
        10: NoDataPath,
        11: TooManyInquiries,
    }
)
"""docs/extension.md section 7, cause -> error class."""


class ConnectivityFailed(ConnectError):
    """The session was accepted but no candidate pair passed its ICE checks (RFC 8445 section
    7.2) within the setup time; the session was ended with a BYE. `connect()` raises it; for
    an incoming session it goes to `UeClient.on_incoming_failed`, else `accept()` raises it,
    with `peer` (the caller's identity) set."""

    def __init__(self, pairs_tried: int, pairs_total: int, timeout: float,
                 detail: str = "", *, peer: str | None = None) -> None:
        why = f": {detail}" if detail else ""
        with_peer = f" (incoming from {peer})" if peer is not None else ""
        super().__init__(
            f"no candidate pair worked within {timeout:g} s ({pairs_tried} of {pairs_total} "
            f"pairs tried){why}{with_peer}"
        )
        self.pairs_tried = pairs_tried
        self.pairs_total = pairs_total
        self.timeout = timeout
        self.detail = detail
        self.peer = peer

    def incoming_from(self, peer: str) -> ConnectivityFailed:
        """The same failure, naming the caller of an incoming session."""
        return ConnectivityFailed(self.pairs_tried, self.pairs_total, self.timeout, self.detail,
                                  peer=peer)


class InvalidAnswer(ConnectError):
    """The peer accepted but its SDP answer is unusable (no ICE credentials, no candidate, bad
    syntax); the session was ended with a BYE."""

    def __init__(self, defect: str) -> None:
        super().__init__(f"the peer's SDP answer is unusable: {defect}")
        self.defect = defect


class ConnectionClosed(UeError):
    """The connection ended; `why` says how (closed here, the peer's BYE, consent lost)."""

    def __init__(self, why: str) -> None:
        super().__init__(f"the connection is closed: {why}")
        self.why = why


def reason_cause(values: list[str]) -> int | None:
    """The cause of the first readable `ueconnect` Reason value (RFC 3326 section 2:
    `Reason: protocol;cause=N;text="..."`, possibly several values), None when none is
    readable."""
    return headers.reason_cause(values, REASON_PROTOCOL)


# Without a ueconnect Reason, the status codes that mean one section 7 outcome and nothing
# else in RFC 3261 (section 21.4.5 Not Found, 21.6.3 Does Not Exist Anywhere) are still read
# as that outcome; `cause` then stays None.
_STATUS_ONLY: Mapping[int, type[ConnectRefused]] = MappingProxyType(
    {404: UnknownNumber, 604: UnknownOperator}
)


def refusal_of(status: int, reason: str, reason_headers: list[str]) -> ConnectRefused:
    """The typed refusal for a final non-2xx response (status, phrase, its Reason values):
    by the ueconnect cause; without one, 404 -> UnknownNumber, 604 -> UnknownOperator,
    anything else OtherRefusal."""
    cause = reason_cause(reason_headers)
    if cause is None:
        return _STATUS_ONLY.get(status, OtherRefusal)(status, reason, None)
    return REFUSALS.get(cause, OtherRefusal)(status, reason, cause)
