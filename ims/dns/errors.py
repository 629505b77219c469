"""The DNS layer's error family.

Three branches, kept apart as in h11: `LookupFailure` (the DNS said no, or did not answer: what
a caller maps to a SIP final response), `ZoneFileError` (our own master files are broken: stops
the server at start) and `DnsUsageError` (the caller passed something malformed: a bug or bad
user input, never a network condition). `NaptrRegexpError` is a peer's defect in one record; the
locator logs and skips it, it never reaches the caller.
"""

from __future__ import annotations

from pathlib import Path


class DnsError(Exception):
    """Base of every error raised by ims.dns."""


class LookupFailure(DnsError):
    """A lookup ended without a usable answer.

    `sip_status` is the final response an element answers with when this failure stops a
    request (the mapping of the operators' issue).
    """

    sip_status: int = 503


class NoSuchNumber(LookupFailure):
    """ENUM has no usable SIP URI for the number (SIP 404 Not Found)."""

    sip_status = 404

    def __init__(self, e164: str, reason: str) -> None:
        super().__init__(f"no SIP URI for {e164} in ENUM: {reason}")
        self.e164 = e164
        self.reason = reason


class NoSuchOperator(LookupFailure):
    """The operator's home domain does not exist (SIP 604 Does Not Exist Anywhere)."""

    sip_status = 604

    def __init__(self, mno_id: str, reason: str) -> None:
        super().__init__(f"no operator {mno_id!r}: {reason}")
        self.mno_id = mno_id
        self.reason = reason


class NoUsableTarget(LookupFailure):
    """The domain exists but RFC 3263 yields no address to try (SIP 503 Service Unavailable)."""

    sip_status = 503

    def __init__(self, domain: str, reason: str) -> None:
        super().__init__(f"no usable SIP server for {domain}: {reason}")
        self.domain = domain
        self.reason = reason


class DnsTimeout(LookupFailure):
    """No configured nameserver answered in time.

    SIP 504 Server Time-out: "did not receive a timely response from an external server it
    accessed" (RFC 3261 section 21.5.5).
    """

    sip_status = 504

    def __init__(self, qname: str, rdtype: str, nameservers: str) -> None:
        super().__init__(
            f"DNS timeout: no answer for {qname} {rdtype} from {nameservers}; "
            "check that the DNS server runs and the locator points at it"
        )
        self.qname = qname
        self.rdtype = rdtype


class DnsServerFailure(LookupFailure):
    """Every nameserver answered with an error rcode (SERVFAIL, REFUSED, ...) (SIP 503)."""

    sip_status = 503

    def __init__(self, qname: str, rdtype: str, detail: str) -> None:
        super().__init__(f"DNS server failure for {qname} {rdtype}: {detail}")
        self.qname = qname
        self.rdtype = rdtype


class ZoneFileError(DnsError):
    """A master file cannot be served; names the file, the line (when known) and the defect."""

    def __init__(self, path: Path, line: int | None, defect: str) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {defect}")
        self.path = path
        self.line = line
        self.defect = defect


class NaptrRegexpError(DnsError):
    """A NAPTR regexp field breaks RFC 3402 section 3.2 (a peer's defect: skip the record)."""

    def __init__(self, regexp: str, defect: str) -> None:
        super().__init__(f"malformed NAPTR regexp {regexp!r}: {defect}")
        self.regexp = regexp
        self.defect = defect


class DnsUsageError(DnsError, ValueError):
    """The caller passed a malformed argument (not a network or peer condition)."""


class InvalidNumber(DnsUsageError):
    """Not an E.164 number in the `+` form (RFC 6116 section 2.4)."""

    def __init__(self, text: str, defect: str) -> None:
        super().__init__(f"not an E.164 number {text!r}: {defect}")
        self.text = text


class InvalidMnoId(DnsUsageError):
    """Not a PLMN identifier (MCC-MNC) nor a domain name."""

    def __init__(self, text: str, defect: str) -> None:
        super().__init__(f"not an MNO identifier {text!r}: {defect}")
        self.text = text
