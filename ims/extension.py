"""Our SIP extension's names: the option tag and the MNO-identifier header (docs/ spec).

A UE asking its operator for help sends `Require: ueconnect` (and `Supported: ueconnect`), the
peer's public identity as Request-URI and the peer's operator in `Target-MNO`:

    Target-MNO: 001-02
    Target-MNO: ims.mnc002.mcc001.3gppnetwork.org;foo=bar

The value is a PLMN ("MCC-MNC", TS 23.003 section 2.2) or a home domain (section 13.2),
followed by optional generic parameters (RFC 3261 section 25.1 `generic-param`). Parsing here
is syntax only; which operator a PLMN means needs the MNC lengths (ims.dns.plmn).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ims.sip.errors import ParseError
from ims.sip.headers import parse_params, split_list
from ims.sip.message import Request
from ims.sip.uri import Params

__all__ = [
    "OPTION_TAG",
    "TARGET_MNO",
    "InvalidTargetMno",
    "TargetMno",
    "option_tags",
    "parse_target_mno",
    "requires_extension",
    "target_mno_of",
]

OPTION_TAG = "ueconnect"
"""Our option tag (RFC 3261 section 19.2): in Require / Supported / Unsupported."""

TARGET_MNO = "Target-MNO"
"""The header naming the operator of the Request-URI's UE."""

_PLMN = re.compile(r"[0-9]{3}-?[0-9]{2,3}")
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+\.?")


class InvalidTargetMno(ParseError):
    """A Target-MNO value that is neither a PLMN nor a domain (the peer's defect: 400)."""

    def __init__(self, value: str, defect: str) -> None:
        super().__init__(f"Bad Target-MNO header ({defect}): {value[:80]!r}")
        self.value = value
        self.defect = defect


@dataclass(frozen=True, slots=True)
class TargetMno:
    """A parsed Target-MNO value: `mno_id` as written (PLMN or domain) and its parameters."""

    mno_id: str
    params: Params = ()

    @property
    def is_plmn(self) -> bool:
        return _PLMN.fullmatch(self.mno_id) is not None

    def __str__(self) -> str:
        return self.mno_id + "".join(
            f";{name}" if value is None else f";{name}={value}" for name, value in self.params
        )


def parse_target_mno(value: str) -> TargetMno:
    """Parse one Target-MNO header value; raises InvalidTargetMno."""
    head, sep, rest = value.strip().partition(";")
    mno_id = head.strip()
    if not mno_id:
        raise InvalidTargetMno(value, "empty operator identifier")
    if mno_id[0].isdigit() and not any(c.isalpha() for c in mno_id):
        if not _PLMN.fullmatch(mno_id):
            raise InvalidTargetMno(value, "a PLMN is MCC-MNC, 3 and 2 or 3 digits")
    elif not _DOMAIN.fullmatch(mno_id):
        raise InvalidTargetMno(value, "expected MCC-MNC or a home domain name")
    params: Params = ()
    if sep:
        try:
            params = parse_params(";" + rest, TARGET_MNO)
        except ParseError as exc:
            raise InvalidTargetMno(value, exc.reason) from None
    return TargetMno(mno_id.rstrip(".").lower(), params)


def target_mno_of(request: Request) -> TargetMno | None:
    """The request's Target-MNO, None when absent; raises InvalidTargetMno when there are
    several or the one there is malformed."""
    values = request.headers.get_all(TARGET_MNO)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidTargetMno(", ".join(values), "more than one Target-MNO header")
    return parse_target_mno(values[0])


def option_tags(request: Request, header: str) -> list[str]:
    """The option tags of every `header` (Require, Supported, Proxy-Require) value, as written
    (RFC 3261 section 19.2: option tags are compared case-sensitively)."""
    return [tag for value in request.headers.get_all(header) for tag in split_list(value) if tag]


def requires_extension(request: Request) -> bool:
    """The UE asks its operator for help: `Require: ueconnect`."""
    return OPTION_TAG in option_tags(request, "Require")
