"""Loading and checking the master files (RFC 1035 section 5) a server serves.

A zone set is a directory of `<origin>.zone` files (the origin is the file name). Every defect
stops the load with `ZoneFileError` naming the file, the line where it can be known and what is
wrong, so that a server never starts on half a zone set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.name
import dns.node
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.zone

from ims.dns.errors import ZoneFileError

_LINE = re.compile(r"^(?P<file>.*):(?P<line>\d+): (?P<defect>.*)$", re.DOTALL)
# Features the embedded server does not implement; refusing them is better than answering
# wrongly (the zone files in dns_zones/ need none of them).
_UNSUPPORTED_TYPES = {
    dns.rdatatype.CNAME: "CNAME (aliases are not followed by the embedded server)",
    dns.rdatatype.DNAME: "DNAME (RFC 6672 redirection is not implemented)",
}


@dataclass(frozen=True)
class ZoneSet:
    """The zones of one directory, by origin; `files` maps each origin to its master file."""

    zones: Mapping[dns.name.Name, dns.zone.Zone]
    files: Mapping[dns.name.Name, Path]

    def find_zone(self, qname: dns.name.Name) -> dns.zone.Zone | None:
        """The zone with the longest origin that contains `qname` (RFC 1034 section 4.3.2)."""
        best: dns.zone.Zone | None = None
        best_labels = -1
        for origin, zone in self.zones.items():
            if qname.is_subdomain(origin) and len(origin) > best_labels:
                best, best_labels = zone, len(origin)
        return best


def load_zone_file(path: Path, origin: dns.name.Name | None = None) -> dns.zone.Zone:
    """Parse and check one master file; the origin defaults to the file name minus `.zone`."""
    if origin is None:
        origin = dns.name.from_text(path.name.removesuffix(".zone"))
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ZoneFileError(path, line, "non-ASCII byte; master files are ASCII") from None
    except OSError as exc:
        raise ZoneFileError(path, None, f"cannot read: {exc.strerror}") from None
    try:
        zone = dns.zone.from_text(
            text, origin=origin, relativize=False, filename=str(path), check_origin=False
        )
    except dns.exception.SyntaxError as exc:
        raise _syntax_error(path, text, origin, exc) from None
    except dns.exception.DNSException as exc:
        raise ZoneFileError(path, None, str(exc)) from None
    _check_zone(path, text, zone)
    return zone


def _parses(text: str, origin: dns.name.Name) -> bool:
    try:
        dns.zone.from_text(text, origin=origin, relativize=False, check_origin=False)
    except dns.exception.DNSException:
        return False
    return True


def _syntax_error(
    path: Path, text: str, origin: dns.name.Name, exc: dns.exception.SyntaxError
) -> ZoneFileError:
    match = _LINE.match(str(exc))
    if match is None:
        return ZoneFileError(path, None, str(exc))
    line = int(match["line"])
    # dnspython counts the newline that ends the faulty record, so it reports the next line
    # when the defect is only seen at end of line; the file cut before that line tells.
    lines = text.splitlines(keepends=True)
    if line > 1 and not _parses("".join(lines[: line - 1]), origin):
        line -= 1
    source = lines[line - 1].strip() if line <= len(lines) else ""
    defect = f"{match['defect']} (in: {source})" if source else match["defect"]
    return ZoneFileError(path, line, defect)


def _line_of(text: str, zone: dns.zone.Zone, name: dns.name.Name) -> int | None:
    """Best-effort line of the first record owned by `name` (dnspython keeps no positions)."""
    relative = name.relativize(zone.origin).to_text() if zone.origin else name.to_text()
    pattern = re.compile(rf"^{re.escape(relative)}\s", re.IGNORECASE)
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line) or line.lower().startswith(name.to_text().lower()):
            return number
    return None


def _check_zone(path: Path, text: str, zone: dns.zone.Zone) -> None:
    origin = zone.origin
    assert origin is not None
    apex = zone.get_node(origin)
    if apex is None or apex.get_rdataset(dns.rdataclass.IN, dns.rdatatype.SOA) is None:
        raise ZoneFileError(path, None, f"no SOA record at the origin {origin}")
    if apex.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NS) is None:
        raise ZoneFileError(path, None, f"no NS record at the origin {origin}")
    for name, node in zone.nodes.items():
        if name.labels and name.labels[0] == b"*":
            raise ZoneFileError(
                path, _line_of(text, zone, name),
                f"{name}: wildcards (RFC 4592) are not served by the embedded server",
            )
        for rdataset in node.rdatasets:
            if rdataset.rdtype in _UNSUPPORTED_TYPES:
                raise ZoneFileError(
                    path, _line_of(text, zone, name),
                    f"{name}: {_UNSUPPORTED_TYPES[rdataset.rdtype]}",
                )
            if rdataset.rdtype == dns.rdatatype.SOA and name != origin:
                raise ZoneFileError(
                    path, _line_of(text, zone, name), f"{name}: SOA is allowed only at the origin"
                )


def load_zone_set(directory: Path) -> ZoneSet:
    """Load every `*.zone` file of `directory`; an empty or missing directory is an error."""
    if not directory.is_dir():
        raise ZoneFileError(directory, None, "not a directory of zone files")
    paths = sorted(directory.glob("*.zone"))
    if not paths:
        raise ZoneFileError(directory, None, "holds no *.zone master files")
    zones: dict[dns.name.Name, dns.zone.Zone] = {}
    files: dict[dns.name.Name, Path] = {}
    for path in paths:
        zone = load_zone_file(path)
        assert zone.origin is not None
        zones[zone.origin] = zone
        files[zone.origin] = path
    for origin, zone in zones.items():
        text = files[origin].read_text(encoding="ascii")
        for name, node in zone.nodes.items():
            # The server gives no referrals: a delegation is fine only when the child zone is
            # served too, so every name below it is answered from the child.
            delegation = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NS)
            if name != origin and delegation is not None and name not in zones:
                raise ZoneFileError(
                        files[origin], _line_of(text, zone, name),
                        f"{name}: delegation to a zone not in {directory} (the embedded "
                        "server gives no referrals; add the child zone file)",
                    )
    return ZoneSet(zones, files)


def soa_of(zone: dns.zone.Zone) -> dns.rdtypes.ANY.SOA.SOA:
    assert zone.origin is not None
    rdataset = zone.find_rdataset(zone.origin, dns.rdatatype.SOA)
    soa = rdataset[0]
    assert isinstance(soa, dns.rdtypes.ANY.SOA.SOA)
    return soa
