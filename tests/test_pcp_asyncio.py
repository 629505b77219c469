"""The asyncio drivers on loopback: client and server over real UDP, the recording data plane,
and the `ueconnect pcp` commands (in-process, one server subprocess with --dry-run)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ims.pcp.aioclient import open_pcp_client
from ims.pcp.aioserver import start_pcp_server
from ims.pcp.client import MappingReady, MappingRequest, PcpClientEvent
from ims.pcp.codec import Endpoint
from ims.pcp.errors import (
    PcpTimeout,
    RefusedNotAuthorized,
    RefusedUnsupportedOption,
)
from ims.pcp.nft import RecordingTable
from ims.pcp.server import PcpServerConfig

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = ipaddress.ip_address("127.0.0.1")
PEER = Endpoint(ipaddress.ip_address("198.51.100.2"), 5000)


def config(**overrides: object) -> PcpServerConfig:
    settings: dict[str, object] = {"external_address": ipaddress.ip_address("198.51.100.1"),
                                   "control_addresses": frozenset({LOOPBACK})}
    settings.update(overrides)
    return PcpServerConfig(**settings)  # type: ignore[arg-type]


def test_map_renew_delete_over_loopback() -> None:
    async def run() -> None:
        plane = RecordingTable()
        async with await start_pcp_server(config(min_lifetime=1), "127.0.0.1", plane,
                                          port=0) as server:
            events: list[PcpClientEvent] = []
            client = await open_pcp_client("127.0.0.1", port=server.port,
                                           on_event=events.append)
            async with client:
                request = MappingRequest(17, 4000, 1, remote_peer=PEER,
                                         third_party=ipaddress.ip_address("100.64.0.2"))
                mapping_id, ready = await client.map(request, timeout=3)
                assert ready.lifetime == 1 and plane.installed_ids() == {"m1"}
                assert plane.rules["m1"][0][0] == "prerouting"
                # The driver renews at half the lifetime: a second MappingReady, renewed.
                for _ in range(40):
                    if any(isinstance(e, MappingReady) and e.renewed for e in events):
                        break
                    await asyncio.sleep(0.05)
                assert any(isinstance(e, MappingReady) and e.renewed for e in events)
                await client.delete(mapping_id, timeout=3)
                assert plane.installed_ids() == frozenset()
        assert plane.installed_ids() == frozenset()

    asyncio.run(run())


def test_refusals_raise_typed_errors_and_silence_times_out() -> None:
    async def run() -> None:
        plane = RecordingTable()
        third = MappingRequest(17, 4000, 60, remote_peer=PEER,
                               third_party=ipaddress.ip_address("100.64.0.2"))
        async with (await start_pcp_server(config(control_addresses=frozenset()), "127.0.0.1",
                                           plane, port=0) as server,
                    await open_pcp_client("127.0.0.1", port=server.port) as client):
            with pytest.raises(RefusedUnsupportedOption):
                await client.map(third, timeout=3)
        other = frozenset({ipaddress.ip_address("127.0.0.9")})
        async with (await start_pcp_server(config(control_addresses=other), "127.0.0.1",
                                           plane, port=0) as server,
                    await open_pcp_client("127.0.0.1", port=server.port) as client):
            with pytest.raises(RefusedNotAuthorized):
                await client.map(third, timeout=3)
        # Nothing listens on this port: the request times out with a clear message.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            silent_port = probe.getsockname()[1]
            async with await open_pcp_client("127.0.0.1", port=silent_port) as client:
                with pytest.raises(PcpTimeout, match=r"within 0\.3 s"):
                    await client.map(MappingRequest(17, 4000, 60), timeout=0.3)

    asyncio.run(run())


CLI = ("import argparse, sys; from ims.cli import pcp; p = argparse.ArgumentParser(); "
       "pcp.register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")


def test_cli_serve_dry_run_and_request() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-c", CLI, "pcp", "serve", "--listen", "127.0.0.1", "--port", port,
         "--external", "198.51.100.1", "--control", "127.0.0.1", "--dry-run"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert server.stdout is not None
        assert "PCP server on 127.0.0.1" in server.stdout.readline()
        base = [sys.executable, "-c", CLI, "pcp", "request", "--server", "127.0.0.1",
                "--port", port, "--third-party", "100.64.0.2", "--internal-port", "4000",
                "--peer", "198.51.100.2:5000", "--timeout", "3"]
        done = subprocess.run(base, capture_output=True, text=True, env=env, cwd=ROOT,
                              timeout=20, check=False)
        assert done.returncode == 0, done.stderr
        assert "granted PEER udp internal=100.64.0.2:4000 external=198.51.100.1:" in done.stdout
        assert "add prerouting: ip saddr 198.51.100.2/32 udp sport 5000" in \
            server.stdout.readline()
        nonce = done.stdout.rsplit("nonce=", 1)[1].strip()
        deleted = subprocess.run([*base, "--lifetime", "0", "--nonce", nonce],
                                 capture_output=True, text=True, env=env, cwd=ROOT, timeout=20,
                                 check=False)
        assert deleted.returncode == 0 and "deleted PEER" in deleted.stdout
        bad = subprocess.run([*base, "--lifetime", "0"], capture_output=True, text=True,
                             env=env, cwd=ROOT, timeout=20, check=False)
        assert bad.returncode == 2 and "needs the mapping's --nonce" in bad.stderr  # usage
    finally:
        server.terminate()
        server.wait(timeout=10)
