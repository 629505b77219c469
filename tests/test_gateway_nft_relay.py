"""The kernel relay (ims.gateway.nft_relay): rules and bookkeeping with fake runners, then
real forwarding through nftables in namespaces of this test's own (`uecr-<pid>-a|b|r`, see
`RelayBed`: A and a third host C on one side of the relay host R, B on the other), removed
after the module, also on failure. The namespace tests need root, ip, nft and conntrack and
skip with the reason otherwise (CI runs them as root)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence

import pytest

from ims.gateway.errors import GatewayUsageError
from ims.gateway.nft_relay import (
    DEFAULT_CONNTRACK_MARK,
    KernelFlow,
    KernelRelayCounters,
    KernelRelayError,
    KernelRelayToolMissing,
    NftRelayDataPlane,
    RelayBed,
    UnknownKernelFlow,
    measure_forwarding_rate,
    render_flow,
)
from ims.pcp.errors import NftError
from ims.testbed.builder import run_command
from tests.netns_helpers import recv, relay_bed, relay_conntrack

RELAY = "192.0.2.12"
A, B = ("203.0.113.2", 5000), ("198.51.100.2", 6000)


# -- without root: the rules and the bookkeeping -----------------------------------------------


class FakeKernel:
    """Records what the data plane asks of nft and conntrack; answers listings from `rules`."""

    def __init__(self) -> None:
        self.batches: list[str] = []
        self.conntrack: list[tuple[str, ...]] = []
        self.listing: dict[str, object] = {"nftables": []}
        self.fail_nft: str | None = None

    def nft(self, args: Sequence[str], stdin: str | None) -> str:
        if self.fail_nft is not None:
            raise NftError(self.fail_nft)
        if list(args[:2]) == ["-j", "list"]:
            return json.dumps(self.listing)
        assert stdin is not None
        self.batches.append(stdin)
        return ""

    def ct(self, args: Sequence[str]) -> int:
        self.conntrack.append(tuple(args))
        return 0

    def plane(self, forwarding: str = "1") -> NftRelayDataPlane:
        return NftRelayDataPlane("uecr-fake", runner=self.nft, conntrack=self.ct,
                                 sysctl=lambda name: forwarding)


def listed_rule(comment: str, chain: str, handle: int,
                counter: tuple[int, int] | None = None) -> dict[str, object]:
    expr: list[dict[str, object]] = [{"match": {"op": "==", "left": {"payload": {
        "protocol": "ip", "field": "saddr"}}, "right": "203.0.113.2"}}]
    if counter is not None:
        expr.append({"counter": {"packets": counter[0], "bytes": counter[1]}})
    return {"rule": {"family": "inet", "table": "ueconnect_relay", "chain": chain,
                     "handle": handle, "comment": comment, "expr": expr}}


def test_rules_translate_each_direction_to_the_other_peer_from_the_facing_port() -> None:
    rules = render_flow(KernelFlow("s1", RELAY, 40000, A, 40001, B))
    assert rules[:3] == [
        ("prerouting", "ip saddr 203.0.113.2 udp sport 5000 ip daddr 192.0.2.12 udp dport 40000 "
                       "ct mark set ct mark | 0x00100000 dnat ip to 198.51.100.2:6000 "
                       'comment "ueconnect-relay s1 a-to-b"'),
        ("postrouting", "ip saddr 203.0.113.2 udp sport 5000 ip daddr 198.51.100.2 udp dport 6000 "
                        "ct original ip daddr 192.0.2.12 ct original proto-dst 40000 "
                        'snat ip to 192.0.2.12:40001 comment "ueconnect-relay s1 a-to-b"'),
        ("forward", "ip saddr 203.0.113.2 udp sport 5000 ip daddr 198.51.100.2 udp dport 6000 "
                    'ct status dnat counter accept comment "ueconnect-relay s1 a-to-b"'),
    ]
    back = [rule for chain, rule in rules[3:]]
    assert "ip daddr 192.0.2.12 udp dport 40001" in back[0]
    assert "dnat ip to 203.0.113.2:5000" in back[0]
    assert back[1].endswith('snat ip to 192.0.2.12:40000 comment "ueconnect-relay s1 b-to-a"')


def test_ipv6_flow_uses_ip6_matches_and_bracketed_targets() -> None:
    rules = render_flow(KernelFlow("v6", "2001:db8::12", 40000, ("2001:db8:1::2", 5000),
                                   40001, ("2001:DB8:2::2", 6000)))
    assert "dnat ip6 to [2001:db8:2::2]:6000" in rules[0][1]
    assert "ct original ip6 daddr 2001:db8::12" in rules[1][1]


@pytest.mark.parametrize(("tag", "relay", "pa", "peer_a", "pb", "peer_b", "complaint"), [
    ("bad tag", RELAY, 40000, A, 40001, B, "tag"),
    ('q"uote', RELAY, 40000, A, 40001, B, "tag"),
    ("t", RELAY, 40000, A, 40000, B, "each side needs its own"),
    ("t", RELAY, 40000, A, 40001, A, "both"),
    ("t", RELAY, 0, A, 40001, B, "outside 1..65535"),
    ("t", RELAY, 40000, ("203.0.113.2", 70000), 40001, B, "outside 1..65535"),
    ("t", RELAY, 40000, ("2001:db8::1", 5000), 40001, B, "not IPv4"),
    ("t", "relay.example", 40000, A, 40001, B, "not an IP address"),
])
def test_flow_values_are_validated(tag: str, relay: str, pa: int, peer_a: tuple[str, int],
                                   pb: int, peer_b: tuple[str, int], complaint: str) -> None:
    with pytest.raises(GatewayUsageError, match=complaint):
        KernelFlow(tag, relay, pa, peer_a, pb, peer_b)


def test_install_is_one_batch_then_cuts_the_userspace_era_flows() -> None:
    kernel = FakeKernel()
    plane = kernel.plane()
    flow = plane.install("s1", RELAY, 40000, A, 40001, B)
    (batch,) = kernel.batches
    assert batch.startswith("add table inet ueconnect_relay\n")
    assert batch.count("add rule inet ueconnect_relay ") == 6
    assert ("-D", "-p", "udp", "--orig-src", "203.0.113.2", "--sport", "5000", "--orig-dst",
            RELAY, "--dport", "40000") in kernel.conntrack
    assert ("-D", "-p", "udp", "--orig-src", RELAY, "--sport", "40001", "--orig-dst",
            "198.51.100.2", "--dport", "6000") in kernel.conntrack
    assert len(kernel.conntrack) == 4
    assert plane.flows() == (flow,)
    with pytest.raises(GatewayUsageError, match="installed already"):
        plane.install("s1", RELAY, 40002, A, 40003, B)


def test_counters_are_payload_bytes_of_the_forward_rules() -> None:
    kernel = FakeKernel()
    plane = kernel.plane()
    plane.install("s1", RELAY, 40000, A, 40001, B)
    kernel.listing = {"nftables": [
        listed_rule("ueconnect-relay s1 a-to-b", "prerouting", 4),
        listed_rule("ueconnect-relay s1 a-to-b", "forward", 6, (3, 3 * (28 + 100))),
        listed_rule("ueconnect-relay s1 b-to-a", "forward", 9, (2, 2 * (28 + 10))),
        listed_rule("ueconnect-relay other b-to-a", "forward", 12, (7, 700)),
        listed_rule("someone else's", "forward", 13, (5, 500)),
    ]}
    assert plane.counters("s1") == KernelRelayCounters(3, 300, 2, 20)
    assert plane.installed_tags() == {"s1", "other"}


def test_remove_deletes_by_handle_and_cuts_the_flows() -> None:
    kernel = FakeKernel()
    plane = kernel.plane()
    plane.install("s1", RELAY, 40000, A, 40001, B)
    kernel.listing = {"nftables": [
        listed_rule("ueconnect-relay s1 a-to-b", "prerouting", 4),
        listed_rule("ueconnect-relay s1 a-to-b", "forward", 6, (1, 29)),
        listed_rule("ueconnect-relay s2 a-to-b", "forward", 8, (1, 29)),
    ]}
    kernel.batches.clear()
    kernel.conntrack.clear()
    assert plane.remove("s1") == KernelRelayCounters(1, 1, 0, 0)
    assert kernel.batches == ["delete rule inet ueconnect_relay prerouting handle 4\n"
                              "delete rule inet ueconnect_relay forward handle 6\n"]
    assert len(kernel.conntrack) == 4 and all(c[0] == "-D" for c in kernel.conntrack)
    assert plane.flows() == ()
    with pytest.raises(UnknownKernelFlow, match="no kernel relay flow 's1'"):
        plane.remove("s1")
    with pytest.raises(UnknownKernelFlow):
        plane.counters("never")


def test_reset_drops_the_table_and_every_marked_flow_and_close_refuses_installs() -> None:
    kernel = FakeKernel()
    plane = kernel.plane()
    plane.install("s1", RELAY, 40000, A, 40001, B)
    kernel.conntrack.clear()
    plane.close()
    assert kernel.batches[-1] == ("add table inet ueconnect_relay\n"
                                  "delete table inet ueconnect_relay\n")
    mark = f"{DEFAULT_CONNTRACK_MARK:#x}"
    assert kernel.conntrack == [("-D", "-f", "ipv4", "--mark", f"{mark}/{mark}"),
                                ("-D", "-f", "ipv6", "--mark", f"{mark}/{mark}")]
    assert plane.flows() == ()
    with pytest.raises(GatewayUsageError, match="closed"):
        plane.install("s2", RELAY, 40000, A, 40001, B)


def test_forwarding_off_is_a_clear_error_before_any_rule() -> None:
    kernel = FakeKernel()
    with pytest.raises(KernelRelayError, match=r"net\.ipv4\.ip_forward is 0 .*sysctl -w"):
        kernel.plane(forwarding="0").install("s1", RELAY, 40000, A, 40001, B)
    assert kernel.batches == []


def test_nft_failure_is_a_gateway_error_quoting_nft() -> None:
    kernel = FakeKernel()
    kernel.fail_nft = "nft -f - failed (1): Error: Could not process rule"
    with pytest.raises(KernelRelayError, match="Could not process rule"):
        kernel.plane().install("s1", RELAY, 40000, A, 40001, B)


def test_missing_conntrack_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeKernel()
    monkeypatch.setattr("ims.gateway.nft_relay.shutil.which",
                        lambda tool: None if tool == "conntrack" else f"/usr/sbin/{tool}")
    plane = NftRelayDataPlane("uecr-fake", runner=kernel.nft, sysctl=lambda name: "1")
    with pytest.raises(KernelRelayToolMissing, match="Debian package conntrack"):
        plane.install("s1", RELAY, 40000, A, 40001, B)
    assert kernel.batches == []


def test_bad_table_name_and_mark_are_refused() -> None:
    with pytest.raises(GatewayUsageError, match="table name"):
        NftRelayDataPlane(table="no-dashes")
    with pytest.raises(GatewayUsageError, match="one bit"):
        NftRelayDataPlane(conntrack_mark=3)


# -- as root: real forwarding in namespaces of our own -----------------------------------------


@pytest.fixture(scope="module")
def bed() -> Iterator[RelayBed]:
    yield from relay_bed(f"uecr-{os.getpid() % 100000}")


class Hosts:
    """Fresh sockets for one test: the peers, the third host, the relay's two ports (bound as
    the userspace relay binds them)."""

    def __init__(self, bed: RelayBed) -> None:
        self.bed = bed
        self.a = bed.udp_socket(bed.a, bed.peer_a_ip)
        self.c = bed.udp_socket(bed.a, bed.third_ip)
        self.b = bed.udp_socket(bed.b, bed.peer_b_ip)
        self.ra = bed.udp_socket(bed.r, bed.relay_ip)  # R:Pa, faces A
        self.rb = bed.udp_socket(bed.r, bed.relay_ip)  # R:Pb, faces B
        self.all = (self.a, self.c, self.b, self.ra, self.rb)

    @property
    def pa(self) -> int:
        return int(self.ra.getsockname()[1])

    @property
    def pb(self) -> int:
        return int(self.rb.getsockname()[1])

    def install(self, plane: NftRelayDataPlane, tag: str) -> KernelFlow:
        return plane.install(tag, self.bed.relay_ip, self.pa, self.a.getsockname(), self.pb,
                             self.b.getsockname())

    def close(self) -> None:
        for sock in self.all:
            sock.close()


@pytest.fixture
def hosts(bed: RelayBed) -> Iterator[Hosts]:
    made = Hosts(bed)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def plane(bed: RelayBed) -> Iterator[NftRelayDataPlane]:
    data_plane = NftRelayDataPlane(bed.r)
    data_plane.reset()
    try:
        yield data_plane
    finally:
        data_plane.close()


def test_a_first_reaches_b_from_pb_and_b_replies_reach_a_from_pa(
        hosts: Hosts, plane: NftRelayDataPlane) -> None:
    relay = hosts.bed.relay_ip
    hosts.install(plane, "a-first")
    hosts.a.sendto(b"hello from A", (relay, hosts.pa))
    assert recv(hosts.b) == (b"hello from A", (relay, hosts.pb))
    hosts.b.sendto(b"hi A", (relay, hosts.pb))
    assert recv(hosts.a) == (b"hi A", (relay, hosts.pa))
    hosts.a.sendto(b"again", (relay, hosts.pa))
    assert recv(hosts.b) == (b"again", (relay, hosts.pb))
    # The kernel forwarded all of it: nothing climbed to the relay's sockets.
    assert recv(hosts.ra, 0.1) is None and recv(hosts.rb, 0.1) is None
    assert plane.counters("a-first") == KernelRelayCounters(2, 12 + 5, 1, 4)


def test_b_first_reaches_a_from_pa_and_a_replies_reach_b_from_pb(
        hosts: Hosts, plane: NftRelayDataPlane) -> None:
    relay = hosts.bed.relay_ip
    hosts.install(plane, "b-first")
    hosts.b.sendto(b"B opens", (relay, hosts.pb))
    assert recv(hosts.a) == (b"B opens", (relay, hosts.pa))
    hosts.a.sendto(b"A answers", (relay, hosts.pa))
    assert recv(hosts.b) == (b"A answers", (relay, hosts.pb))
    assert plane.counters("b-first") == KernelRelayCounters(1, 9, 1, 7)


def test_a_third_host_is_not_forwarded_and_reaches_the_userspace_socket(
        hosts: Hosts, plane: NftRelayDataPlane) -> None:
    relay = hosts.bed.relay_ip
    hosts.install(plane, "third")
    hosts.c.sendto(b"intruder", (relay, hosts.pa))
    assert recv(hosts.b, 0.5) is None
    assert recv(hosts.ra) == (b"intruder", (hosts.bed.third_ip, hosts.c.getsockname()[1]))
    # A's port from another source port of A's own address: not the permitted peer either.
    stray = hosts.bed.udp_socket(hosts.bed.a, hosts.bed.peer_a_ip)
    try:
        stray.sendto(b"wrong port", (relay, hosts.pa))
        assert recv(hosts.b, 0.5) is None
        assert recv(hosts.ra) is not None
    finally:
        stray.close()
    hosts.a.sendto(b"still fine", (relay, hosts.pa))
    assert recv(hosts.b) == (b"still fine", (relay, hosts.pb))
    assert plane.counters("third") == KernelRelayCounters(1, 10, 0, 0)


@pytest.fixture
def stateful_firewall(bed: RelayBed) -> Iterator[None]:
    """A host firewall on R that tracks connections (as an operator core's would), so the
    userspace era leaves conntrack entries behind; removed after the test."""
    ruleset = ("table inet hostfw {\n  chain input {\n    type filter hook input priority 0;\n"
               "    ct state established,related accept\n  }\n}\n")
    run_command(["ip", "netns", "exec", bed.r, "nft", "-f", "-"], ruleset)
    try:
        yield
    finally:
        run_command(["ip", "netns", "exec", bed.r, "nft", "delete", "table", "inet", "hostfw"])


@pytest.mark.usefixtures("stateful_firewall")
def test_install_takes_over_flows_the_userspace_relay_carried(
        hosts: Hosts, plane: NftRelayDataPlane) -> None:
    """Before the handover the relay's sockets carry the flow (with conntrack entries to and
    from them); after install the very next datagram goes through the kernel, from R:Pb."""
    relay = hosts.bed.relay_ip
    hosts.a.sendto(b"via userspace", (relay, hosts.pa))
    assert recv(hosts.ra) == (b"via userspace", hosts.a.getsockname())
    hosts.rb.sendto(b"via userspace", hosts.b.getsockname())  # what the userspace relay does
    assert recv(hosts.b) == (b"via userspace", (relay, hosts.pb))
    assert relay_conntrack(hosts.bed, "--orig-dst", relay, "--dport", str(hosts.pa))
    assert relay_conntrack(hosts.bed, "--orig-src", relay, "--sport", str(hosts.pb))
    hosts.install(plane, "handover")
    hosts.a.sendto(b"via kernel", (relay, hosts.pa))
    assert recv(hosts.b) == (b"via kernel", (relay, hosts.pb))
    assert recv(hosts.ra, 0.1) is None
    hosts.b.sendto(b"back", (relay, hosts.pb))
    assert recv(hosts.a) == (b"back", (relay, hosts.pa))


def test_remove_leaves_no_rule_no_conntrack_entry_and_stops_forwarding(
        hosts: Hosts, plane: NftRelayDataPlane) -> None:
    relay, bed = hosts.bed.relay_ip, hosts.bed
    hosts.install(plane, "gone")
    hosts.a.sendto(b"one", (relay, hosts.pa))
    assert recv(hosts.b) == (b"one", (relay, hosts.pb))
    hosts.b.sendto(b"two", (relay, hosts.pb))
    assert recv(hosts.a) == (b"two", (relay, hosts.pa))
    assert plane.remove("gone") == KernelRelayCounters(1, 3, 1, 3)
    assert plane.installed_tags() == frozenset()
    listing = json.loads(run_command(["ip", "netns", "exec", bed.r, "nft", "-j", "list",
                                      "ruleset"]))
    assert not [item for item in listing["nftables"] if "rule" in item]
    for port in (hosts.pa, hosts.pb):
        assert relay_conntrack(bed, "--orig-dst", relay, "--dport", str(port)) == []
        assert relay_conntrack(bed, "--orig-src", relay, "--sport", str(port)) == []
    hosts.a.sendto(b"after", (relay, hosts.pa))
    assert recv(hosts.b, 0.5) is None
    assert recv(hosts.ra) == (b"after", hosts.a.getsockname())
    hosts.b.sendto(b"after too", (relay, hosts.pb))
    assert recv(hosts.a, 0.2) is None


def test_reset_removes_the_table_and_cuts_every_marked_flow(
        hosts: Hosts, bed: RelayBed) -> None:
    relay = bed.relay_ip
    first = NftRelayDataPlane(bed.r)
    first.reset()
    hosts.install(first, "left-over")
    hosts.a.sendto(b"x", (relay, hosts.pa))
    assert recv(hosts.b) == (b"x", (relay, hosts.pb))
    mark = f"{DEFAULT_CONNTRACK_MARK:#x}"
    assert relay_conntrack(bed, "--mark", f"{mark}/{mark}")
    # A new owner (a restarted process) resets: the earlier run's flow must stop too.
    restarted = NftRelayDataPlane(bed.r)
    restarted.reset()
    assert restarted.installed_tags() == frozenset()  # no table at all reads as nothing
    tables = json.loads(run_command(["ip", "netns", "exec", bed.r, "nft", "-j", "list",
                                     "tables"]))
    assert "ueconnect_relay" not in {t["table"]["name"] for t in tables["nftables"]
                                     if "table" in t}
    assert relay_conntrack(bed, "--mark", f"{mark}/{mark}") == []
    hosts.a.sendto(b"y", (relay, hosts.pa))
    assert recv(hosts.b, 0.5) is None
    assert recv(hosts.ra) == (b"y", hosts.a.getsockname())


def test_microbenchmark_forwards_every_datagram_and_reports_a_rate(bed: RelayBed) -> None:
    result = measure_forwarding_rate(2000, 160, bed=bed)
    assert result.sent == 2000
    assert result.received >= 1980  # veth forwarding on an idle box loses nothing, or next to
    assert result.counters.a_to_b_datagrams == result.received or result.received < 2000
    assert result.counters.a_to_b_bytes == 160 * result.counters.a_to_b_datagrams
    assert result.datagrams_per_second > 0
    tables = run_command(["ip", "netns", "exec", bed.r, "nft", "list", "tables"])
    assert "ueconnect_relay_bench" not in tables
    with pytest.raises(GatewayUsageError):
        measure_forwarding_rate(10**7, bed=bed)
    routed = measure_forwarding_rate(500, 160, bed=bed, through_relay=False)
    assert routed.received >= 495 and routed.counters == KernelRelayCounters()
