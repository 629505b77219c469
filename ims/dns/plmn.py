"""PLMN identifiers and IMS home domains (3GPP TS 23.003).

The MNC length (2 or 3 digits) is a property of the numbering plan of each MCC, so it comes from
configuration; the digits a user typed never decide it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ims.dns.errors import InvalidMnoId

_DIGITS = re.compile(r"[0-9]+")
# A host name as RFC 1123 section 2.1 allows (letters, digits, hyphens), at least two labels.
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+\.?")


@dataclass(frozen=True)
class Plmn:
    """A PLMN identity: MCC (3 digits) and MNC (2 or 3 digits), TS 23.003 section 2.2."""

    mcc: str
    mnc: str

    def __post_init__(self) -> None:
        if len(self.mcc) != 3 or not _DIGITS.fullmatch(self.mcc):
            raise InvalidMnoId(f"{self.mcc}-{self.mnc}", "the MCC must be 3 digits")
        if len(self.mnc) not in (2, 3) or not _DIGITS.fullmatch(self.mnc):
            raise InvalidMnoId(f"{self.mcc}-{self.mnc}", "the MNC must be 2 or 3 digits")

    def __str__(self) -> str:
        return f"{self.mcc}-{self.mnc}"

    @property
    def home_domain(self) -> str:
        return home_domain(self.mcc, self.mnc, len(self.mnc))


def home_domain(mcc: str, mnc: str, mnc_digits: int) -> str:
    """The IMS home network domain, `ims.mnc<MNC>.mcc<MCC>.3gppnetwork.org`.

    TS 23.003 section 13.2: the MNC is written with 3 digits, a 2-digit MNC gets a leading zero.
    `mnc_digits` is the configured MNC length for this MCC; `mnc` must have exactly that many.
    """
    if mnc_digits not in (2, 3):
        raise InvalidMnoId(f"{mcc}-{mnc}", f"MNC length must be 2 or 3, not {mnc_digits}")
    if len(mnc) != mnc_digits:
        raise InvalidMnoId(
            f"{mcc}-{mnc}",
            f"the MNC {mnc!r} has {len(mnc)} digits but MCC {mcc} uses {mnc_digits}-digit MNCs",
        )
    plmn = Plmn(mcc, mnc)
    return f"ims.mnc{plmn.mnc.zfill(3)}.mcc{plmn.mcc}.3gppnetwork.org"


def parse_plmn(text: str, mnc_lengths: Mapping[str, int]) -> Plmn:
    """Parse `MCC-MNC` (e.g. "001-02") or the concatenated `MCCMNC` form ("00102").

    `mnc_lengths` maps each MCC to its MNC length; an MCC missing from it is refused, because
    a concatenated 6-digit identity is ambiguous without it.
    """
    mcc, sep, mnc = text.partition("-")
    if not sep:
        if not _DIGITS.fullmatch(text) or len(text) not in (5, 6):
            raise InvalidMnoId(text, "expected MCC-MNC, MCCMNC or a home domain")
        mcc, mnc = text[:3], text[3:]
    if len(mcc) != 3 or not _DIGITS.fullmatch(mcc):
        raise InvalidMnoId(text, "the MCC must be 3 digits")
    length = mnc_lengths.get(mcc)
    if length is None:
        raise InvalidMnoId(
            text, f"MCC {mcc} has no configured MNC length (add it to mnc_lengths: 2 or 3)"
        )
    if len(mnc) != length or not _DIGITS.fullmatch(mnc):
        raise InvalidMnoId(text, f"MCC {mcc} uses {length}-digit MNCs, got {mnc!r}")
    return Plmn(mcc, mnc)


def mno_domain(mno_id: str, mnc_lengths: Mapping[str, int]) -> str:
    """The home domain for an MNO identifier: a PLMN (either form) or a home domain itself."""
    text = mno_id.strip()
    if text and (text[0].isdigit() and not any(c.isalpha() for c in text)):
        return parse_plmn(text, mnc_lengths).home_domain
    if not _DOMAIN.fullmatch(text):
        raise InvalidMnoId(mno_id, "expected MCC-MNC (e.g. 001-02), MCCMNC or a domain name")
    return text.rstrip(".").lower()
