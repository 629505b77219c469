"""The testbed as data: namespaces, veth links, a bridge, addresses, routes, NAT, sysctls.

    Alpha                                                            Beta
    alpha-ue [eth0 100.64.0.2/10]                                   beta-ue [eth0 100.64.0.2/10]
        |                                                               |
    alpha-cgn [in0 100.64.0.1/10 | out0 198.51.100.1/24]          beta-cgn [in0 100.64.0.1/10
        |             NAT on out0                                    | out0 203.0.113.1/24]
        |                                                               |
    ix [alpha0 198.51.100.254/24, beta0 203.0.113.254/24, br0 192.0.2.1/24] -- the router
        | br0 (bridge): the inter-operator network 192.0.2.0/24
        +-- alpha-core [eth0 192.0.2.10-.14]  (P-CSCF, S-CSCF, borders of Alpha)
        +-- beta-core  [eth0 192.0.2.20-.24]  (the same for Beta)
        +-- dns        [eth0 192.0.2.53]      (the authoritative server of both)

The core and DNS addresses come from the `testbed` world of ims.dns.worlds (IPv4 and IPv6, the
IPv6 ones on the inter-operator network only), so the zone files and the testbed agree. Both
UEs have 100.64.0.2 (RFC 6598 shared space; operators reuse it, overlap is normal). Everything
is created inside our namespaces: veths are made in one namespace with their peer moved to
another, never in the host's.

The plan is pure data: building it reads no clock and touches nothing; `builder` applies it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import StrEnum

from ims.dns.worlds import WORLDS, World
from ims.testbed.errors import TestbedUsageError

PREFIX = "uec-"
NAT_TABLE = "uec_cgn"  # our table (family ip) in each CGN; the PCP server owns its own
UE_ADDRESS = "100.64.0.2/10"
CGN_INSIDE = "100.64.0.1/10"
IX_V4 = "192.0.2.1"
IX_V6 = "2001:db8:0:2::1"
INTER_OPERATOR_V4_PREFIX = 24
INTER_OPERATOR_V6_PREFIX = 64
# The public side of each operator's CGN: (CGN address, router address) on a /24.
PUBLIC_SIDES = {"Alpha": ("198.51.100.1", "198.51.100.254"),
                "Beta": ("203.0.113.1", "203.0.113.254")}
_NAME = re.compile(r"uec-[a-z0-9-]{0,12}")


class NatBehaviour(StrEnum):
    """How the CGN maps a UE's endpoint (RFC 4787 section 4.1 terms)."""

    # Address and Port-Dependent Mapping: a new random external port for every destination.
    SYMMETRIC = "symmetric"
    # Endpoint-Independent Mapping as Linux gives it: the source port is kept when free.
    EIM = "eim"


@dataclass(frozen=True)
class TestbedOptions:
    """What `ueconnect testbed up` was asked for; validated on construction."""

    __test__ = False

    nat: NatBehaviour = NatBehaviour.SYMMETRIC
    netem_delay_ms: int | None = None
    prefix: str = PREFIX
    # CGN conntrack (per namespace): unreplied and assured UDP flows, seconds. Short, as
    # cellular CGNs are; RFC 4787 REQ-5 asks at least 120 s, which many CGNs do not honour.
    udp_timeout: int = 30
    udp_stream_timeout: int = 60

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.prefix) or not self.prefix.endswith("-"):
            raise TestbedUsageError(
                f"namespace prefix {self.prefix!r} must start with 'uec-', end with '-' and "
                "hold at most 12 more of a-z, 0-9 and '-'")
        if self.netem_delay_ms is not None and not 1 <= self.netem_delay_ms <= 10_000:
            raise TestbedUsageError(
                f"--netem-delay {self.netem_delay_ms}: give 1 to 10000 milliseconds")
        for name, value in (("udp_timeout", self.udp_timeout),
                            ("udp_stream_timeout", self.udp_stream_timeout)):
            if not 1 <= value <= 86_400:
                raise TestbedUsageError(f"{name} {value}: give 1 to 86400 seconds")

    def as_json(self) -> dict[str, object]:
        return {"nat": self.nat.value, "netem_delay_ms": self.netem_delay_ms,
                "prefix": self.prefix, "udp_timeout": self.udp_timeout,
                "udp_stream_timeout": self.udp_stream_timeout}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> TestbedOptions:
        try:
            delay = data.get("netem_delay_ms")
            return cls(nat=NatBehaviour(str(data["nat"])),
                       netem_delay_ms=None if delay is None else int(str(delay)),
                       prefix=str(data["prefix"]),
                       udp_timeout=int(str(data["udp_timeout"])),
                       udp_stream_timeout=int(str(data["udp_stream_timeout"])))
        except (KeyError, ValueError) as exc:
            raise TestbedUsageError(f"not a testbed options record: {exc}") from None


@dataclass(frozen=True)
class Namespace:
    name: str
    purpose: str  # one line for `status`


@dataclass(frozen=True)
class VethLink:
    """A veth pair created in `netns` as `dev`, its peer moved to `peer_netns` as `peer_dev`."""

    netns: str
    dev: str
    peer_netns: str
    peer_dev: str


@dataclass(frozen=True)
class Bridge:
    netns: str
    name: str
    ports: tuple[str, ...]


@dataclass(frozen=True)
class Address:
    netns: str
    dev: str
    cidr: str


@dataclass(frozen=True)
class Route:
    netns: str
    destination: str  # "default" or a prefix
    via: str


@dataclass(frozen=True)
class Sysctl:
    netns: str
    key: str
    value: str
    # conntrack keys exist only once the NAT ruleset has loaded nf_conntrack; a kernel
    # without per-namespace conntrack sysctls is tolerated (recorded as a warning).
    optional: bool = False
    # A key that only matters where it exists (a kernel without the feature needs no
    # setting): its absence is skipped without a warning.
    absent_ok: bool = False


@dataclass(frozen=True)
class NatRuleset:
    netns: str
    table: str
    text: str  # an `nft -f` batch that (re)creates `table` whole


@dataclass(frozen=True)
class Delay:
    """A one-way delay on `dev`'s egress (netem, or NFQUEUE where the kernel has no netem);
    the two ends of a link each get their own, so each direction is delayed once."""

    netns: str
    dev: str
    ms: int


@dataclass(frozen=True)
class Plan:
    options: TestbedOptions
    namespaces: tuple[Namespace, ...]
    links: tuple[VethLink, ...]
    bridges: tuple[Bridge, ...]
    addresses: tuple[Address, ...]
    routes: tuple[Route, ...]
    sysctls: tuple[Sysctl, ...]
    rulesets: tuple[NatRuleset, ...]
    delays: tuple[Delay, ...] = field(default=())

    def namespace(self, role: str) -> str:
        """`alpha-ue`, `beta-cgn`, `ix`, `dns`, ... -> the namespace's full name."""
        name = self.options.prefix + role
        if name not in {ns.name for ns in self.namespaces}:
            raise TestbedUsageError(f"the testbed has no namespace {role!r}")
        return name

    def addresses_of(self, netns: str) -> tuple[Address, ...]:
        return tuple(a for a in self.addresses if a.netns == netns)

    def devices(self, netns: str) -> tuple[str, ...]:
        """The interfaces of `netns` the plan creates (veth ends, then bridges)."""
        ends = [link.dev for link in self.links if link.netns == netns]
        ends += [link.peer_dev for link in self.links if link.peer_netns == netns]
        return (*ends, *(b.name for b in self.bridges if b.netns == netns))


def render_nat(nat: NatBehaviour, public: str) -> str:
    """The CGN's own table: NAT on out0 and a forward filter (RFC 4787 section 5).

    symmetric: `masquerade random,fully-random` draws every new flow's external port at
    random, so a UE's socket gets a different external port per destination (APDM).
    eim: `snat to PUBLIC persistent` with no port range and no random flag: the kernel keeps
    the UE's source port when no other flow holds that reply tuple (nf_nat_core.c
    get_unique_tuple), the same for every destination (EIM). Only on a clash, another UE's flow
    to the same destination from the same port, does it pick a random port for that flow.
    A port range (`snat to A:20000-29999`) would not do: a source port outside the range is
    re-drawn at random per flow, which is endpoint-dependent again.

    Filtering is address-and-port-dependent in both: only replies (conntrack established)
    and flows a PCP mapping DNATed (ct status dnat) pass from out0 to the UE.
    """
    if nat is NatBehaviour.SYMMETRIC:
        translate = 'oifname "out0" masquerade random,fully-random'
    else:
        translate = f'oifname "out0" snat ip to {public} persistent'
    return (f"add table ip {NAT_TABLE}\n"
            f"delete table ip {NAT_TABLE}\n"
            f"table ip {NAT_TABLE} {{\n"
            f"  chain postrouting {{\n"
            f"    type nat hook postrouting priority srcnat; policy accept;\n"
            f"    {translate}\n"
            f"  }}\n"
            f"  chain forward {{\n"
            f"    type filter hook forward priority filter; policy accept;\n"
            f'    iifname "out0" ct state established,related accept\n'
            f'    iifname "out0" ct status dnat accept\n'
            f'    iifname "out0" drop\n'
            f"  }}\n"
            f"}}\n")


def build_plan(options: TestbedOptions, world: World | None = None) -> Plan:
    """The whole testbed for `options` (the `testbed` world unless another is given)."""
    world = world or WORLDS["testbed"]
    p = options.prefix
    ix, dns = p + "ix", p + "dns"
    namespaces = [Namespace(ix, "router: public sides and the inter-operator network")]
    links: list[VethLink] = []
    addresses: list[Address] = []
    routes: list[Route] = []
    sysctls = [Sysctl(ix, "net.ipv4.ip_forward", "1")]
    # The bridge forwards frames between the cores and the DNS host as a switch does, outside
    # the router's IP layer: br_netfilter, where the kernel has it, would hand them to
    # iptables as leaving br0, and a per-link delay there (NFQUEUE, see link_delays) would
    # then count twice on those paths where netem (on br0's qdisc, which bridged frames do
    # not cross) counts once. Off in the router's namespace; absent without br_netfilter.
    sysctls += [Sysctl(ix, f"net.bridge.bridge-nf-call-{tables}", "0", optional=True,
                       absent_ok=True)
                for tables in ("iptables", "ip6tables", "arptables")]
    rulesets: list[NatRuleset] = []
    bridge_ports: list[str] = []
    addresses.append(Address(ix, "br0", f"{IX_V4}/{INTER_OPERATOR_V4_PREFIX}"))
    addresses.append(Address(ix, "br0", f"{IX_V6}/{INTER_OPERATOR_V6_PREFIX}"))

    nameservers: dict[str, str] = {}
    for op in world.operators:
        key = op.name.lower()
        ue, cgn, core = f"{p}{key}-ue", f"{p}{key}-cgn", f"{p}{key}-core"
        public, router = PUBLIC_SIDES[op.name]
        namespaces += [Namespace(ue, f"{op.name} UE host"),
                       Namespace(cgn, f"{op.name} CGN ({options.nat.value} NAT to {public})"),
                       Namespace(core, f"{op.name} core roles")]
        links += [VethLink(ue, "eth0", cgn, "in0"),
                  VethLink(cgn, "out0", ix, f"{key}0"),
                  VethLink(core, "eth0", ix, f"{key}-core")]
        bridge_ports.append(f"{key}-core")
        addresses += [Address(ue, "eth0", UE_ADDRESS),
                      Address(cgn, "in0", CGN_INSIDE),
                      Address(cgn, "out0", f"{public}/24"),
                      Address(ix, f"{key}0", f"{router}/24")]
        routes += [Route(ue, "default", CGN_INSIDE.split("/")[0]),
                   Route(cgn, "default", router),
                   Route(core, "default", IX_V4),
                   Route(core, "default", IX_V6)]
        for role in (*op.roles, *op.borders):
            addresses.append(Address(core, "eth0", f"{role.ipv4}/{INTER_OPERATOR_V4_PREFIX}"))
            addresses.append(Address(core, "eth0", f"{role.ipv6}/{INTER_OPERATOR_V6_PREFIX}"))
        nameservers.setdefault(op.nameserver.ipv4, op.nameserver.ipv6)
        # The core forwards for its relay's kernel offload ([gateway] relay_offload = "nft").
        sysctls += [Sysctl(core, "net.ipv4.ip_forward", "1"),
                    Sysctl(cgn, "net.ipv4.ip_forward", "1"),
                    Sysctl(cgn, "net.netfilter.nf_conntrack_udp_timeout",
                           str(options.udp_timeout), optional=True),
                    Sysctl(cgn, "net.netfilter.nf_conntrack_udp_timeout_stream",
                           str(options.udp_stream_timeout), optional=True)]
        rulesets.append(NatRuleset(cgn, NAT_TABLE, render_nat(options.nat, public)))

    namespaces.append(Namespace(dns, "DNS server of the inter-operator network"))
    links.append(VethLink(dns, "eth0", ix, "dns"))
    bridge_ports.append("dns")
    for v4, v6 in nameservers.items():
        addresses.append(Address(dns, "eth0", f"{v4}/{INTER_OPERATOR_V4_PREFIX}"))
        addresses.append(Address(dns, "eth0", f"{v6}/{INTER_OPERATOR_V6_PREFIX}"))
    routes += [Route(dns, "default", IX_V4), Route(dns, "default", IX_V6)]
    plan = Plan(options=options, namespaces=tuple(namespaces), links=tuple(links),
                bridges=(Bridge(ix, "br0", tuple(bridge_ports)),),
                addresses=tuple(addresses), routes=tuple(routes), sysctls=tuple(sysctls),
                rulesets=tuple(rulesets))
    if options.netem_delay_ms is None:
        return plan
    return replace(plan, delays=link_delays(plan, options.netem_delay_ms))


def link_delays(plan: Plan, ms: int) -> tuple[Delay, ...]:
    """`ms` milliseconds on the egress of every interface that carries one of `plan`'s links.

    That is both ends of each veth, except the ends that are ports of a bridge: for those the
    bridge itself is the router's interface (br0). In the testbed: each UE's eth0, each CGN's
    in0 and out0, the router's alpha0, beta0 and br0, each core's and the DNS host's eth0.
    A datagram is delayed once per interface it leaves through, so a path's one-way delay is
    `ms` times the interfaces it leaves: a UE to its own core 3 (UE eth0, CGN out0, router
    br0), UE to UE 4, core to core or DNS 1 (bridged: only the sender's eth0).
    """
    if not 1 <= ms <= 10_000:
        raise TestbedUsageError(f"delay {ms} ms: give 1 to 10000 milliseconds")
    ports = {(bridge.netns, port) for bridge in plan.bridges for port in bridge.ports}
    ends = [end for link in plan.links
            for end in ((link.netns, link.dev), (link.peer_netns, link.peer_dev))]
    ends += [(bridge.netns, bridge.name) for bridge in plan.bridges]
    return tuple(Delay(netns, dev, ms) for netns, dev in ends if (netns, dev) not in ports)
