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
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
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

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[1]
# The CLI group on its own (independent of which groups ims/cli/__init__.py composes).
CLI = ("import argparse, sys; from ims.cli import pcp; p = argparse.ArgumentParser(); "
       "pcp.register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
UDP_TOOL = r"""
import socket, sys
mode, a, b = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((a, b))
if mode == "recv":
    s.settimeout(float(sys.argv[4]))
    print("ready", flush=True)
    try:
        data, addr = s.recvfrom(2048)
        print(f"{addr[0]}:{addr[1]} {data.decode()}", flush=True)
    except socket.timeout:
        print("nothing", flush=True)
else:
    s.sendto(sys.argv[6].encode(), (sys.argv[4], int(sys.argv[5])))
"""
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


def _skip_reason() -> str | None:
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "needs root to create network namespaces and nftables rules (CI runs as root)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables"), ("conntrack", "conntrack")):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed (Debian package {package})"
    return None


def sh(*argv: str, check: bool = True, stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=20,
                          check=False)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class NatBed:
    ue: str
    cgn: str
    peer: str

    def run(self, ns: str, *argv: str, check: bool = True) -> str:
        return sh("ip", "netns", "exec", ns, *argv, check=check)

    def popen(self, ns: str, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})

    def cli(self, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLI, *args],
                              capture_output=True, text=True, timeout=20, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)

    def reaches(self, src_ns: str, src: tuple[str, int], dst: tuple[str, int],
                recv_ns: str, bind: tuple[str, int], wait: float = 0.6) -> str | None:
        """Send one datagram; return 'ip:port' the receiver saw it from, or None."""
        receiver = self.popen(recv_ns, sys.executable, "-c", UDP_TOOL, "recv", bind[0],
                              str(bind[1]), str(wait))
        try:
            assert receiver.stdout is not None
            assert receiver.stdout.readline().strip() == "ready"
            payload = f"probe-{random.randrange(1 << 30)}"
            self.run(src_ns, sys.executable, "-c", UDP_TOOL, "send", src[0], str(src[1]),
                     dst[0], str(dst[1]), payload)
            line = receiver.stdout.readline().strip()
        finally:
            receiver.wait(timeout=wait + 5)
        if line == "nothing":
            return None
        source, _, data = line.partition(" ")
        assert data == payload
        return source

    def our_rules(self, table: str = DEFAULT_TABLE) -> list[str]:
        """Comments of the rules in our table, read back with `nft -j list ruleset`."""
        listing = json.loads(self.run(self.cgn, "nft", "-j", "list", "ruleset"))
        return [item["rule"].get("comment", "") for item in listing["nftables"]
                if "rule" in item and item["rule"]["table"] == table]

    def flows(self, external: str, port: int) -> str:
        """conntrack's listing of the UDP flows sent to external:port."""
        return self.run(self.cgn, "conntrack", "-L", "-p", "udp", "--orig-dst", external,
                        "--dport", str(port), check=False)

    def tables(self) -> set[str]:
        listing = json.loads(self.run(self.cgn, "nft", "-j", "list", "tables"))
        return {item["table"]["name"] for item in listing["nftables"] if "table" in item}


@pytest.fixture(scope="module")
def testbed() -> Iterator[NatBed]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    tag = f"uepcp{os.getpid() % 100000}"
    bed = NatBed(f"{tag}-ue", f"{tag}-cgn", f"{tag}-peer")
    try:
        try:
            for ns in (bed.ue, bed.cgn, bed.peer):
                sh("ip", "netns", "add", ns)
        except RuntimeError as exc:
            pytest.skip(f"cannot create network namespaces here: {exc}")
        # veth pairs are created inside our namespaces; the host's own never sees them.
        sh("ip", "-n", bed.ue, "link", "add", "eth0", "type", "veth", "peer", "name", "in0",
           "netns", bed.cgn)
        sh("ip", "-n", bed.peer, "link", "add", "eth0", "type", "veth", "peer", "name", "out0",
           "netns", bed.cgn)
        for ns, dev, addrs in ((bed.ue, "eth0", (f"{UE}/10", f"{GATEWAY}/10")),
                               (bed.cgn, "in0", (f"{CGN_INSIDE}/10",)),
                               (bed.cgn, "out0", (f"{EXTERNAL}/24",)),
                               (bed.peer, "eth0", (f"{PEER}/24", f"{OTHER}/24"))):
            for addr in addrs:
                sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", bed.ue, "route", "add", "default", "via", CGN_INSIDE)
        bed.run(bed.cgn, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        # The CGN itself: endpoint-dependent NAT with fully random ports ("symmetric").
        sh("ip", "netns", "exec", bed.cgn, "nft", "-f", "-", stdin=CGN_RULESET)
        yield bed
    finally:
        for ns in (bed.ue, bed.cgn, bed.peer):
            sh("ip", "netns", "del", ns, check=False)


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
