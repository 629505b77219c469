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
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ims.pcp.codec import IPAddress
from ims.pcp.constants import PROTOCOL_TCP, PROTOCOL_UDP
from ims.pcp.errors import NftError
from ims.pcp.server import Mapping, MappingChanges

FAMILY = "inet"
DEFAULT_TABLE = "ueconnect_pcp"
TAG_PREFIX = "ueconnect-pcp "
PREROUTING = "prerouting"
POSTROUTING = "postrouting"
_PROTOCOL_NAMES = {PROTOCOL_UDP: "udp", PROTOCOL_TCP: "tcp"}

# runner(argv after "nft", stdin text or None) -> stdout; raises NftError.
NftRunner = Callable[[Sequence[str], str | None], str]


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


def tag(mapping_id: str) -> str:
    return TAG_PREFIX + mapping_id


def _family(address: IPAddress) -> str:
    return "ip" if isinstance(address, ipaddress.IPv4Address) else "ip6"


def _to(address: IPAddress, port: int) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        return f"[{address}]:{port}"
    return f"{address}:{port}"


def render_rules(mapping: Mapping) -> list[tuple[str, str]]:
    """(chain, rule text) for every rule of one mapping."""
    proto = _PROTOCOL_NAMES[mapping.protocol]
    family = _family(mapping.internal.address)
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
                      f"dnat {family} to {_to(internal.address, internal.port)} {comment}"))
    towards = ""
    if mapping.remote_peer is not None:
        towards = (f"{family} daddr {mapping.remote_peer.address} "
                   f"{proto} dport {mapping.remote_peer.port} ")
    rules.append((POSTROUTING,
                  f"{family} saddr {internal.address} {proto} sport {internal.port} {towards}"
                  f"snat {family} to {_to(external.address, external.port)} {comment}"))
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
                 runner: NftRunner | None = None) -> None:
        self.table = table
        self.netns = netns
        self._runner: NftRunner = runner or (lambda a, s: run_nft(a, s, netns=netns))

    def reset(self) -> None:
        """Create our table empty (at server start: a new epoch owns no mappings)."""
        self._runner(["-f", "-"], render_table(self.table))

    def apply(self, changes: MappingChanges) -> None:
        if not changes:
            return
        handles = self._handles() if changes.removed else {}
        self._runner(["-f", "-"], render_changes(self.table, changes, handles))

    def installed(self) -> list[InstalledRule]:
        """Our rules as the kernel has them (read back with `nft -j`)."""
        return [InstalledRule(mid, chain, handle)
                for mid, rules in sorted(self._handles().items()) for chain, handle in rules]

    def installed_ids(self) -> frozenset[str]:
        return frozenset(self._handles())

    def close(self) -> None:
        """Remove our table and every rule in it (server shutdown)."""
        self._runner(["-f", "-"], f"add table {FAMILY} {self.table}\n"
                                  f"delete table {FAMILY} {self.table}\n")

    def _handles(self) -> dict[str, list[tuple[str, int]]]:
        return rule_handles(self._runner(["-j", "list", "table", FAMILY, self.table], None))


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
