"""Our PCP client (ims.pcp.aioclient) against a third-party PCP server: Debian's miniupnpd
2.3.1 with its nftables backend, in network namespaces this test creates.

    lan  [eth0 100.64.0.2/24 (the UE), 100.64.0.9/24 (the gateway asking with THIRD_PARTY)]
      |
    gw   [lan0 100.64.0.1/24 | wan0 172.31.255.1/24]  miniupnpd, PCP on 100.64.0.1:5351
      |
    out  [eth0 172.31.255.2/24 (a remote host), 172.31.255.3 + .4/24 (coturn, STUN only)]

miniupnpd refuses to forward when its external address is reserved or private (documentation
prefixes, 100.64/10, 172.16/12...: "Port forwarding is impossible", then every PCP MAP gets
NO_RESOURCES), and `ext_ip=` with such an address is a start-up error. What makes it work with
a private address is `ext_perform_stun=yes`: at start it runs the RFC 5780 test against a STUN
server (four Binding requests, with CHANGE-REQUEST for another IP and port); all four answered
with the interface's own address and ports means "unrestricted 1:1 NAT" and port forwarding is
enabled, on the address STUN reported. coturn with two listening addresses is that STUN server.

miniupnpd 2.3.1 serves MAP with THIRD_PARTY correctly; PEER installs its SNAT rule with the
ports swapped and no DNAT, and FILTER is accepted but not applied (docs/pcp.md). Those are
granted to our client (the wire exchange is checked) but their data plane is not asserted.

Needs root, ip, nft, miniupnpd (+ miniupnpd-nftables) and coturn; skips naming what is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ims.testbed.requirements import missing_for_world
from tests.netns_helpers import ROOT, NatBed

pytestmark = pytest.mark.root

UE, GATEWAY, GW_INSIDE = "100.64.0.2", "100.64.0.9", "100.64.0.1"
EXTERNAL, REMOTE = "172.31.255.1", "172.31.255.2"
STUN_PRIMARY, STUN_OTHER, STUN_PORT = "172.31.255.3", "172.31.255.4", 3478

# The configuration that works (see the module docstring); {stun} is STUN_PRIMARY.
MINIUPNPD_CONF = """\
ext_ifname=wan0
listening_ip=lan0
ext_perform_stun=yes
ext_stun_host={stun}
ext_stun_port={port}
enable_natpmp=yes
enable_upnp=no
pcp_allow_thirdparty=yes
secure_mode=no
min_lifetime=2
max_lifetime=3600
uuid=3f1a7c2e-5b4d-4e8f-9a6b-0c1d2e3f4a5b
allow 1024-65535 100.64.0.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
"""
# The nftables backend only adds rules: the tables and chains (its default names) must exist,
# as Debian's /etc/miniupnpd/nft_init.sh would make them (forward policy accept here).
MINIUPNPD_NFT = """\
table inet filter {
  chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }
  chain miniupnpd { }
  chain prerouting { type nat hook prerouting priority -100; policy accept;
                     jump prerouting_miniupnpd; }
  chain postrouting { type nat hook postrouting priority 100; policy accept;
                      jump postrouting_miniupnpd; }
  chain prerouting_miniupnpd { }
  chain postrouting_miniupnpd { }
}
"""
READY_LINE = "Listening for NAT-PMP/PCP traffic"
FORWARDING_LINE = "Port forwarding is now enabled"
START_TIMEOUT = 12.0  # miniupnpd's STUN test waits up to 3 s per round

# Runs in the lan namespace: MAP with THIRD_PARTY, wait for the client's own renewal, delete.
# One line out per step; the test answers with a line on stdin when it has checked the step.
DRIVER = r"""
import asyncio, ipaddress, sys
from ims.pcp.aioclient import open_pcp_client
from ims.pcp.client import MappingReady, MappingRequest
from ims.pcp.constants import PROTOCOL_UDP

async def main(server, source, internal, port, lifetime):
    loop = asyncio.get_running_loop()
    renewals = asyncio.Queue()
    def on_event(event):
        if isinstance(event, MappingReady) and event.renewed:
            renewals.put_nowait(event)
    client = await open_pcp_client(server, local_address=source, on_event=on_event)
    async with client:
        request = MappingRequest(PROTOCOL_UDP, port, lifetime,
                                 third_party=ipaddress.ip_address(internal))
        mapping_id, ready = await client.map(request, timeout=5)
        print("granted", ready.external, ready.lifetime, flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        renewed = await asyncio.wait_for(renewals.get(), lifetime + 3)
        print("renewed", renewed.external, renewed.lifetime, flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        await client.delete(mapping_id, timeout=5)
        print("deleted", flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
"""


def _skip_reason() -> str | None:
    missing = missing_for_world(tools=(("ip", "iproute2"), ("nft", "nftables"),
                                       ("miniupnpd", "miniupnpd and miniupnpd-nftables"),
                                       ("turnserver", "coturn")))
    if missing:
        return missing
    version = subprocess.run(["miniupnpd", "--version"], capture_output=True, text=True,
                             timeout=10, check=False)
    if "nftables" not in version.stdout + version.stderr:
        return ("this miniupnpd is not the nftables build (Debian package "
                "miniupnpd-nftables)")
    return None


@dataclass
class Miniupnpd:
    bed: NatBed
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def dnat_ports(self) -> list[str]:
        """The DNAT rules miniupnpd holds, as nft lists them."""
        listing = self.bed.run(self.bed.cgn, "nft", "list", "chain", "inet", "filter",
                               "prerouting_miniupnpd")
        return [line.strip() for line in listing.splitlines() if "dnat" in line]


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    """Stop one process we started, by its own Popen (never by name)."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _start(ns: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        # `ip netns exec` execs the program: the Popen's pid is the daemon's own.
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(what: str, done: Callable[[], bool], process: subprocess.Popen[bytes],
              log: Path, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if done():
            return
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{what} (exit {process.poll()}); its log:\n"
                         f"{log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def miniupnpd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Miniupnpd]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    tag = f"uecm-{os.getpid() % 100000}"
    workdir = tmp_path_factory.mktemp("miniupnpd")
    with NatBed(f"{tag}-lan", f"{tag}-gw", f"{tag}-out").built(
            inside=("lan0", (f"{GW_INSIDE}/24",)), outside=("wan0", (f"{EXTERNAL}/24",)),
            ue=(f"{UE}/24", f"{GATEWAY}/24"),
            peer=tuple(f"{a}/24" for a in (REMOTE, STUN_PRIMARY, STUN_OTHER)),
            ruleset=MINIUPNPD_NFT) as bed:
        coturn: subprocess.Popen[bytes] | None = None
        daemon: subprocess.Popen[bytes] | None = None
        try:
            # coturn on two addresses answers RFC 5780 CHANGE-REQUESTs from the other one.
            coturn_log = workdir / "turnserver.log"
            coturn = _start(bed.peer, [
                "turnserver", "-n", "--stun-only", "--listening-ip", STUN_PRIMARY,
                "--listening-ip", STUN_OTHER, "--listening-port", str(STUN_PORT), "--no-cli",
                "--no-tls", "--no-dtls", "--no-tcp", "--db", str(workdir / "turndb"),
                "--pidfile", str(workdir / "turnserver.pid"), "--log-file", "stdout",
                "--simple-log"], coturn_log)
            _wait_for("coturn did not listen on both STUN addresses",
                      lambda: all(f"{a}:{p}" in bed.run(bed.peer, "ss", "-Hlun", check=False)
                                  for a in (STUN_PRIMARY, STUN_OTHER)
                                  for p in (STUN_PORT, STUN_PORT + 1)),
                      coturn, coturn_log, 5.0)

            conf = workdir / "miniupnpd.conf"
            conf.write_text(MINIUPNPD_CONF.format(stun=STUN_PRIMARY, port=STUN_PORT))
            log = workdir / "miniupnpd.log"
            daemon = _start(bed.cgn, ["miniupnpd", "-d", "-f", str(conf), "-P",
                                      str(workdir / "miniupnpd.pid")], log)
            _wait_for("miniupnpd did not start serving PCP with port forwarding enabled",
                      lambda: all(line in log.read_text(errors="replace")
                                  for line in (READY_LINE, FORWARDING_LINE)),
                      daemon, log, START_TIMEOUT)
            yield Miniupnpd(bed, log)
        finally:
            _stop(daemon)
            _stop(coturn)


def test_map_with_third_party_works_renews_and_deletes(miniupnpd: Miniupnpd) -> None:
    bed = miniupnpd.bed
    driver = subprocess.Popen(
        ["ip", "netns", "exec", bed.ue, sys.executable, "-c", DRIVER, GW_INSIDE, GATEWAY, UE,
         "4000", "4"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert driver.stdin is not None and driver.stdout is not None

    def step() -> list[str]:
        assert driver.stdout is not None
        line = driver.stdout.readline().split()
        if not line:
            driver.wait(timeout=10)
            raise AssertionError(f"the client failed: {driver.stderr.read() if driver.stderr else ''}"
                                 f"\nminiupnpd's log:\n{miniupnpd.log_text()}")
        return line

    def go_on() -> None:
        assert driver.stdin is not None
        driver.stdin.write("next\n")
        driver.stdin.flush()

    try:
        # RFC 6887 section 11 MAP with section 13.1 THIRD_PARTY: the gateway asks for the UE.
        kind, external, lifetime = step()
        assert kind == "granted" and external.startswith(EXTERNAL + ":")
        assert int(lifetime) == 4
        ext_port = int(external.rsplit(":", 1)[1])
        assert any(f"dport {ext_port} dnat ip to {UE}:4000" in r for r in miniupnpd.dnat_ports())
        # The mapping works: a datagram from an outside host reaches the UE via the external
        # port (a MAP without FILTER admits anyone).
        assert bed.reaches(bed.peer, (REMOTE, 5000), (EXTERNAL, ext_port),
                           bed.ue, (UE, 4000)) == f"{REMOTE}:5000"
        go_on()

        # Section 11.2.1: the client renews on its own before the lifetime ends, and the
        # server keeps the same external endpoint.
        kind, renewed_external, renewed_lifetime = step()
        assert kind == "renewed" and renewed_external == external
        assert int(renewed_lifetime) == 4
        assert bed.reaches(bed.peer, (REMOTE, 5001), (EXTERNAL, ext_port),
                           bed.ue, (UE, 4000)) == f"{REMOTE}:5001"
        go_on()

        # Section 15: lifetime 0 deletes; the DNAT rule goes and a new flow is not admitted.
        assert step() == ["deleted"]
        assert driver.wait(timeout=10) == 0
        assert not any(f"dport {ext_port} " in r for r in miniupnpd.dnat_ports())
        assert bed.reaches(bed.peer, (REMOTE, 5002), (EXTERNAL, ext_port),
                           bed.ue, (UE, 4000)) is None
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=5)


@pytest.mark.parametrize("args", [("--peer", f"{REMOTE}:5100"),
                                  ("--filter", f"{REMOTE}/32:5100")],
                         ids=["PEER", "MAP+FILTER"])
def test_peer_and_filter_requests_are_granted_on_the_wire(miniupnpd: Miniupnpd,
                                                          args: tuple[str, str]) -> None:
    """Our client and miniupnpd agree on PEER (section 12) and FILTER (section 13.3) on the
    wire. What 2.3.1 then installs is wrong (docs/pcp.md), so traffic is not asserted."""
    port = "4100" if args[0] == "--peer" else "4101"
    done = miniupnpd.bed.cli(miniupnpd.bed.ue, "pcp", "request", "--server", GW_INSIDE,
                             "--source", GATEWAY, "--third-party", UE, "--internal-port", port,
                             "--lifetime", "60", "--timeout", "5", *args)
    assert done.returncode == 0, done.stderr + miniupnpd.log_text()
    assert f"internal={UE}:{port} external={EXTERNAL}:" in done.stdout
