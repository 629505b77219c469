"""The SDP layer's error family.

Split as in `ims.sip.errors`: `SdpProtocolError` means the peer's description breaks RFC 8866,
RFC 8839 or RFC 3264 and carries the SIP status code and reason phrase an element answers with
(400 for a malformed body, 488 Not Acceptable Here for one we cannot accept, RFC 3261 section
21.4.26); `SdpUsageError` means our own code built something the protocol forbids.
"""

from __future__ import annotations


class SdpError(Exception):
    """Base of every error raised by ims.sdp."""


class SdpProtocolError(SdpError):
    """The peer's session description breaks a rule; `status_code` and `reason` are the SIP
    response an element answers with."""

    status_code: int = 400

    def __init__(self, reason: str, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status_code is not None:
            self.status_code = status_code

    def __str__(self) -> str:
        return f"{self.status_code} {self.reason}"


class SdpParseError(SdpProtocolError):
    """A line that breaks the RFC 8866 grammar or line order, or an ICE attribute that breaks
    RFC 8839 (400). `line_number` counts from 1; `defect` says what is wrong with that line."""

    def __init__(self, line_number: int, defect: str, *, line_type: str | None = None) -> None:
        where = f"SDP line {line_number}" + (f" ({line_type}=)" if line_type else "")
        super().__init__(f"{where}: {defect}")
        self.line_number = line_number
        self.line_type = line_type
        self.defect = defect


class SdpTooLarge(SdpParseError):
    """A description beyond the configured bounds (size, lines, media, candidates): 488, the
    body is well formed perhaps but not acceptable here."""

    status_code = 488


class SdpNegotiationError(SdpProtocolError):
    """An offer with no stream we can accept, or an answer that does not match its offer
    (RFC 3264 sections 5 and 6): 488 Not Acceptable Here."""

    status_code = 488


class SdpUsageError(SdpError, ValueError):
    """Our own code built a field, line or description the protocol forbids (a bug here, not
    the peer's fault). The parser turns it into `SdpParseError` with the line number."""
