"""The SIP core's error family.

As in h11, errors split into "the peer broke the protocol" (ProtocolError, carrying the status
code and reason phrase an element answers with) and "we misused the API" (LocalProtocolError).
"""

from __future__ import annotations


class SipError(Exception):
    """Base of every error raised by ims.sip."""


class ProtocolError(SipError):
    """The peer sent something the protocol forbids.

    `status_code` and `reason` are what a server would answer (RFC 3261 section 21); a response
    that is broken cannot be answered and is dropped instead (`status_code` is still 400).
    """

    status_code: int = 400

    def __init__(self, reason: str, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status_code is not None:
            self.status_code = status_code

    def __str__(self) -> str:
        return f"{self.status_code} {self.reason}"


class ParseError(ProtocolError):
    """Bytes that are not a SIP message, or a header value that breaks its grammar (400)."""


class VersionNotSupported(ParseError):
    """The SIP-Version is not SIP/2.0 (RFC 3261 section 8.2.2: 505)."""

    status_code = 505


class MessageTooLarge(ProtocolError):
    """A message or header block beyond the configured bounds (RFC 3261 section 21.5.14: 513)."""

    status_code = 513


class LocalProtocolError(SipError):
    """The caller used the API in a way the protocol forbids (a bug on our side)."""
