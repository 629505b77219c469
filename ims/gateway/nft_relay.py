"""The relay's kernel data plane: a relayed flow forwarded by nftables NAT (rtpengine style).

The userspace relay (ims.gateway.aiorelay) learns both peers of an allocation, from SDP and
by latching (RFC 7362); then the kernel can take over the forwarding, so the game's datagrams
never climb to Python. For relay address R with the ports Pa (facing peer A = A:a) and Pb
(facing peer B = B:b), `NftRelayDataPlane.install` writes, in one table of ours
(`inet ueconnect_relay`):

- prerouting, NAT priority dstnat - 10, one rule per direction:
  `ip saddr A udp sport a ip daddr R udp dport Pa ct mark set ct mark | M dnat ip to B:b`
  and `ip saddr B udp sport b ip daddr R udp dport Pb ct mark set ct mark | M dnat ip to A:a`;
- postrouting, NAT priority srcnat - 10: `ip saddr A udp sport a ip daddr B udp dport b
  ct original ip daddr R ct original proto-dst Pa snat ip to R:Pb`, and the mirror for B,
  so what A sends leaves towards B from R:Pb and what B sends reaches A from R:Pa: each peer
  sees only the relay port facing it, as with the userspace relay. The `ct original` match
  binds the SNAT to flows that entered through the relay port, never to A-to-B traffic
  merely routed through this host;
- forward, filter priority: `ip saddr A udp sport a ip daddr B udp dport b ct status dnat
  counter accept`, and the mirror: the per-direction counters of `counters(tag)` (NAT chains
  see only a flow's first packet; forward sees every one). `accept` ends only our chain: a
  host firewall that drops forwarding in a table of its own must admit these flows itself.

Whichever peer sends first, its datagram opens the flow; conntrack translates the other's
replies on the same entry, so both orders work. A datagram from any other source to R:Pa or
R:Pb matches nothing, is not translated, and reaches the userspace relay's socket, which drops
it (the relay admits only the permitted peer). The namespace needs net.ipv4.ip_forward=1
(net.ipv6.conf.all.forwarding=1 for IPv6); `install` checks and says so, as the NAT would
otherwise send the datagrams into a black hole. The testbed world sets it.

NAT binds a flow on its first packet and conntrack keeps the binding. So `install` deletes
(`conntrack -D`, Debian package `conntrack`) the entries of the flow's four tuples that the
userspace era left (A:a -> R:Pa and B:b -> R:Pb untranslated, towards the relay's sockets;
R:Pa -> A:a and R:Pb -> B:b sent by them, which would also hold the reply tuple the SNAT
needs): the next datagram is bound by the new rules. `remove` deletes the rules, then the
same entries, so nothing keeps forwarding: the next datagram reaches the relay's socket
again. Every entry our rules bind carries the conntrack mark bit M (default 0x00100000), so
`reset` (at start: a new process owns no flows; at `close`) cuts every flow of ours in one
`conntrack -D --mark M/M`, even those of an earlier run whose rules are gone.

Rules carry the comment `ueconnect-relay <tag> a-to-b|b-to-a`; removal reads the table back
with `nft -j` for their handles. Every rule change is one `nft -f -` batch: atomic. The class
is synchronous (nft answers in milliseconds); an asyncio caller runs it off the event loop.
Counters are kernel counts: `bytes` are UDP payload bytes (the IP bytes the kernel counts,
less 28 per IPv4 and 48 per IPv6 datagram, after reassembly), as the userspace relay counts.

The end of this module is a bench of namespaces of its own (`RelayBed`) and
`measure_forwarding_rate`, the microbenchmark for bench/ and the tests.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum

from ims.gateway.errors import GatewayError, GatewayUsageError
from ims.gateway.relay import Address, normalise_address
from ims.pcp.errors import NftError
from ims.pcp.nft import (
    CONNTRACK_PACKAGE,
    FAMILY,
    ConntrackRunner,
    NftRunner,
    nft_address,
    nft_family,
    run_conntrack,
    run_nft,
)
from ims.testbed.builder import run_command
from ims.testbed.netns import enter_netns

__all__ = [
    "DEFAULT_CONNTRACK_MARK",
    "DEFAULT_TABLE",
    "TAG_PREFIX",
    "Direction",
    "ForwardingRate",
    "KernelFlow",
    "KernelRelayCounters",
    "KernelRelayError",
    "KernelRelayToolMissing",
    "NftRelayDataPlane",
    "RelayBed",
    "UnknownKernelFlow",
    "measure_forwarding_rate",
    "render_flow",
]

DEFAULT_TABLE = "ueconnect_relay"
TAG_PREFIX = "ueconnect-relay "
DEFAULT_CONNTRACK_MARK = 0x0010_0000
PREROUTING, POSTROUTING, FORWARD = "prerouting", "postrouting", "forward"
NFTABLES_PACKAGE = "nftables"
# IP + UDP header octets per datagram: what the kernel's byte counters add to the payload.
_HEADER_BYTES = {4: 20 + 8, 6: 40 + 8}
# A tag goes into an nft comment (max 128 octets) and a shell-free argv: keep it plain.
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")

# reader(sysctl name) -> its value as text.
SysctlReader = Callable[[str], str]


# -- errors (the gateway's family) -------------------------------------------------------------


class KernelRelayError(GatewayError):
    """The kernel data plane failed: the message quotes the command and its own error. The
    userspace relay still forwards the flow (it was never handed over, or is handed back)."""


class KernelRelayToolMissing(KernelRelayError):
    """A program the kernel relay runs is not installed."""

    def __init__(self, tool: str, package: str) -> None:
        super().__init__(f"'{tool}' is not installed: the kernel relay needs it (install the "
                         f"Debian package {package}), or run the relay in userspace only")
        self.tool = tool
        self.package = package


class UnknownKernelFlow(GatewayUsageError, KeyError):
    """No flow with this tag was installed by this data plane (or it was removed)."""

    def __init__(self, tag: str) -> None:
        super().__init__(f"no kernel relay flow {tag!r} (removed, reset, or never installed)")
        self.tag = tag

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


# -- the flow and its rules (pure) -------------------------------------------------------------


class Direction(StrEnum):
    """Which way a rule forwards: from peer A (facing side_a_port) to B, or back."""

    A_TO_B = "a-to-b"
    B_TO_A = "b-to-a"


@dataclass(frozen=True)
class KernelFlow:
    """One relayed flow handed to the kernel: R:side_a_port faces `peer_a`, R:side_b_port
    faces `peer_b` (addresses normalised, validated)."""

    tag: str
    relay_ip: str
    side_a_port: int
    peer_a: Address
    side_b_port: int
    peer_b: Address

    def __post_init__(self) -> None:
        if not _TAG.fullmatch(self.tag):
            raise GatewayUsageError(
                f"kernel relay tag {self.tag!r} must be 1-64 characters of letters, digits and "
                "._:- (it goes into an nft comment)")
        relay = normalise_address(self.relay_ip)
        object.__setattr__(self, "relay_ip", relay)
        version = ipaddress.ip_address(relay).version
        for name in ("peer_a", "peer_b"):
            address, port = getattr(self, name)
            address = normalise_address(address)
            if ipaddress.ip_address(address).version != version:
                raise GatewayUsageError(f"{name} {address} is not IPv{version} like the relay "
                                        f"address {relay}")
            _check_port(port, name)
            object.__setattr__(self, name, (address, port))
        _check_port(self.side_a_port, "side_a_port")
        _check_port(self.side_b_port, "side_b_port")
        if self.side_a_port == self.side_b_port:
            raise GatewayUsageError(f"both relay ports are {self.side_a_port}; each side needs "
                                    "its own")
        if self.peer_a == self.peer_b:
            raise GatewayUsageError(f"peer_a and peer_b are both {self.peer_a}")

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.relay_ip).version

    def legs(self) -> tuple[tuple[Direction, Address, int, Address, int], ...]:
        """(direction, source peer, relay port it sends to, destination peer, relay port the
        destination sees it from) for both directions."""
        return ((Direction.A_TO_B, self.peer_a, self.side_a_port, self.peer_b, self.side_b_port),
                (Direction.B_TO_A, self.peer_b, self.side_b_port, self.peer_a, self.side_a_port))

    def conntrack_filters(self) -> tuple[tuple[str, ...], ...]:
        """`conntrack -D` arguments for every entry that can hold this flow: a peer's
        datagrams to its relay port (ours, translated; or untranslated, to the relay's
        socket) and the relay socket's datagrams to the peer (see the module text)."""
        family = ("-f", "ipv6") if self.version == 6 else ()
        filters = []
        for peer, port in ((self.peer_a, self.side_a_port), (self.peer_b, self.side_b_port)):
            filters.append((*family, "-p", "udp", "--orig-src", peer[0], "--sport", str(peer[1]),
                            "--orig-dst", self.relay_ip, "--dport", str(port)))
            filters.append((*family, "-p", "udp", "--orig-src", self.relay_ip, "--sport",
                            str(port), "--orig-dst", peer[0], "--dport", str(peer[1])))
        return tuple(filters)


@dataclass(frozen=True)
class KernelRelayCounters:
    """What the kernel forwarded for one flow (`bytes`: UDP payload, see the module text)."""

    a_to_b_datagrams: int = 0
    a_to_b_bytes: int = 0
    b_to_a_datagrams: int = 0
    b_to_a_bytes: int = 0


def _check_port(port: int, what: str) -> None:
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise GatewayUsageError(f"{what} port {port!r} is outside 1..65535")


def comment(tag: str, direction: Direction) -> str:
    return f"{TAG_PREFIX}{tag} {direction}"


def render_table(table: str) -> str:
    """Our table and chains, created if missing (`add` of an existing one is a no-op)."""
    return (f"add table {FAMILY} {table}\n"
            f"add chain {FAMILY} {table} {PREROUTING} "
            f"{{ type nat hook prerouting priority dstnat - 10; }}\n"
            f"add chain {FAMILY} {table} {POSTROUTING} "
            f"{{ type nat hook postrouting priority srcnat - 10; }}\n"
            f"add chain {FAMILY} {table} {FORWARD} "
            f"{{ type filter hook forward priority filter; }}\n")


def render_flow(flow: KernelFlow, mark: int = DEFAULT_CONNTRACK_MARK) -> list[tuple[str, str]]:
    """(chain, rule text) for every rule of one flow: six, three per direction."""
    relay = ipaddress.ip_address(flow.relay_ip)
    f = nft_family(relay)
    rules: list[tuple[str, str]] = []
    for direction, (src, src_port), in_port, (dst, dst_port), out_port in flow.legs():
        note = f'comment "{comment(flow.tag, direction)}"'
        source = f"{f} saddr {src} udp sport {src_port}"
        translated = f"{source} {f} daddr {dst} udp dport {dst_port}"
        rules.append((PREROUTING,
                      f"{source} {f} daddr {relay} udp dport {in_port} "
                      f"ct mark set ct mark | {mark:#010x} "
                      f"dnat {f} to {nft_address(ipaddress.ip_address(dst), dst_port)} "
                      f"{note}"))
        rules.append((POSTROUTING,
                      f"{translated} ct original {f} daddr {relay} ct original proto-dst "
                      f"{in_port} snat {f} to {nft_address(relay, out_port)} {note}"))
        rules.append((FORWARD, f"{translated} ct status dnat counter accept {note}"))
    return rules


@dataclass(frozen=True)
class _ListedRule:
    tag: str
    direction: Direction
    chain: str
    handle: int
    packets: int | None  # the rule's counter (forward rules only)
    bytes: int | None


def listed_rules(listing: str) -> list[_ListedRule]:
    """From `nft -j list table ...` output: our rules, with their counters where they have
    one."""
    found = []
    for item in json.loads(listing).get("nftables", []):
        rule = item.get("rule")
        if not rule or not rule.get("comment", "").startswith(TAG_PREFIX):
            continue
        tag, _, direction = rule["comment"][len(TAG_PREFIX):].partition(" ")
        try:
            leg = Direction(direction)
        except ValueError:
            continue  # not written by this module
        packets = octets = None
        for expr in rule.get("expr", []):
            if "counter" in expr:
                packets, octets = int(expr["counter"]["packets"]), int(expr["counter"]["bytes"])
        found.append(_ListedRule(tag, leg, rule["chain"], int(rule["handle"]), packets, octets))
    return found


# -- the data plane ----------------------------------------------------------------------------


def read_sysctl(name: str, *, netns: str | None = None) -> str:
    """`sysctl -n name` (inside `netns` when given)."""
    argv = (["ip", "netns", "exec", netns] if netns else []) + ["sysctl", "-n", name]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except FileNotFoundError:
        raise KernelRelayToolMissing(argv[0], "iproute2" if netns else "procps") from None
    except subprocess.TimeoutExpired:
        raise KernelRelayError(f"{' '.join(argv)} did not finish within 10 s") from None
    if done.returncode != 0:
        raise KernelRelayError(f"{' '.join(argv)} failed ({done.returncode}): "
                               f"{done.stderr.strip()}")
    return done.stdout.strip()


_FORWARDING_SYSCTL = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}


class NftRelayDataPlane:
    """Relayed flows forwarded by the kernel, in table `inet <table>` of namespace `netns`
    (None: this process's own). One owner per table: `remove` knows the flows this object
    installed; `reset` at start clears whatever an earlier owner left.

    The runners are for tests without root; by default nft, conntrack and sysctl run for real
    (inside `netns` via `ip netns exec`)."""

    def __init__(self, netns: str | None = None, table: str = DEFAULT_TABLE, *,
                 conntrack_mark: int = DEFAULT_CONNTRACK_MARK,
                 runner: NftRunner | None = None,
                 conntrack: ConntrackRunner | None = None,
                 sysctl: SysctlReader | None = None) -> None:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", table):
            raise GatewayUsageError(f"nft table name {table!r} must be a letter then letters, "
                                    "digits or _")
        if conntrack_mark <= 0 or conntrack_mark & (conntrack_mark - 1) or conntrack_mark >> 32:
            raise GatewayUsageError(f"conntrack_mark {conntrack_mark:#x} must be one bit of the "
                                    "32-bit conntrack mark")
        self.netns = netns
        self.table = table
        self.conntrack_mark = conntrack_mark
        self._real_tools = tuple(tool for tool, fake in (("nft", runner), ("conntrack", conntrack))
                                 if fake is None)
        self._runner: NftRunner = runner or (lambda a, s: run_nft(a, s, netns=netns))
        self._conntrack: ConntrackRunner = conntrack or (
            lambda a: run_conntrack(a, netns=netns))
        self._sysctl: SysctlReader = sysctl or (lambda name: read_sysctl(name, netns=netns))
        self._flows: dict[str, KernelFlow] = {}
        self._forwarding_checked: set[int] = set()
        self._tools_checked = False
        self._closed = False

    # the public operations

    def install(self, tag: str, relay_ip: str, side_a_port: int, peer_a: Address,
                side_b_port: int, peer_b: Address) -> KernelFlow:
        """Forward R:side_a_port <-> R:side_b_port between `peer_a` and `peer_b` in the
        kernel (see the module text); the flow's earlier conntrack entries are cut so the next
        datagram takes the new path. GatewayUsageError for bad values or a tag in use."""
        if self._closed:
            raise GatewayUsageError("this kernel relay data plane is closed")
        flow = KernelFlow(tag, relay_ip, side_a_port, peer_a, side_b_port, peer_b)
        if flow.tag in self._flows:
            raise GatewayUsageError(f"kernel relay flow {flow.tag!r} is installed already; "
                                    "remove it first")
        self._check_tools()
        self._check_forwarding(flow.version)
        batch = render_table(self.table) + "".join(
            f"add rule {FAMILY} {self.table} {chain} {rule}\n"
            for chain, rule in render_flow(flow, self.conntrack_mark))
        self._nft(["-f", "-"], batch)
        self._flows[flow.tag] = flow
        self._cut(flow)
        return flow

    def counters(self, tag: str) -> KernelRelayCounters:
        """What the kernel forwarded for flow `tag` so far, each way."""
        flow = self._flow(tag)
        return self._counters(flow, listed_rules(self._listing()))

    def remove(self, tag: str) -> KernelRelayCounters:
        """Delete the flow's rules (one batch) and then its conntrack entries, so nothing keeps
        forwarding; returns its counters as last read (datagrams in the few milliseconds
        between the read and the deletion are not in them)."""
        flow = self._flow(tag)
        rules = [r for r in listed_rules(self._listing()) if r.tag == flow.tag]
        final = self._counters(flow, rules)
        if rules:
            self._nft(["-f", "-"], "".join(
                f"delete rule {FAMILY} {self.table} {r.chain} handle {r.handle}\n"
                for r in rules))
        del self._flows[flow.tag]
        self._cut(flow)
        return final

    def counters_by_tag(self) -> dict[str, KernelRelayCounters]:
        """The counters of every flow this data plane installed, from one listing (what a
        relay's listing of all its allocations reads)."""
        if not self._flows:
            return {}
        rules = listed_rules(self._listing())
        return {flow.tag: self._counters(flow, rules) for flow in list(self._flows.values())}

    def cut(self, tag: str) -> None:
        """Delete the conntrack entries of flow `tag`'s four tuples again (as `install` did):
        the userspace relay, still forwarding while `install` ran, may have opened one since
        (a datagram from R:Pb to B:b holds the reply tuple the SNAT needs). A live kernel
        entry cut here is bound again by the rules on the next datagram."""
        self._cut(self._flow(tag))

    def check(self, version: int = 4) -> None:
        """Raise what `install` would for the host, before any flow: KernelRelayToolMissing
        (nft, conntrack), KernelRelayError (IP forwarding off for IP `version`)."""
        if version not in _FORWARDING_SYSCTL:
            raise GatewayUsageError(f"IP version {version} is neither 4 nor 6")
        self._check_tools()
        self._check_forwarding(version)

    def flows(self) -> tuple[KernelFlow, ...]:
        """The flows this data plane installed and has not removed."""
        return tuple(self._flows.values())

    def installed_tags(self) -> frozenset[str]:
        """The tags of the rules in our table as the kernel has them (read back, `nft -j`)."""
        return frozenset(r.tag for r in listed_rules(self._listing()))

    def reset(self) -> None:
        """Remove our table (every rule of every flow) and cut every conntrack entry our rules
        bound, by its mark, including an earlier run's."""
        self._check_tools()
        self._nft(["-f", "-"], f"add table {FAMILY} {self.table}\n"
                               f"delete table {FAMILY} {self.table}\n")
        self._flows.clear()
        mark = f"{self.conntrack_mark:#x}"
        for family in ("ipv4", "ipv6"):
            self._conntrack_run(["-D", "-f", family, "--mark", f"{mark}/{mark}"])

    def close(self) -> None:
        """`reset`, and refuse further installs (shutdown). Idempotent."""
        if not self._closed:
            self.reset()
            self._closed = True

    def __enter__(self) -> NftRelayDataPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # the machinery

    def _flow(self, tag: str) -> KernelFlow:
        try:
            return self._flows[tag]
        except KeyError:
            raise UnknownKernelFlow(tag) from None

    def _counters(self, flow: KernelFlow, rules: Sequence[_ListedRule]) -> KernelRelayCounters:
        header = _HEADER_BYTES[flow.version]
        counts = {Direction.A_TO_B: (0, 0), Direction.B_TO_A: (0, 0)}
        for rule in rules:
            if rule.tag == flow.tag and rule.packets is not None and rule.bytes is not None:
                counts[rule.direction] = (rule.packets, rule.bytes - header * rule.packets)
        (ab, ab_bytes), (ba, ba_bytes) = counts[Direction.A_TO_B], counts[Direction.B_TO_A]
        return KernelRelayCounters(ab, ab_bytes, ba, ba_bytes)

    def _cut(self, flow: KernelFlow) -> None:
        for args in flow.conntrack_filters():
            self._conntrack_run(["-D", *args])

    def _check_tools(self) -> None:
        """Name the missing package before touching anything (real tools only)."""
        if self._tools_checked or not self._real_tools:
            return
        packages = {"nft": NFTABLES_PACKAGE, "conntrack": CONNTRACK_PACKAGE}
        for tool in self._real_tools:
            if shutil.which(tool) is None:
                raise KernelRelayToolMissing(tool, packages[tool])
        self._tools_checked = True

    def _check_forwarding(self, version: int) -> None:
        if version in self._forwarding_checked:
            return
        name = _FORWARDING_SYSCTL[version]
        value = self._sysctl(name)
        if value != "1":
            where = f"namespace {self.netns}" if self.netns else "this network namespace"
            raise KernelRelayError(f"{name} is {value} in {where}: the kernel relay forwards "
                                   f"between the peers only with `sysctl -w {name}=1`")
        self._forwarding_checked.add(version)

    def _nft(self, args: Sequence[str], stdin: str | None) -> str:
        try:
            return self._runner(args, stdin)
        except NftError as exc:
            raise KernelRelayError(f"kernel relay: {exc}") from exc

    def _listing(self) -> str:
        try:
            return self._nft(["-j", "list", "table", FAMILY, self.table], None)
        except KernelRelayError as exc:
            # No table yet (nothing installed since the last reset): nothing of ours.
            if "No such file or directory" in str(exc):
                return '{"nftables": []}'
            raise

    def _conntrack_run(self, args: Sequence[str]) -> int:
        try:
            return self._conntrack(args)
        except NftError as exc:
            raise KernelRelayError(f"kernel relay: {exc}") from exc


# -- a bench of our own namespaces, for the tests and bench/ -----------------------------------


@dataclass(frozen=True)
class RelayBed:
    """Three namespaces `<prefix>-a`, `-b`, `-r` (the relay host), a star around R:

        a  [eth0 203.0.113.2, 203.0.113.3 (a third host)] --- [a0 203.0.113.1]  r
        b  [eth0 198.51.100.2]                            --- [b0 198.51.100.1] r
        r  [lo 192.0.2.12/32: the relay address], net.ipv4.ip_forward=1

    A and B route everything through R. Nothing touches the host's own namespace but
    `ip netns add/del`; `RelayBed.create()` is a context manager that removes all of it,
    also after a failure."""

    prefix: str
    relay_ip: str = "192.0.2.12"
    peer_a_ip: str = "203.0.113.2"
    third_ip: str = "203.0.113.3"
    peer_b_ip: str = "198.51.100.2"

    @property
    def a(self) -> str:
        return f"{self.prefix}-a"

    @property
    def b(self) -> str:
        return f"{self.prefix}-b"

    @property
    def r(self) -> str:
        return f"{self.prefix}-r"

    @classmethod
    @contextmanager
    def create(cls, prefix: str) -> Iterator[RelayBed]:
        bed = cls(prefix)
        made: list[str] = []
        try:
            for ns in (bed.a, bed.b, bed.r):
                run_command(["ip", "netns", "add", ns])
                made.append(ns)
            for ns, peer, dev, inside, outside in ((bed.a, "a0", "eth0", "203.0.113.1", 24),
                                                   (bed.b, "b0", "eth0", "198.51.100.1", 24)):
                run_command(["ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name",
                             peer, "netns", bed.r])
                run_command(["ip", "-n", bed.r, "addr", "add", f"{inside}/{outside}",
                             "dev", peer])
                run_command(["ip", "-n", bed.r, "link", "set", peer, "up"])
            batches = {
                bed.a: [f"addr add {bed.peer_a_ip}/24 dev eth0",
                        f"addr add {bed.third_ip}/24 dev eth0", "link set eth0 up",
                        "link set lo up", "route add default via 203.0.113.1"],
                bed.b: [f"addr add {bed.peer_b_ip}/24 dev eth0", "link set eth0 up",
                        "link set lo up", "route add default via 198.51.100.1"],
                bed.r: [f"addr add {bed.relay_ip}/32 dev lo", "link set lo up"],
            }
            for ns, lines in batches.items():
                run_command(["ip", "-n", ns, "-batch", "-"], "".join(f"{x}\n" for x in lines))
            run_command(["ip", "netns", "exec", bed.r, "sysctl", "-q", "-w",
                         "net.ipv4.ip_forward=1"])
            yield bed
        finally:
            for ns in made:
                with suppress(Exception):
                    run_command(["ip", "netns", "del", ns])

    def udp_socket(self, netns: str, address: str, port: int = 0) -> socket.socket:
        """A UDP socket bound in namespace `netns` (a socket stays in the namespace it was
        made in, so the caller's thread uses it from its own namespace)."""
        made: list[socket.socket | BaseException] = []

        def make() -> None:
            try:
                enter_netns(netns)
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind((address, port))
                made.append(sock)
            except BaseException as exc:  # handed to the caller below
                made.append(exc)

        worker = threading.Thread(target=make, name=f"socket in {netns}")
        worker.start()
        worker.join(10)
        if not made:
            raise KernelRelayError(f"no socket could be made in namespace {netns} within 10 s")
        if isinstance(made[0], BaseException):
            raise made[0]
        return made[0]


@dataclass(frozen=True)
class ForwardingRate:
    """One run of `measure_forwarding_rate`."""

    sent: int
    received: int
    seconds: float
    payload_bytes: int
    counters: KernelRelayCounters

    @property
    def datagrams_per_second(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0

    @property
    def loss(self) -> float:
        return 1 - self.received / self.sent if self.sent else 0.0


MAX_BENCH_DATAGRAMS = 200_000
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; Python's socket module does not name it


def measure_forwarding_rate(datagrams: int = 20_000, payload_bytes: int = 160, *,
                            prefix: str = "uecr-bench", quiet_after: float = 0.5,
                            through_relay: bool = True,
                            bed: RelayBed | None = None) -> ForwardingRate:
    """Send `datagrams` of `payload_bytes` from A as fast as one Python sender can, through the
    kernel relay (A -> R:Pa, B receives from R:Pb) or, with `through_relay=False`, straight to
    B with R only routing (the plain-forwarding floor); the rate is what B received over the
    span from the first send to the last arrival. One Python sender tops out near 100k
    datagrams/s, so a clean run (no loss) is a lower bound on the kernel's rate. Builds its
    own `RelayBed` (root) unless given one. Bounded: at most MAX_BENCH_DATAGRAMS, and B stops
    `quiet_after` s after the last arrival."""
    if not 1 <= datagrams <= MAX_BENCH_DATAGRAMS:
        raise GatewayUsageError(f"datagrams must be in 1..{MAX_BENCH_DATAGRAMS}, not {datagrams}")
    if not 8 <= payload_bytes <= 1400:
        raise GatewayUsageError(f"payload_bytes must be in 8..1400, not {payload_bytes}")
    if bed is None:
        with RelayBed.create(prefix) as own:
            return measure_forwarding_rate(datagrams, payload_bytes, quiet_after=quiet_after,
                                           through_relay=through_relay, bed=own)
    sender = bed.udp_socket(bed.a, bed.peer_a_ip)
    receiver = bed.udp_socket(bed.b, bed.peer_b_ip)
    with suppress(OSError):  # root may raise the buffer past rmem_max; else keep the default
        receiver.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    plane = NftRelayDataPlane(bed.r, table="ueconnect_relay_bench")
    try:
        plane.reset()
        target: Address = (bed.relay_ip, 40000)
        if through_relay:
            plane.install("bench", bed.relay_ip, 40000, sender.getsockname(), 40001,
                          receiver.getsockname())
        else:
            target = receiver.getsockname()
        received = 0
        last = 0.0
        receiver.settimeout(quiet_after)

        def drain() -> None:
            nonlocal received, last
            while received < datagrams:
                try:
                    receiver.recv(2048)
                except OSError:  # TimeoutError included: the sender is done
                    return
                received += 1
                last = time.perf_counter()

        reader = threading.Thread(target=drain, name="kernel relay bench receiver")
        reader.start()
        payload = bytes(payload_bytes)
        started = time.perf_counter()
        for _ in range(datagrams):
            sender.sendto(payload, target)
        reader.join(quiet_after + 60)
        counters = plane.counters("bench") if through_relay else KernelRelayCounters()
        return ForwardingRate(datagrams, received, max(last - started, 0.0), payload_bytes,
                              counters)
    finally:
        sender.close()
        receiver.close()
        plane.close()
