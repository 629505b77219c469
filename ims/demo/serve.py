"""`ueconnect demo --serve`: keep the world running for any SIP client or `ueconnect ue`, with a
UE config file per demo subscriber.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

from ims.cli.signals import stop_signals
from ims.demo.embedded_run import EmbeddedRun
from ims.demo.scenarios import SCENARIOS
from ims.demo.testbed_run import TestbedOptions, TestbedRun, running_testbed
from ims.demo.world import OPERATORS, World
from ims.embedded import EmbeddedWorld
from ims.operator import Operator
from ims.sip.address import Address
from ue_ua.client import UeConfig
from ue_ua.config import ue_config_text


async def serve(out: Path, testbed: TestbedOptions | None = None) -> int:
    """Run the embedded world (or, with `testbed`, the testbed world) until SIGINT or SIGTERM,
    saying how to reach it; the testbed is taken down on the way out."""
    with stop_signals() as stop:  # before anything is said: no race
        if testbed is None:
            async with EmbeddedWorld.start(out) as world:
                embedded = EmbeddedRun(world)
                await _serve_until(embedded, stop, _write_ue_configs(out, embedded))
        else:
            async with running_testbed(out, SCENARIOS["play"], testbed) as running:
                await _serve_testbed_until(running, stop, _write_ue_configs(out, running))
    print("ueconnect demo --serve: stopped" + (" (the testbed is down)" if testbed else ""),
          flush=True)
    return 0


def _write_ue_configs(out: Path, world: World) -> dict[str, Path]:
    """A UE TOML file per demo subscriber (ue_ua/config.py), `ueconnect ue --config FILE`."""
    paths: dict[str, Path] = {}
    for sub in world.subscribers:
        if isinstance(world, TestbedRun):
            # The CLI's UE: the testbed's UE config with the default setup time.
            config: UeConfig = world.world.ue_config(sub.name)
        else:
            config = world.ue_config(sub)
        path = out / f"{sub.name.lower()}.toml"
        path.write_text(ue_config_text(config, comment=(
            f"{sub.name} at {sub.operator} ({sub.e164}), written by `ueconnect demo --serve`.\n"
            f"Use: ueconnect ue --config {path} register|listen|connect (docs/ue-guide.md)")),
            encoding="utf-8")  # fmt: skip
        paths[sub.name] = path
    return paths


def _ue_command() -> str:
    """How to run the CLI here: the console script when installed, else from the checkout."""
    return "ueconnect" if shutil.which("ueconnect") else "python3 -m ims"


def _credentials(world: World, operators: dict[str, Operator],
                 pcscf: Callable[[str], Address], ue_configs: dict[str, Path]) -> list[str]:
    lines = []
    for name, op in operators.items():
        where = pcscf(name)
        lines.append(
            f"  {name} ({op.config.operator.plmn}): P-CSCF {where.host}:{where.port} "
            f"(UDP, TCP), realm {op.config.realm}"
        )
    lines.append("  subscribers (digest username = impi):")
    for sub in world.subscribers:
        lines.append(
            f"    {sub.name} at {sub.operator}: impi {sub.impi} password {sub.password} "
            f"public identities {sub.sip_uri} {sub.tel_uri}"
        )
    lines.append("  UE config files (`ueconnect ue --config FILE register|listen|connect`):")
    lines += [f"    {name}: {path}" for name, path in ue_configs.items()]
    return lines


async def _serve_until(running: EmbeddedRun, stop: asyncio.Event,
                       ue_configs: dict[str, Path]) -> None:
    """Say how to reach the running world, then wait for the stop signal."""
    world = running.world
    lines = [f"ueconnect demo --serve: the embedded world runs (workdir {world.workdir})",
             f"  DNS server: 127.0.0.1:{world.dns.port} (UDP and TCP)"]  # fmt: skip
    lines += _credentials(running, world.operators, world.pcscf, ue_configs)
    cli = _ue_command()
    lines += ["  try, each in a terminal of its own (Dave answers and echoes, Bill connects):",
              f"    {cli} ue --config {ue_configs['Dave']} listen --allow-all --echo",
              f"    {cli} ue --config {ue_configs['Bill']} connect +15550100002 --mno 001-02 "
              "--count 20"]  # fmt: skip
    lines.append("Ctrl-C (or SIGTERM) stops it.")
    print("\n".join(lines), flush=True)
    await stop.wait()


async def _serve_testbed_until(running: TestbedRun, stop: asyncio.Event,
                               ue_configs: dict[str, Path]) -> None:
    """Say how to reach the running testbed world (from its UE namespaces), then wait."""
    w = running.world
    lines = [f"ueconnect demo --serve --testbed: the testbed world runs (workdir {w.workdir})",
             f"  {running.describe()}",
             f"  DNS server: {w.dns_server[0]}:{w.dns_server[1]}, STUN server "
             f"{w.stun_server[0]}:{w.stun_server[1]}"]  # fmt: skip
    lines += _credentials(running, w.operators, w.pcscf, ue_configs)
    cli = _ue_command()
    ns = {op: w.namespace(f"{op.lower()}-ue") for op in OPERATORS}
    lines += ["  each UE runs in its operator's UE namespace, behind its CGN "
              f"({', '.join(f'{op}: {name}' for op, name in ns.items())}); as root, from here:",
              f"    ip netns exec {ns['Beta']} {cli} ue --config {ue_configs['Dave']} listen "
              "--allow-all --echo",
              f"    ip netns exec {ns['Alpha']} {cli} ue --config {ue_configs['Bill']} connect "
              "+15550100002 --mno 001-02 --count 20"]  # fmt: skip
    lines.append("Ctrl-C (or SIGTERM) stops it and takes the testbed down.")
    print("\n".join(lines), flush=True)
    await stop.wait()
