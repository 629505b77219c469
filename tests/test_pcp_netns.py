"""The PCP server on real nftables NAT, in network namespaces this test creates.

Topology (all namespaces ours, removed in teardown even after failures):

    ue  [eth0 100.64.0.2/10 (UE), 100.64.0.9/10 (gateway = PCP control)]
      |
    cgn [in0 100.64.0.1/10 | out0 198.51.100.1/24]  masquerade fully-random on out0
      |                                               + the PCP server and its table
    peer [eth0 198.51.100.2/24 (permitted peer), 198.51.100.3/24 (another host)]

The server runs as `ueconnect pcp serve` inside cgn, the gateway asks with `ueconnect pcp
request` from ue. Needs root, ip and nft; skips with the reason otherwise (CI runs as root).
"""

from __future__ import annotations

import ipaddress
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ims.pcp.codec import Endpoint, Filter, MapData, Request, encode_request
from ims.pcp.constants import PROTOCOL_UDP, Opcode
from ims.pcp.errors import NftError
from ims.pcp.nft import (
    DEFAULT_TABLE,
    FAMILY,
    NftMappingTable,
    Translation,
    listed_translations,
    render_rules,
    run_nft,
)
from ims.pcp.server import Mapping, MappingChanges, PcpServer, PcpServerConfig
from ims.testbed.requirements import missing_for_world
from tests.netns_helpers import CLI, NETNS_TOOLS, NatBed

pytestmark = pytest.mark.root

EXTERNAL = "198.51.100.1"
UE, GATEWAY, CGN_INSIDE = "100.64.0.2", "100.64.0.9", "100.64.0.1"
PEER, OTHER = "198.51.100.2", "198.51.100.3"
CGN_RULESET = """table ip cgn {
  chain post {
    type nat hook postrouting priority srcnat;
    oifname "out0" masquerade fully-random
  }
}
"""


@pytest.fixture(scope="module")
def testbed() -> Iterator[NatBed]:
    reason = missing_for_world(tools=NETNS_TOOLS)
    if reason:
        pytest.skip(reason)
    tag = f"uepcp{os.getpid() % 100000}"
    with NatBed(f"{tag}-ue", f"{tag}-cgn", f"{tag}-peer").built(
            inside=("in0", (f"{CGN_INSIDE}/10",)), outside=("out0", (f"{EXTERNAL}/24",)),
            ue=(f"{UE}/10", f"{GATEWAY}/10"), peer=(f"{PEER}/24", f"{OTHER}/24"),
            ruleset=CGN_RULESET) as bed:
        yield bed


def test_nft_table_applies_and_removes_mappings_in_process(testbed: NatBed) -> None:
    """The sans-IO server's changes through NftMappingTable, read back with nft -j."""
    table = NftMappingTable("ueconnect_pcp_unit", netns=testbed.cgn)
    table.reset()
    try:
        server = PcpServer(PcpServerConfig(ipaddress.ip_address(EXTERNAL)), started_at=0.0)
        wire = encode_request(Request(300, ipaddress.ip_address(UE), MapData(b"n" * 12, 17, 7000),
                                      (Filter(128, 9000, ipaddress.ip_address(PEER)),)))
        reply = server.handle_datagram(wire, Endpoint(ipaddress.ip_address(UE), 1), 0.0)
        table.apply(reply.changes)
        (mapping,) = reply.changes.added
        assert table.installed_ids() == {mapping.mapping_id}
        assert len(table.installed()) == len(render_rules(mapping)) == 2
        table.apply(server.expire(1000.0))
        assert table.installed_ids() == frozenset()
        table.apply(MappingChanges())  # nothing to do is fine
    finally:
        table.close()
    assert "ueconnect_pcp_unit" not in testbed.tables()


def _mapping(mapping_id: str, internal_port: int, external_port: int,
             peer: tuple[str, int] | None) -> Mapping:
    ip = ipaddress.ip_address
    return Mapping(mapping_id, Opcode.PEER if peer else Opcode.MAP, PROTOCOL_UDP,
                   Endpoint(ip(UE), internal_port), Endpoint(ip(EXTERNAL), external_port),
                   b"n" * 12, 60, 60.0, Endpoint(ip(peer[0]), peer[1]) if peer else None)


def test_reset_and_close_cut_the_flows_of_the_mappings_they_remove(testbed: NatBed) -> None:
    """A restarted server (reset of a table a crashed run left) and a stopping one (close)
    remove the rules and the live flows through them; the rules are read back from nft."""
    name = "ueconnect_pcp_flows"
    peer_mapping = _mapping("m1", 4100, 40100, (PEER, 5100))
    crashed = NftMappingTable(name, netns=testbed.cgn)
    crashed.reset()
    crashed.apply(MappingChanges(added=(peer_mapping,)))
    listing = run_nft(["-j", "list", "table", FAMILY, name], netns=testbed.cgn)
    assert listed_translations(listing) == [Translation.of(peer_mapping)]
    assert testbed.reaches(testbed.peer, (PEER, 5100), (EXTERNAL, 40100),
                           testbed.ue, (UE, 4100)) == f"{PEER}:5100"

    restarted = NftMappingTable(name, netns=testbed.cgn)
    restarted.reset()
    try:
        assert restarted.installed_ids() == frozenset()
        assert testbed.reaches(testbed.peer, (PEER, 5100), (EXTERNAL, 40100),
                               testbed.ue, (UE, 4100)) is None

        map_mapping = _mapping("m1", 4101, 40101, None)
        restarted.apply(MappingChanges(added=(map_mapping,)))
        assert testbed.reaches(testbed.peer, (OTHER, 5101), (EXTERNAL, 40101),
                               testbed.ue, (UE, 4101)) == f"{OTHER}:5101"
    finally:
        restarted.close()
    assert name not in testbed.tables()
    assert testbed.reaches(testbed.peer, (OTHER, 5101), (EXTERNAL, 40101),
                           testbed.ue, (UE, 4101)) is None


def test_missing_conntrack_is_named_with_its_debian_package(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    table = NftMappingTable("unused", runner=lambda args, stdin: "")
    with pytest.raises(NftError, match="Debian package conntrack"):
        table.reset()


def test_peer_mapping_admits_only_the_peer_and_keeps_outbound_port(testbed: NatBed) -> None:
    server = testbed.popen(testbed.cgn, sys.executable, "-c", CLI, "pcp", "serve",
                           "--listen", CGN_INSIDE, "--external", EXTERNAL,
                           "--control", GATEWAY, "--min-lifetime", "2")
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()
        assert "PCP server on" in banner, server.stderr.read() if server.stderr else banner

        def request(*args: str) -> dict[str, str]:
            done = testbed.cli(testbed.ue, "pcp", "request", "--server", CGN_INSIDE,
                               "--source", GATEWAY, "--third-party", UE, "--timeout", "5",
                               *args)
            assert done.returncode == 0, done.stderr
            return dict(f.split("=", 1) for f in done.stdout.split() if "=" in f)

        # 1. PEER for the UE's port 4000 admitting 198.51.100.2:5000 only.
        granted = request("--internal-port", "4000", "--peer", f"{PEER}:5000",
                          "--lifetime", "60")
        ext_port = int(granted["external"].rsplit(":", 1)[1])
        assert granted["external"].startswith(EXTERNAL + ":")
        assert testbed.our_rules() == ["ueconnect-pcp m1"] * 2
        seen = testbed.reaches(testbed.peer, (PEER, 5000), (EXTERNAL, ext_port),
                               testbed.ue, (UE, 4000))
        assert seen == f"{PEER}:5000"
        # Another host, same port: not admitted.
        assert testbed.reaches(testbed.peer, (OTHER, 5000), (EXTERNAL, ext_port),
                               testbed.ue, (UE, 4000)) is None
        # The permitted host from another port: not admitted either (PEER is one endpoint).
        assert testbed.reaches(testbed.peer, (PEER, 5999), (EXTERNAL, ext_port),
                               testbed.ue, (UE, 4000)) is None

        # 2. Outbound first: the UE's datagram from its mapped port leaves on the mapped port
        # (the SNAT rule, not conntrack of an earlier inbound flow).
        granted2 = request("--internal-port", "4001", "--peer", f"{PEER}:5001",
                           "--lifetime", "60")
        ext2 = int(granted2["external"].rsplit(":", 1)[1])
        seen = testbed.reaches(testbed.ue, (UE, 4001), (PEER, 5001), testbed.peer, (PEER, 5001))
        assert seen == f"{EXTERNAL}:{ext2}"

        # 3. Deletion (lifetime 0, same nonce) removes the rules, the admission and the live
        # flows: traffic crosses the mapping both ways first, so conntrack holds its bindings.
        granted3 = request("--internal-port", "4003", "--peer", f"{PEER}:5003",
                           "--lifetime", "60")
        ext3 = int(granted3["external"].rsplit(":", 1)[1])
        assert "ueconnect-pcp m3" in testbed.our_rules()
        assert testbed.reaches(testbed.peer, (PEER, 5003), (EXTERNAL, ext3),
                               testbed.ue, (UE, 4003)) == f"{PEER}:5003"
        assert testbed.reaches(testbed.ue, (UE, 4003), (PEER, 5003),
                               testbed.peer, (PEER, 5003)) == f"{EXTERNAL}:{ext3}"
        assert testbed.flows(f"{EXTERNAL}", ext3), "the flow should be in conntrack"
        done = testbed.cli(testbed.ue, "pcp", "request", "--server", CGN_INSIDE, "--source",
                           GATEWAY, "--third-party", UE, "--internal-port", "4003", "--peer",
                           f"{PEER}:5003", "--lifetime", "0", "--nonce", granted3["nonce"])
        assert done.returncode == 0, done.stderr
        assert "ueconnect-pcp m3" not in testbed.our_rules()
        # The next datagram of the same flow no longer arrives (without the conntrack cut it
        # would, until the UDP timeout)...
        assert testbed.reaches(testbed.peer, (PEER, 5003), (EXTERNAL, ext3),
                               testbed.ue, (UE, 4003)) is None
        # ...and the UE's next datagram leaves through the CGN's own NAT, not the mapped port.
        seen = testbed.reaches(testbed.ue, (UE, 4003), (PEER, 5003), testbed.peer, (PEER, 5003))
        assert seen is not None and seen != f"{EXTERNAL}:{ext3}"

        # 4. Expiry: a 2 s mapping is gone from nft after its lifetime.
        granted4 = request("--internal-port", "4004", "--peer", f"{PEER}:5004",
                           "--lifetime", "2")
        assert granted4["lifetime"] == "2"
        assert "ueconnect-pcp m4" in testbed.our_rules()
        deadline = time.monotonic() + 6
        while "ueconnect-pcp m4" in testbed.our_rules() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "ueconnect-pcp m4" not in testbed.our_rules()

        # 5. A gateway that is not a control address is refused (NOT_AUTHORIZED).
        refused = testbed.cli(testbed.ue, "pcp", "request", "--server", CGN_INSIDE,
                              "--source", UE, "--third-party", UE, "--internal-port", "4005",
                              "--peer", f"{PEER}:5005", "--timeout", "5")
        assert refused.returncode == 1 and "NOT_AUTHORIZED" in refused.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)
    # Shutdown removes our table: nothing of ours is left in the CGN.
    assert DEFAULT_TABLE not in testbed.tables()
    assert "cgn" in testbed.tables()
