"""Cutting a SIP byte stream (TCP, TLS) into messages (RFC 3261 section 18.3, RFC 5626 3.5.1).

Sans-IO: `StreamFramer.feed` takes the bytes a connection read, `next_event` hands back, in
order, each complete message's bytes (for `parse_message`) and the CRLF keep-alives seen
between messages. On a stream the message ends where Content-Length says, so a missing one is
a framing error (section 18.3). Every bound (header block, body, bytes buffered) is enforced
before the bytes are kept; a broken bound raises MessageTooLarge, a broken frame ParseError,
and from then on the stream has no message boundaries left: the connection must be closed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NoReturn

from ims.sip.errors import LocalProtocolError, MessageTooLarge, ParseError, ProtocolError

_CRLF = b"\r\n"
_FOLD_RE = re.compile(rb"\r?\n[ \t]+")  # section 7.3.1: a line starting with LWS continues
_LENGTH_NAMES = (b"content-length", b"l")  # section 7.3.3: "l" is the compact form
_LENGTH_DIGITS = 10  # a longer Content-Length is beyond any bound we could configure


@dataclass(frozen=True, slots=True)
class FramingLimits:
    """Bounds on what one connection may make us hold (validated on construction)."""

    max_header_bytes: int = 32 * 1024  # start line and header fields, up to the empty line
    max_body_bytes: int = 64 * 1024
    max_buffered_bytes: int = 1024 * 1024  # undelivered bytes held at once

    def __post_init__(self) -> None:
        if self.max_header_bytes <= 0 or self.max_body_bytes < 0:
            raise ValueError("framing limits must be positive")
        if self.max_buffered_bytes < self.max_header_bytes + 4 + self.max_body_bytes:
            raise ValueError(
                "max_buffered_bytes must hold at least one message of the largest size "
                f"({self.max_header_bytes + 4 + self.max_body_bytes} bytes)"
            )


@dataclass(frozen=True, slots=True)
class MessageFramed:
    """The bytes of exactly one message, body included, ready for `parse_message`."""

    data: bytes


@dataclass(frozen=True, slots=True)
class KeepAlivePong:
    """A CRLF between messages: the pong a client awaits after its ping (RFC 5626 3.5.1).

    The first CRLF of a double CRLF is reported as a pong too, before the second one is seen;
    a server ignores pongs.
    """


@dataclass(frozen=True, slots=True)
class KeepAlivePing:
    """A double CRLF between messages: a ping the server answers with one CRLF (RFC 5626
    section 3.5.1)."""


FramingEvent = MessageFramed | KeepAlivePong | KeepAlivePing


class StreamFramer:
    """Message boundaries of one stream connection, in one direction."""

    def __init__(self, limits: FramingLimits | None = None) -> None:
        self.limits = limits if limits is not None else FramingLimits()
        self._buffer = bytearray()
        self._crlf_run = 0  # CRLFs since the last message: odd -> pong, even -> ping
        self._scanned = 0  # the head's end was not found before this offset
        self._message_size: int | None = None  # head + empty line + body, once the head is read
        self._error: ProtocolError | None = None

    @property
    def error(self) -> ProtocolError | None:
        """The framing error the stream died of, if any."""
        return self._error

    @property
    def buffered(self) -> bytes:
        """Bytes received and not yet delivered: after an error, the offending message's start
        (what `ims.sip.checks.error_response_for` builds an answer from)."""
        return bytes(self._buffer)

    def feed(self, data: bytes) -> None:
        """Add bytes read from the connection; drain `next_event` before feeding more."""
        if self._error is not None:
            raise LocalProtocolError("feed() after a framing error: the connection must close")
        if len(self._buffer) + len(data) > self.limits.max_buffered_bytes:
            self._fail(
                MessageTooLarge(
                    f"more than {self.limits.max_buffered_bytes} bytes buffered on the connection"
                )
            )
        self._buffer += data

    def next_event(self) -> FramingEvent | None:
        """The next complete message or keep-alive, None when more bytes are needed.

        Raises ParseError or MessageTooLarge (again on every later call) once the stream
        breaks a rule; the bytes are then in `buffered`.
        """
        if self._error is not None:
            raise self._error
        if self._message_size is None:
            keep_alive = self._take_keep_alive()
            if keep_alive is not None:
                return keep_alive
            self._message_size = self._read_head()
            if self._message_size is None:
                return None
        if len(self._buffer) < self._message_size:
            return None
        data = bytes(self._buffer[: self._message_size])
        del self._buffer[: self._message_size]
        self._message_size = None
        self._scanned = 0
        self._crlf_run = 0
        return MessageFramed(data)

    def _take_keep_alive(self) -> FramingEvent | None:
        # Section 7.5: CRLFs before a start line are ignored; RFC 5626 3.5.1 gives them meaning.
        buf = self._buffer
        while buf[:1] == b"\n":  # a bare LF (tolerated like the parser does): no keep-alive
            del buf[:1]
        if buf[:2] != _CRLF:
            return None
        del buf[:2]
        self._crlf_run += 1
        return KeepAlivePing() if self._crlf_run % 2 == 0 else KeepAlivePong()

    def _read_head(self) -> int | None:
        """The full size of the message whose head is at the buffer's start, once known."""
        buf = self._buffer
        if len(buf) == 0 or buf == b"\r":  # nothing yet, or a CR whose LF is still to come
            return None
        start = max(0, self._scanned - 3)
        end, mark = _find_end_of_head(buf, start)
        limit = self.limits.max_header_bytes
        if end < 0:
            if len(buf) > limit:
                self._fail(MessageTooLarge(f"header block longer than {limit} bytes"))
            self._scanned = len(buf)
            return None
        if end > limit:
            self._fail(MessageTooLarge(f"header block longer than {limit} bytes"))
        length = self._content_length(bytes(buf[:end]))
        return end + mark + length

    def _content_length(self, head: bytes) -> int:
        # Section 18.3: on a stream Content-Length is what delimits the body, so it must be
        # there; section 20.14: one value, decimal digits.
        found: int | None = None
        for line in _FOLD_RE.sub(b" ", head).split(b"\n")[1:]:
            name, colon, value = line.partition(b":")
            if not colon or name.strip(b" \t").lower() not in _LENGTH_NAMES:
                continue
            text = value.strip(b" \t\r")
            if not text.isdigit() or len(text) > _LENGTH_DIGITS:
                self._fail(ParseError(f"malformed Content-Length {_shown(text)}"))
            length = int(text)
            if found is not None and found != length:
                self._fail(ParseError("conflicting Content-Length headers"))
            found = length
        if found is None:
            self._fail(ParseError("missing Content-Length header, mandatory on stream transports"))
        if found > self.limits.max_body_bytes:
            self._fail(
                MessageTooLarge(
                    f"Content-Length {found} exceeds the limit of "
                    f"{self.limits.max_body_bytes} bytes"
                )
            )
        return found

    def _fail(self, error: ProtocolError) -> NoReturn:
        self._error = error
        raise error


def _find_end_of_head(buf: bytearray, start: int) -> tuple[int, int]:
    """(offset of the empty line, its length): the earliest CRLFCRLF, or LFLF for peers that
    end lines with a bare LF as the parser tolerates; (-1, 0) when not yet there."""
    crlf = buf.find(b"\r\n\r\n", start)
    lf = buf.find(b"\n\n", start)
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf, 2
    if crlf >= 0:
        return crlf, 4
    return -1, 0


def _shown(value: bytes) -> str:
    return repr(value[:20].decode("ascii", "replace"))
