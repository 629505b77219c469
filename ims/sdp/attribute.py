"""The `a=` line (RFC 8866 section 5.13) and the address forms SDP fields share (section 9,
"generic sub-rules: addressing")."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from . import grammar
from .errors import SdpUsageError

# RFC 1035 section 2.3.1 labels: letters, digits, hyphens, not starting or ending in a hyphen.
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?")
_DOTTED_NUMERIC_RE = re.compile(r"[0-9.]+")


@dataclass(frozen=True, slots=True)
class Attribute:
    """`a=<name>` (a property attribute) or `a=<name>:<value>` (a value attribute).

    Unknown attributes are kept as they came (RFC 8866 section 5.13: a receiver ignores the
    ones it does not understand, and they must survive our rewriting of the description)."""

    name: str
    value: str | None = None

    def __post_init__(self) -> None:
        if not grammar.TOKEN_RE.fullmatch(self.name):
            raise SdpUsageError(f"attribute name {self.name!r} is not a token (RFC 8866 §9)")
        if self.value is not None and not grammar.TEXT_RE.fullmatch(self.value):
            raise SdpUsageError(
                f"a={self.name} value must be one or more characters without NUL, CR or LF"
            )

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"

    @classmethod
    def parse(cls, text: str) -> Attribute:
        """The value of an `a=` line. Raises SdpUsageError when it breaks the grammar."""
        name, colon, value = text.partition(":")
        return cls(name, value if colon else None)


def address_version(address: str) -> int | None:
    """4 or 6 for an IP address as SDP writes it (IPv6 without brackets, no zone), None for an
    FQDN (RFC 8866 section 9: FQDN = 4*(alpha-numeric / "-" / ".")). Raises SdpUsageError
    for anything else, including dotted numbers that are not an IPv4 address."""
    if ":" in address:
        if "%" in address:
            raise SdpUsageError(f"IPv6 address {address!r} carries a zone, which SDP cannot")
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            raise SdpUsageError(f"{address!r} is not an IPv6 address") from None
        return 6
    if _DOTTED_NUMERIC_RE.fullmatch(address):
        if not grammar.IP4_ADDRESS_RE.fullmatch(address):
            raise SdpUsageError(f"{address!r} is not an IPv4 address")
        return 4
    if is_fqdn(address):
        return None
    raise SdpUsageError(f"{address!r} is neither an IP address nor a domain name")


def is_fqdn(address: str) -> bool:
    """True for a domain name in the RFC 8866 FQDN form with RFC 1035 labels."""
    if not grammar.FQDN_RE.fullmatch(address) or len(address) > 254:
        return False
    labels = address[:-1].split(".") if address.endswith(".") else address.split(".")
    if _DOTTED_NUMERIC_RE.fullmatch(address):
        return False
    return all(_LABEL_RE.fullmatch(label) for label in labels)
