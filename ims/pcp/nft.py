"""The PCP server's mapping table as nftables rules, in one table of ours (`inet ueconnect_pcp`).

For a mapping of internal I:i to external E:e (protocol P) admitting remote R:r:
- prerouting, NAT priority dstnat - 10: `ip saddr R P sport r ip daddr E P dport e
  dnat ip to I:i`, one rule per admitted remote (PEER: its one peer; MAP: each FILTER, or any);
- postrouting, NAT priority srcnat - 10: `ip saddr I P sport i [ip daddr R P dport r]
  snat ip to E:e`, so what the UE sends from its port leaves on the mapped external port
  (PEER: towards its peer only; MAP: towards anyone, endpoint-independent).
Our chains sit before the CGN's own NAT chains (lower priority number), and for a new
connection netfilter takes the first NAT binding made, so the CGN's masquerade (fully random
ports, endpoint-dependent) still handles everything else. Traffic to E:e from a host not
admitted is not translated and dies at the CGN (no listener), which is the filtering.

Each rule carries the comment `ueconnect-pcp <mapping id>`; removal reads the table back with
`nft -j` to find the handles. Every change is one `nft -f -` batch: atomic.

NAT rules only bind a flow's first packet; conntrack then translates the rest. So after the
rules of a mapping go (deletion, expiry, the table reset at start or removed at shutdown) its
live flows would keep crossing the CGN until their conntrack timeout, and a flow that began
before a mapping was added (an inbound probe to E:e left untranslated, the UE's masqueraded
flow from I:i) would keep its old binding. Every change is therefore followed by `conntrack -D`
for the flows of each mapping it touched (Debian package `conntrack`): the next packet is bound
afresh by whatever rules are left.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ims.pcp.codec import Endpoint, IPAddress
from ims.pcp.constants import PROTOCOL_TCP, PROTOCOL_UDP
from ims.pcp.errors import NftError
from ims.pcp.server import Mapping, MappingChanges

__all__ = [
    "CONNTRACK_PACKAGE",
    "DEFAULT_TABLE",
    "FAMILY",
    "POSTROUTING",
    "PREROUTING",
    "TAG_PREFIX",
    "ConntrackRunner",
    "InstalledRule",
    "NftMappingTable",
    "NftRunner",
    "RecordingTable",
    "Translation",
    "installed_mapping_ids",
    "listed_translations",
    "nft_address",
    "nft_family",
    "render_changes",
    "render_rules",
    "render_table",
    "rule_handles",
    "run_conntrack",
    "run_nft",
    "tag",
]

FAMILY = "inet"
DEFAULT_TABLE = "ueconnect_pcp"
TAG_PREFIX = "ueconnect-pcp "
PREROUTING = "prerouting"
POSTROUTING = "postrouting"
_PROTOCOL_NAMES = {PROTOCOL_UDP: "udp", PROTOCOL_TCP: "tcp"}
_PROTOCOL_NUMBERS = {name: number for number, name in _PROTOCOL_NAMES.items()}
CONNTRACK_PACKAGE = "conntrack"

log = logging.getLogger(__name__)

# runner(argv after "nft", stdin text or None) -> stdout; raises NftError.
NftRunner = Callable[[Sequence[str], str | None], str]
# runner(argv after "conntrack") -> number of flows deleted; raises NftError.
ConntrackRunner = Callable[[Sequence[str]], int]


def run_nft(args: Sequence[str], stdin: str | None = None, *,
            netns: str | None = None) -> str:
    """Run nft (inside `netns` when given, via `ip netns exec`)."""
    argv = (["ip", "netns", "exec", netns] if netns else []) + ["nft", *args]
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=10,
                              check=False)
    except FileNotFoundError:
        raise NftError(f"{argv[0]} is not installed (needed to apply PCP mappings)") from None
    except subprocess.TimeoutExpired:
        raise NftError(f"{' '.join(argv)} did not finish within 10 s") from None
    if done.returncode != 0:
        raise NftError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def run_conntrack(args: Sequence[str], *, netns: str | None = None) -> int:
    """Run `conntrack` (inside `netns` when given); returns how many flows `-D` deleted."""
    if shutil.which("conntrack") is None:
        raise NftError(f"conntrack is not installed (Debian package {CONNTRACK_PACKAGE}): the "
                       "PCP server needs it to cut live flows through removed mappings")
    argv = (["ip", "netns", "exec", netns] if netns else []) + ["conntrack", *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except FileNotFoundError:
        raise NftError(f"{argv[0]} is not installed (needed to run conntrack)") from None
    except subprocess.TimeoutExpired:
        raise NftError(f"{' '.join(argv)} did not finish within 10 s") from None
    # `conntrack -D` exits 1 when nothing matched; its summary line still says so.
    deleted = re.search(r"(\d+) flow entries have been deleted", done.stderr)
    if deleted is not None:
        return int(deleted.group(1))
    if done.returncode != 0:
        raise NftError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return 0


@dataclass(frozen=True)
class Translation:
    """What a mapping's rules translate: the UE's I:i to E:e, towards `remote_peer` only
    (PEER) or anyone (MAP). Enough to name the mapping's flows to conntrack."""

    protocol: int
    internal: Endpoint
    external: Endpoint
    remote_peer: Endpoint | None = None

    @classmethod
    def of(cls, mapping: Mapping) -> Translation:
        return cls(mapping.protocol, mapping.internal, mapping.external, mapping.remote_peer)

    def conntrack_filters(self) -> tuple[tuple[str, ...], ...]:
        """`conntrack -D` arguments for every flow these rules bind (or should have bound):
        inbound, whatever was sent to E:e (DNATed by us, or left untranslated before the
        mapping existed); outbound, what the UE sent from I:i (to its peer only for PEER:
        its other flows belong to the CGN's own NAT and keep their bindings)."""
        proto = _PROTOCOL_NAMES[self.protocol]
        family = ("-f", "ipv6") if self.internal.address.version == 6 else ()
        inbound = (*family, "-p", proto, "--orig-dst", str(self.external.address),
                   "--dport", str(self.external.port))
        outbound = (*family, "-p", proto, "--orig-src", str(self.internal.address),
                    "--sport", str(self.internal.port))
        if self.remote_peer is not None:
            outbound += ("--orig-dst", str(self.remote_peer.address),
                         "--dport", str(self.remote_peer.port))
        return inbound, outbound


def tag(mapping_id: str) -> str:
    return TAG_PREFIX + mapping_id


def nft_family(address: IPAddress) -> str:
    """The nft address family of `address` in a rule's match and NAT statement: ip or ip6."""
    return "ip" if isinstance(address, ipaddress.IPv4Address) else "ip6"


def nft_address(address: IPAddress, port: int) -> str:
    """`address`:`port` as a dnat/snat target takes it ([v6]:port, as nft(8) wants)."""
    if isinstance(address, ipaddress.IPv6Address):
        return f"[{address}]:{port}"
    return f"{address}:{port}"


def render_rules(mapping: Mapping) -> list[tuple[str, str]]:
    """(chain, rule text) for every rule of one mapping."""
    proto = _PROTOCOL_NAMES[mapping.protocol]
    family = nft_family(mapping.internal.address)
    internal, external = mapping.internal, mapping.external
    comment = f'comment "{tag(mapping.mapping_id)}"'
    rules: list[tuple[str, str]] = []
    for network, port in mapping.admitted():
        match = ""
        if network is not None:
            match += f"{family} saddr {network.with_prefixlen} "
        if port:
            match += f"{proto} sport {port} "
        rules.append((PREROUTING,
                      f"{match}{family} daddr {external.address} {proto} dport {external.port} "
                      f"dnat {family} to {nft_address(internal.address, internal.port)} "
                      f"{comment}"))
    towards = ""
    if mapping.remote_peer is not None:
        towards = (f"{family} daddr {mapping.remote_peer.address} "
                   f"{proto} dport {mapping.remote_peer.port} ")
    rules.append((POSTROUTING,
                  f"{family} saddr {internal.address} {proto} sport {internal.port} {towards}"
                  f"snat {family} to {nft_address(external.address, external.port)} "
                  f"{comment}"))
    return rules


def render_table(table: str) -> str:
    """A batch that (re)creates our table empty: add-then-delete clears any leftover."""
    return (f"add table {FAMILY} {table}\n"
            f"delete table {FAMILY} {table}\n"
            f"table {FAMILY} {table} {{\n"
            f"  chain {PREROUTING} {{ type nat hook prerouting priority dstnat - 10; }}\n"
            f"  chain {POSTROUTING} {{ type nat hook postrouting priority srcnat - 10; }}\n"
            f"}}\n")


def render_changes(table: str, changes: MappingChanges,
                   handles: dict[str, list[tuple[str, int]]]) -> str:
    """The batch for `changes`: delete the removed mappings' rules by handle, add the new ones."""
    lines = []
    for mapping in changes.removed:
        for chain, handle in handles.get(mapping.mapping_id, []):
            lines.append(f"delete rule {FAMILY} {table} {chain} handle {handle}")
    for mapping in changes.added:
        for chain, rule in render_rules(mapping):
            lines.append(f"add rule {FAMILY} {table} {chain} {rule}")
    return "".join(line + "\n" for line in lines)


def rule_handles(listing: str) -> dict[str, list[tuple[str, int]]]:
    """From `nft -j list table ...` output: mapping id -> [(chain, handle)] of its rules."""
    found: dict[str, list[tuple[str, int]]] = {}
    for item in json.loads(listing).get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        comment = rule.get("comment", "")
        if comment.startswith(TAG_PREFIX):
            found.setdefault(comment[len(TAG_PREFIX):], []).append(
                (rule["chain"], int(rule["handle"])))
    return found


def listed_translations(listing: str) -> list[Translation]:
    """From `nft -j list table ...` output: the translation of each mapping of ours, read from
    its SNAT rule (every mapping has exactly one, see `render_rules`)."""
    found: list[Translation] = []
    for item in json.loads(listing).get("nftables", []):
        rule = item.get("rule")
        if not rule or not rule.get("comment", "").startswith(TAG_PREFIX):
            continue
        matched: dict[str, object] = {}
        protocol = 0
        snat: dict[str, object] | None = None
        for expr in rule.get("expr", []):
            if "snat" in expr:
                snat = expr["snat"]
            payload = expr.get("match", {}).get("left", {}).get("payload")
            if payload and expr["match"].get("op") == "==":
                matched[payload["field"]] = expr["match"]["right"]
                protocol = _PROTOCOL_NUMBERS.get(payload["protocol"], protocol)
        if snat is None or not protocol or "saddr" not in matched or "sport" not in matched:
            continue
        remote = (Endpoint(ipaddress.ip_address(str(matched["daddr"])), int(str(matched["dport"])))
                  if "daddr" in matched and "dport" in matched else None)
        found.append(Translation(
            protocol,
            Endpoint(ipaddress.ip_address(str(matched["saddr"])), int(str(matched["sport"]))),
            Endpoint(ipaddress.ip_address(str(snat["addr"])), int(str(snat["port"]))), remote))
    return found


@dataclass(frozen=True)
class InstalledRule:
    """One rule of ours as nft lists it back."""

    mapping_id: str
    chain: str
    handle: int


class NftMappingTable:
    """Applies `MappingChanges` to the kernel. Synchronous (nft answers in milliseconds); the
    asyncio server calls it off the event loop."""

    def __init__(self, table: str = DEFAULT_TABLE, *, netns: str | None = None,
                 runner: NftRunner | None = None,
                 conntrack: ConntrackRunner | None = None) -> None:
        self.table = table
        self.netns = netns
        self._runner: NftRunner = runner or (lambda a, s: run_nft(a, s, netns=netns))
        self._conntrack: ConntrackRunner = conntrack or (
            lambda a: run_conntrack(a, netns=netns))

    def reset(self) -> None:
        """Create our table empty (at server start: a new epoch owns no mappings), and cut the
        flows of whatever a previous run left in it. Fails early when conntrack is missing."""
        self._conntrack(["--version"])
        self._runner(["-f", "-"], f"add table {FAMILY} {self.table}\n")
        leftover = listed_translations(self._listing())
        self._runner(["-f", "-"], render_table(self.table))
        self.cut_flows(leftover)

    def apply(self, changes: MappingChanges) -> None:
        """Raises NftError only when the rules were not changed (the caller then reverts)."""
        if not changes:
            return
        handles = self._handles() if changes.removed else {}
        self._runner(["-f", "-"], render_changes(self.table, changes, handles))
        self.cut_flows(Translation.of(m) for m in (*changes.removed, *changes.added))

    def cut_flows(self, translations: Iterable[Translation]) -> int:
        """`conntrack -D` the flows of these translations (after their rules changed), so the
        next packet of each is bound by the rules now in place. Returns how many went. A
        failure here is logged, not raised: the rules are already right, and only flows
        older than the change outlive it, until their conntrack timeout."""
        deleted = 0
        filters = dict.fromkeys(f for t in translations for f in t.conntrack_filters())
        for args in filters:
            try:
                deleted += self._conntrack(["-D", *args])
            except NftError as exc:
                log.error("PCP mapping flows not cut: %s", exc)
        return deleted

    def installed(self) -> list[InstalledRule]:
        """Our rules as the kernel has them (read back with `nft -j`)."""
        return [InstalledRule(mid, chain, handle)
                for mid, rules in sorted(self._handles().items()) for chain, handle in rules]

    def installed_ids(self) -> frozenset[str]:
        return frozenset(self._handles())

    def close(self) -> None:
        """Remove our table and every rule in it, and cut their flows (server shutdown)."""
        self._runner(["-f", "-"], f"add table {FAMILY} {self.table}\n")
        installed = listed_translations(self._listing())
        self._runner(["-f", "-"], f"delete table {FAMILY} {self.table}\n")
        self.cut_flows(installed)

    def _listing(self) -> str:
        return self._runner(["-j", "list", "table", FAMILY, self.table], None)

    def _handles(self) -> dict[str, list[tuple[str, int]]]:
        return rule_handles(self._listing())


class RecordingTable:
    """A data plane that only remembers (for `--dry-run` and for tests without root)."""

    def __init__(self, log: Callable[[str], None] | None = None) -> None:
        self.rules: dict[str, list[tuple[str, str]]] = {}
        self._log = log

    def reset(self) -> None:
        self.rules.clear()

    def apply(self, changes: MappingChanges) -> None:
        for mapping in changes.removed:
            self.rules.pop(mapping.mapping_id, None)
            if self._log:
                self._log(f"remove {mapping.mapping_id}")
        for mapping in changes.added:
            self.rules[mapping.mapping_id] = render_rules(mapping)
            if self._log:
                for chain, rule in self.rules[mapping.mapping_id]:
                    self._log(f"add {chain}: {rule}")

    def installed_ids(self) -> frozenset[str]:
        return frozenset(self.rules)

    def close(self) -> None:
        self.rules.clear()


def installed_mapping_ids(rules: Iterable[InstalledRule]) -> frozenset[str]:
    return frozenset(r.mapping_id for r in rules)
