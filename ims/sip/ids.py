"""Identifiers a UA or proxy mints: Via branch, From/To tag, Call-ID (RFC 3261 sections 8.1.1.4,
8.1.1.7, 19.3).

All randomness comes from an injected source (`RandomSource`, the signature of
`secrets.token_bytes`), so tests are deterministic and the core reads nothing from the OS
itself.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from dataclasses import dataclass

RandomSource = Callable[[int], bytes]
"""Returns that many random bytes; `secrets.token_bytes` in production."""

# RFC 3261 section 8.1.1.7: every branch minted by an RFC 3261 element starts with this.
BRANCH_MAGIC_COOKIE = "z9hG4bK"

# Bytes of randomness per identifier. Section 19.3 asks at least 32 bits for tags; branch and
# Call-ID must be unique across space and time (8.1.1.4, 8.1.1.7), so they get 128 bits.
TAG_BYTES = 8
BRANCH_BYTES = 16
CALL_ID_BYTES = 16


def _token(random: RandomSource, size: int) -> str:
    """`size` random bytes as lower-case base32 without padding: all characters are `token`
    and `word` characters (RFC 3261 section 25.1), safe in a Via param, tag and Call-ID."""
    data = random(size)
    if len(data) != size:
        raise ValueError(f"random source returned {len(data)} bytes, {size} were asked")
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def new_branch(random: RandomSource) -> str:
    """A Via branch: the magic cookie and 128 random bits (section 8.1.1.7)."""
    return BRANCH_MAGIC_COOKIE + _token(random, BRANCH_BYTES)


def new_tag(random: RandomSource) -> str:
    """A From/To tag with 64 random bits (section 19.3 requires at least 32)."""
    return _token(random, TAG_BYTES)


def new_call_id(random: RandomSource, host: str | None = None) -> str:
    """A Call-ID, `random@host` when a host is given (section 8.1.1.4 recommends it)."""
    local = _token(random, CALL_ID_BYTES)
    return local if host is None else f"{local}@{host}"


def is_rfc3261_branch(branch: str | None) -> bool:
    """True when `branch` carries the magic cookie, i.e. it is unique per transaction
    (section 17.2.3); otherwise a peer is matched by the RFC 2543 rules."""
    return branch is not None and branch.startswith(BRANCH_MAGIC_COOKIE)


@dataclass(frozen=True, slots=True)
class IdSource:
    """The injected random source bundled with the three id makers, to hand to a UA core."""

    random: RandomSource = secrets.token_bytes

    def branch(self) -> str:
        return new_branch(self.random)

    def tag(self) -> str:
        return new_tag(self.random)

    def call_id(self, host: str | None = None) -> str:
        return new_call_id(self.random, host)
