"""What the tests that build network namespaces of their own share (root only).

- `relay_bed`: the kernel relay's three namespaces (ims.gateway.nft_relay.RelayBed) for a
  module's tests, skipping with the reason where the host cannot have them; `recv` and
  `relay_conntrack` to watch what crosses it;
- `NatBed`: a UE, a CGN and a peer namespace in a line (`NatBed.built`), the CGN doing the NAT
  its ruleset says, with `sh`, the CLI and the one-datagram probe the PCP tests drive it with.

The skip reasons come from ims.testbed.requirements (`missing_for_world` with the tools each
bed needs), as the testbed world's tests do.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from ims.gateway.nft_relay import RelayBed
from ims.pcp.nft import DEFAULT_TABLE
from ims.testbed.builder import run_command
from ims.testbed.errors import CommandFailed
from ims.testbed.requirements import missing_for_world

ROOT = Path(__file__).resolve().parents[1]
# (program, Debian package) the beds run: namespaces and veths, nft rules, conntrack.
NETNS_TOOLS: tuple[tuple[str, str], ...] = (
    ("ip", "iproute2"), ("nft", "nftables"), ("conntrack", "conntrack"))


# -- the kernel relay's bed --------------------------------------------------------------------


def relay_bed(prefix: str, tools: Sequence[tuple[str, str]] = NETNS_TOOLS
              ) -> Iterator[RelayBed]:
    """A module fixture's body: `yield from relay_bed(prefix)`. Skips naming what is missing
    (root, `tools`) or when this host cannot make namespaces; removed after, also on failure."""
    reason = missing_for_world(tools=tools)
    if reason:
        pytest.skip(reason)
    try:
        with RelayBed.create(prefix) as made:
            yield made
    except CommandFailed as exc:
        if "netns add" in str(exc):
            pytest.skip(f"cannot create network namespaces here: {exc}")
        raise


def recv(sock: socket.socket, wait: float = 1.0) -> tuple[bytes, tuple[str, int]] | None:
    """The next datagram on `sock` and its source, None when none comes within `wait` s."""
    sock.settimeout(wait)
    try:
        data, source = sock.recvfrom(2048)
    except TimeoutError:
        return None
    return data, (source[0], source[1])


def relay_conntrack(bed: RelayBed, *args: str) -> list[str]:
    """The relay host's UDP conntrack entries; `args` are conntrack's own filters."""
    listed = run_command(["ip", "netns", "exec", bed.r, "conntrack", "-L", "-p", "udp", *args])
    return [line for line in listed.splitlines() if line.strip()]


# -- a CGN between a UE and a peer -------------------------------------------------------------

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


def sh(*argv: str, check: bool = True, stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=20,
                          check=False)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class NatBed:
    """Three namespaces in a line: `ue` [eth0] --- [inside] `cgn` [outside] --- [eth0] `peer`."""

    ue: str
    cgn: str
    peer: str

    @contextmanager
    def built(self, *, inside: tuple[str, Sequence[str]], outside: tuple[str, Sequence[str]],
              ue: Sequence[str], peer: Sequence[str], ruleset: str) -> Iterator[NatBed]:
        """Make the namespaces and their links; remove them after, also on failure.

        `inside`/`outside`: the CGN's device towards the UE/the peer and its addresses;
        `ue`, `peer`: the addresses of their eth0 (each "address/prefix"). The UE's default
        route is the CGN's first inside address; the CGN forwards, `ruleset` (nft) loaded.
        Skips when this host cannot make namespaces."""
        namespaces = (self.ue, self.cgn, self.peer)
        try:
            try:
                for ns in namespaces:
                    sh("ip", "netns", "add", ns)
            except RuntimeError as exc:
                pytest.skip(f"cannot create network namespaces here: {exc}")
            # veth pairs are created inside our namespaces; the host's own never sees them.
            (inside_dev, inside_addrs), (outside_dev, outside_addrs) = inside, outside
            sh("ip", "-n", self.ue, "link", "add", "eth0", "type", "veth", "peer", "name",
               inside_dev, "netns", self.cgn)
            sh("ip", "-n", self.peer, "link", "add", "eth0", "type", "veth", "peer", "name",
               outside_dev, "netns", self.cgn)
            for ns, dev, addrs in ((self.ue, "eth0", ue), (self.cgn, inside_dev, inside_addrs),
                                   (self.cgn, outside_dev, outside_addrs),
                                   (self.peer, "eth0", peer)):
                for addr in addrs:
                    sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
                sh("ip", "-n", ns, "link", "set", dev, "up")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", self.ue, "route", "add", "default", "via",
               inside_addrs[0].partition("/")[0])
            self.run(self.cgn, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            sh("ip", "netns", "exec", self.cgn, "nft", "-f", "-", stdin=ruleset)
            yield self
        finally:
            for ns in namespaces:
                sh("ip", "netns", "del", ns, check=False)

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
