"""The permission layer's error family.

As in h11: `PermissionProtocolError` is a peer's defect (a malformed body or rule set sent by
a UE), carrying the SIP status and reason phrase to answer with; `PermissionUsageError` is our
own API misuse (a bug or a bad configuration), never a network condition.
"""

from __future__ import annotations

__all__ = [
    "InvalidBody",
    "InvalidRuleSet",
    "PermissionFunctionError",
    "PermissionProtocolError",
    "PermissionUsageError",
    "TooManyRules",
    "UnsupportedBody",
]


class PermissionFunctionError(Exception):
    """Base of every error raised by ims.permission."""


class PermissionProtocolError(PermissionFunctionError):
    """A UE sent something the spec does not allow; answer `status_code` `reason_phrase`."""

    status_code: int = 400

    def __init__(self, defect: str, status_code: int | None = None) -> None:
        super().__init__(defect)
        self.defect = defect
        if status_code is not None:
            self.status_code = status_code

    @property
    def reason_phrase(self) -> str:
        return f"{_PHRASES.get(self.status_code, 'Bad Request')} ({self.defect})"


class InvalidBody(PermissionProtocolError):
    """An inquiry, answer or withdrawal body that is not what section 5 says (400)."""

    def __init__(self, kind: str, defect: str) -> None:
        super().__init__(f"{kind} body: {defect}")
        self.kind = kind


class UnsupportedBody(PermissionProtocolError):
    """A media type this side does not take (415, RFC 3261 section 21.4.13)."""

    status_code = 415

    def __init__(self, content_type: str, expected: str) -> None:
        super().__init__(f"{content_type or 'no Content-Type'} is not {expected}")
        self.content_type = content_type


class InvalidRuleSet(PermissionProtocolError):
    """A rule set rejected as a whole (section 6.3: 400 naming the rule and the defect)."""

    def __init__(
        self, defect: str, rule_id: str | None = None, position: int | None = None
    ) -> None:
        if rule_id is not None:
            where = f"rule {_quote(rule_id)}: "
        elif position is not None:
            where = f"rule #{position}: "  # a rule without a usable id: its place, from 1
        else:
            where = ""
        super().__init__(where + defect)
        self.rule_id = rule_id
        self.position = position
        self.rule_defect = defect


class TooManyRules(InvalidRuleSet):
    """More rules than section 6.1 allows (413)."""

    status_code = 413

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"{count} rules, at most {limit} are allowed")
        self.count = count
        self.limit = limit


class PermissionUsageError(PermissionFunctionError, ValueError):
    """The caller of this API passed something malformed (not a peer's defect)."""


_PHRASES = {400: "Bad Request", 413: "Request Entity Too Large", 415: "Unsupported Media Type"}


def _quote(text: str) -> str:
    # The reason phrase is a single header line: keep it printable and short.
    shown = "".join(c if c.isprintable() and c != '"' else "?" for c in text[:64])
    return f'"{shown}"'
