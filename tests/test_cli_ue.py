"""`ueconnect ue` (ims/cli/ue.py) against the embedded world, in one process on loopback:
register, listen (in a task) and connect through the CLI's parser and runner; a refusal's
exit code and message; --check; usage errors."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from ims.cli import build_parser, main, ue
from ims.embedded import EmbeddedWorld
from ue_ua.client import UeConfig
from ue_ua.config import ue_config_text

DAVE_MNO = "001-02"


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["ue", *argv])


def _configs(world: EmbeddedWorld, out: Path) -> dict[str, Path]:
    paths = {}
    for sub in world.subscribers:
        pcscf = world.pcscf(sub.operator)
        config = UeConfig(name=sub.name, impu=sub.sip_uri, impi=sub.impi, password=sub.password,
                          home_domain=sub.domain, pcscf=(pcscf.host, pcscf.port),
                          transport_policy="relay")  # fmt: skip
        paths[sub.name] = out / f"{sub.name.lower()}.toml"
        paths[sub.name].write_text(ue_config_text(config), encoding="utf-8")
    return paths


def _bindings(world: EmbeddedWorld) -> int:
    now = time.time()
    return sum(len(world.stores[sub.operator].bindings.list_for_aor(sub.sip_uri, now))
               for sub in world.subscribers)


async def _until(buffer: io.StringIO, text: str, task: asyncio.Task[int]) -> None:
    for _ in range(200):
        if text in buffer.getvalue():
            return
        if task.done():
            raise AssertionError(f"listen ended early ({task.result()}): {buffer.getvalue()}")
        await asyncio.sleep(0.025)
    raise AssertionError(f"no {text!r} in {buffer.getvalue()!r}")


def _in_world(tmp_path: Path,
              body: Callable[[EmbeddedWorld, dict[str, Path]], Awaitable[None]]) -> None:
    async def main() -> None:
        async with EmbeddedWorld.start(tmp_path / "world", trace=False) as world:
            await body(world, _configs(world, tmp_path))
            assert _bindings(world) == 0, "a UE left its binding"  # each un-registered
    asyncio.run(main())


async def _listening(config: Path, *flags: str) -> tuple[asyncio.Task[int], asyncio.Event,
                                                         io.StringIO]:
    stop, out = asyncio.Event(), io.StringIO()
    task = asyncio.create_task(ue.run(_args("--config", str(config), "listen", *flags),
                                      stop=stop, out=out, err=out))  # fmt: skip
    await _until(out, "listening as", task)
    return task, stop, out


def test_listen_echo_and_connect_count_20(tmp_path: Path) -> None:
    async def body(world: EmbeddedWorld, configs: dict[str, Path]) -> None:
        listen, stop, heard = await _listening(configs["Dave"], "--allow", "+15550100001",
                                               "--echo")
        out, err = io.StringIO(), io.StringIO()
        code = await ue.run(_args("--config", str(configs["Bill"]), "connect", "+15550100002",
                                  "--mno", DAVE_MNO, "--count", "20", "--interval", "2",
                                  "--json"), out=out, err=err)  # fmt: skip
        assert code == ue.EXIT_OK, err.getvalue()
        doc = json.loads(out.getvalue())
        assert doc["ok"] is True and doc["refusal"] is None
        assert doc["datagrams"] == {"sent": 20, "received": 20}
        assert doc["path"]["kind"] == "relay"  # transport policy relay: the operators' relays
        assert doc["setup_ms"] > 0 and set(doc["timings"]) == {"gather_ms", "signalling_ms",
                                                               "checks_ms"}
        assert 0 < doc["rtt_ms"]["p50"] <= doc["rtt_ms"]["p95"]
        assert "connected to tel:+15550100002 at 001-02: relay path" in err.getvalue()
        await _until(heard, "20 echoed", listen)
        stop.set()
        assert await listen == ue.EXIT_OK
        text = heard.getvalue()
        assert "allow by rule 'cli-allow-1'" in text
        assert "connection from <sip:+15550100001@" in text and "relay path" in text
        assert "ended (the peer ended the session (BYE)): 20 datagrams received" in text
        assert "stopped: 1 connection(s)" in text

    _in_world(tmp_path, body)


def test_a_refusal_exits_1_with_status_cause_and_what_to_do(tmp_path: Path) -> None:
    async def body(world: EmbeddedWorld, configs: dict[str, Path]) -> None:
        listen, stop, heard = await _listening(configs["Dave"], "--once")  # allows nobody
        out, err = io.StringIO(), io.StringIO()
        code = await ue.run(_args("--config", str(configs["Bill"]), "connect", "+15550100002",
                                  "--mno", DAVE_MNO), out=out, err=err)  # fmt: skip
        assert code == ue.EXIT_FAILED
        message = err.getvalue()
        assert "refused: 603" in message and "cause 2 (DeniedByCallee" in message, message
        assert "what to do: the callee said no; ask them to allow you" in message
        assert "no rule allows sip:+15550100001@" in heard.getvalue()
        assert "deny by no rule matched" in heard.getvalue()
        # An unknown number: 404, cause 7, and --json carries the refusal.
        out = io.StringIO()
        code = await ue.run(_args("--config", str(configs["Bill"]), "connect", "+15550100099",
                                  "--mno", DAVE_MNO, "--json"), out=out, err=io.StringIO())
        assert code == ue.EXIT_FAILED
        refusal = json.loads(out.getvalue())["refusal"]
        assert refusal["status"] == 404 and refusal["cause"] == 7
        assert refusal["error"] == "UnknownNumber" and "check PEER" in refusal["what_to_do"]
        # A peer identifier that is none: usage (2), before anything is sent.
        code = await ue.run(_args("--config", str(configs["Bill"]), "connect", "not a peer",
                                  "--mno", DAVE_MNO), out=io.StringIO(), err=(err := io.StringIO()))
        assert code == ue.EXIT_USAGE and "neither a number, a URI nor user@domain" in err.getvalue()
        stop.set()
        assert await listen == ue.EXIT_OK

    _in_world(tmp_path, body)


def test_register_prints_the_binding_and_unregisters(tmp_path: Path) -> None:
    async def body(world: EmbeddedWorld, configs: dict[str, Path]) -> None:
        out = io.StringIO()
        code = await ue.run(_args("--config", str(configs["Bill"]), "register"), out=out)
        assert code == ue.EXIT_OK
        text = out.getvalue()
        assert "registered sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org" in text
        assert "expires 600 s, Service-Route <sip:" in text and "tel:+15550100001" in text
        assert "un-registered" in text
        # --stay: registered until stop is set.
        stop, out = asyncio.Event(), io.StringIO()
        task = asyncio.create_task(ue.run(
            _args("--config", str(configs["Carol"]), "register", "--stay"), stop=stop, out=out))
        await _until(out, "staying registered", task)
        assert _bindings(world) == 1
        stop.set()
        assert await task == ue.EXIT_OK
        # A wrong password: 1, the registrar's response named.
        wrong = configs["Bill"].read_text().replace('"bill-demo"', '"wrong"')
        configs["Bill"].write_text(wrong)
        err = io.StringIO()
        code = await ue.run(_args("--config", str(configs["Bill"]), "register"),
                            out=io.StringIO(), err=err)
        assert code == ue.EXIT_FAILED
        assert "registration failed: 403" in err.getvalue() or "401" in err.getvalue()

    _in_world(tmp_path, body)


def test_check_through_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "bill.toml"
    good.write_text(ue_config_text(UeConfig(
        name="Bill", impu="sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org",
        impi="bill@ims.mnc001.mcc001.3gppnetwork.org", password="x",
        home_domain="ims.mnc001.mcc001.3gppnetwork.org", pcscf=("127.0.1.1", 5100))))
    assert main(["ue", "--config", str(good), "--check"]) == 0
    assert f"{good}: OK (sip:+15550100001@" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace('"127.0.1.1:5100"', '"nowhere"'))
    assert main(["ue", "--config", str(bad), "--check"]) == 1
    err = capsys.readouterr().err
    assert f'{bad}: ue.pcscf (line 7): "nowhere" is not an address' in err
    assert f"{bad}: 1 problem" in err
    # Running with a bad file fails (1), as under `ueconnect mno`; no action is usage (2).
    assert main(["ue", "--config", str(bad), "register"]) == 1
    assert main(["ue", "--config", str(good)]) == 2
    assert "give an ACTION" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # argparse: a bad --count
        main(["ue", "--config", str(good), "connect", "+1", "--mno", "001-02", "--count", "-1"])
    assert exited.value.code == 2
