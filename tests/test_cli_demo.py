"""`ueconnect demo` (the README's main command) runs on loopback and exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ims.cli import demo
from ims.demo.terminal import keys
from ims.demo.walk import run_scenario
from ims.embedded import DemoSubscriber, EmbeddedWorld
from ims.permission.outcomes import Decision

ROOT = Path(__file__).resolve().parents[1]

GAME_LINE = re.compile(
    r"Bill -> Dave (\d+) sent / (\d+) received, Dave -> Bill (\d+) sent / (\d+) received"
)


def test_demo_exits_zero_and_reports_each_step(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "ims", "demo", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" ok ") == 8, result.stdout
    assert "forwards tel:+15550100002 at MNO 001-02" in result.stdout
    # The game: Bill's UE hosts pong, headless and faster than real time, and says so.
    assert "play pong over the connection" in result.stdout
    assert "200 ticks at 30 ticks/s, run 10x faster than real time (headless)" in result.stdout
    counts = GAME_LINE.search(result.stdout)
    assert counts is not None, result.stdout
    assert all(int(n) >= 100 for n in counts.groups())
    assert re.search(r"RTT per datagram \(\d+ samples.*p50 [\d.]+ ms, p95 [\d.]+ ms",
                     result.stdout)  # fmt: skip
    assert re.search(r"Bill \d+ : \d+ Dave after 200 ticks", result.stdout)
    assert "every PCP mapping and relay released" in result.stdout
    # The UE API carried it: connect() gave the Connection over the relay path (transport
    # policy "relay" on loopback), the game ran over it, close() sent the BYE.
    assert "the ICE checks chose the relay path" in result.stdout
    assert "connect() gave the Connection in" in result.stdout
    assert "Connection.close() sent BYE" in result.stdout
    assert "FAIL" not in result.stdout
    # Each step prints the time since the start and its own duration.
    assert len(re.findall(r"\[ *[\d.]+ ms\] ok   .* \([\d.]+ ms\)", result.stdout)) == 8
    # Both operators' roles on the ladder, and the HTML copy of it.
    for column in ("Alpha P-CSCF", "Alpha Border", "Beta Border", "Beta P-CSCF"):
        assert column in result.stdout
    assert (out / "ladder.html").read_text().startswith("<!DOCTYPE html>")
    # A second run in the same directory starts afresh (no stale bindings or trace).
    again = subprocess.run(
        [sys.executable, "-m", "ims", "demo", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count(" ok ") == 8


def test_demo_says_what_is_in_the_way_when_the_plan_addresses_are_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.1.1", 5100))  # Alpha's P-CSCF in the loopback plan
        result = subprocess.run(
            [sys.executable, "-m", "ims", "demo", "--out", str(tmp_path / "out")],
            cwd=ROOT, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    assert result.returncode == 1
    assert "127.0.1.1" in result.stderr and "ueconnect mno" in result.stderr


def test_demo_with_the_default_relative_out_directory(tmp_path: Path) -> None:
    # `make demo` runs `ueconnect demo` from the checkout with the default ./ueconnect-demo.
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "ims", "demo"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "ueconnect-demo" / "trace.jsonl").exists()


# -- the options of issue 7 item 4 ------------------------------------------------------------

NOTHING_LEAKED = {"mappings": 0, "relays": 0, "sessions": 0, "registrations": 0}
KEYS = {"scenario", "ok", "steps", "permission", "path", "connected", "setup_ms", "datagrams",
        "rtt_ms", "leaked"}  # fmt: skip


def _json_demo(tmp_path: Path, scenario: str) -> tuple[int, dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "ims", "demo", "--out", str(tmp_path / "out"),
         "--scenario", scenario, "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    # --json: the one object is all there is on stdout.
    document = json.loads(result.stdout)
    assert isinstance(document, dict), result.stdout
    return result.returncode, document


def test_demo_json_play_receives_100_datagrams_each_way_through_the_relay(tmp_path: Path) -> None:
    code, doc = _json_demo(tmp_path, "play")
    assert code == 0, doc
    assert set(doc) == KEYS  # no "refusal" when nothing was refused
    assert doc["scenario"] == "play" and doc["ok"] is True
    assert doc["steps"] and all(step["ok"] for step in doc["steps"])
    assert all(set(step) == {"name", "ok", "ms"} for step in doc["steps"])
    assert any("unregister" in step["name"] for step in doc["steps"])
    assert doc["permission"] == "granted"
    assert doc["path"] == "relay" and doc["connected"] is True
    assert doc["setup_ms"] > 0
    # Issue 7 acceptance: >= 100 game datagrams received each way.
    assert set(doc["datagrams"]) == {"bill_to_dave", "dave_to_bill"}
    for direction in doc["datagrams"].values():
        assert direction["sent"] >= 100 and direction["received"] >= 100
    assert 0 < doc["rtt_ms"]["p50"] <= doc["rtt_ms"]["p95"]
    assert doc["leaked"] == NOTHING_LEAKED


def test_demo_json_deny_is_a_603_cause_2_refusal_that_leaves_nothing_open(
    tmp_path: Path,
) -> None:
    # docs/extension.md section 7: denied by the callee's UE -> 603, Reason cause 2.
    code, doc = _json_demo(tmp_path, "deny")
    assert code == 0, doc
    assert set(doc) == KEYS | {"refusal"}
    assert doc["ok"] is True and all(step["ok"] for step in doc["steps"])
    assert doc["permission"] == "denied"
    # The UE API's typed refusal: Bill's connect() raised DeniedByCallee.
    assert doc["refusal"] == {"status": 603, "reason": "Decline (denied by the callee)",
                              "cause": 2, "error": "DeniedByCallee"}
    assert doc["path"] is None and doc["connected"] is False and doc["setup_ms"] is None
    assert doc["datagrams"]["bill_to_dave"]["received"] == 0
    assert doc["leaked"] == NOTHING_LEAKED


def test_demo_json_same_mno_names_the_directions_after_bill_and_carol(tmp_path: Path) -> None:
    code, doc = _json_demo(tmp_path, "same-mno")
    assert code == 0, doc
    assert doc["ok"] is True and doc["permission"] == "granted"
    assert set(doc["datagrams"]) == {"bill_to_carol", "carol_to_bill"}
    assert doc["datagrams"]["carol_to_bill"]["received"] >= 100
    assert doc["leaked"] == NOTHING_LEAKED


def test_demo_relay_scenario_says_the_relay_is_the_path(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ims", "demo", "--out", str(tmp_path / "out"),
         "--scenario", "relay"],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the relay IS the path" in result.stdout
    counts = GAME_LINE.search(result.stdout)
    assert counts is not None and all(int(n) >= 100 for n in counts.groups()), result.stdout


def test_demo_unassisted_without_testbed_exits_2_saying_why(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ims", "demo", "--out", str(tmp_path / "out"),
         "--scenario", "unassisted"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "the unassisted scenario needs --testbed (root)" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing was started


def _args(*argv: str) -> Any:
    import argparse

    parser = argparse.ArgumentParser()
    demo.register(parser.add_subparsers())
    return parser.parse_args(["demo", *argv])


def test_demo_testbed_without_root_exits_2_naming_the_need_for_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    problem = demo._cannot_run(_args("--testbed", "--out", str(tmp_path / "out")))
    assert problem == demo.TESTBED_NEEDS_ROOT and "--testbed needs root" in problem
    assert demo._demo(_args("--testbed", "--json", "--out", str(tmp_path / "out"))) == 2
    assert not (tmp_path / "out").exists()  # nothing was started


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--nat", "eim"], "--nat, --prefix and --state-dir go with --testbed only"),
     (["--prefix", "uec-x-"], "go with --testbed only"),
     (["--testbed", "--play"], "--play runs on the embedded default only"),
     (["--scenario", "unassisted"], "the unassisted scenario needs --testbed (root)")],
)  # fmt: skip
def test_demo_options_that_cannot_run_here_say_why(
    argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # past the root check, to the next one
    problem = demo._cannot_run(_args(*argv))
    assert problem is not None and message in problem, problem


def test_demo_serve_prints_the_credentials_and_stops_on_sigint(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "ims", "demo", "--out", str(tmp_path / "out"), "--serve"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "stops it" in line:
                break
        text = "".join(seen)
        assert "P-CSCF 127.0.1.1:5100" in text and "P-CSCF 127.0.2.1:5200" in text, text
        assert "DNS server: 127.0.0.1:" in text
        assert "impi bill@ims.mnc001.mcc001.3gppnetwork.org password bill-demo" in text
        assert "sip:+15550100002@ims.mnc002.mcc001.3gppnetwork.org tel:+15550100002" in text
        # A UE config per subscriber, ready for `ueconnect ue --config ...`.
        bill = tmp_path / "out" / "bill.toml"
        assert f"Bill: {bill}" in text and f"ue --config {bill} connect +15550100002" in text
        assert f"ue --config {tmp_path / 'out' / 'dave.toml'} listen --allow-all --echo" in text
        from ue_ua.config import load_ue_config

        config, _ = load_ue_config(bill)
        assert config.pcscf == ("127.0.1.1", 5100) and config.password == "bill-demo"
        process.send_signal(signal.SIGINT)
        rest, errors = process.communicate(timeout=10)
        assert process.returncode == 0, errors
        assert "stopped" in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)


# -- a failure names the step, the operator element and the SIP response (issue 7 item 5) ------


def _run_in_process(tmp_path: Path, scenario: demo.Scenario) -> int:
    return asyncio.run(run_scenario(tmp_path / "out", scenario, as_json=False))


def test_a_refused_connect_names_the_step_the_element_and_the_response(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Dave's app denies while the scenario expects a game: the connect step must fail.
    broken = demo.Scenario("play", "Bill", "Dave", Decision.DENY, "Dave denies, play expected")
    assert _run_in_process(tmp_path, broken) == 1
    out, err = capsys.readouterr()
    fail = re.search(r"\[ *[\d.]+ ms\] FAIL (.*) \([\d.]+ ms\)\n +(.*)", out)
    assert fail is not None, out
    step, why = fail.groups()
    assert step == "Bill asks Alpha to connect them to Dave; Beta asks Dave for consent"
    # docs/extension.md section 7: the permission function (in Beta's S-CSCF) refuses, 603.
    assert why.startswith("Beta S-CSCF answered 603 Decline (denied by the callee)"), why
    assert "cause=2" in why
    assert "the UE API raised DeniedByCallee" in why
    assert "skip Bill and Dave play pong" in out and "skip Bill ends the session" in out
    assert f'step "{step}" failed: Beta S-CSCF answered 603' in err


def test_a_failed_registration_names_the_registrar_and_its_response(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    provisioned = EmbeddedWorld.subscriber

    def wrong_password(world: EmbeddedWorld, name: str) -> DemoSubscriber:
        sub = provisioned(world, name)
        return replace(sub, password="not-" + sub.password) if name == "Dave" else sub

    monkeypatch.setattr(EmbeddedWorld, "subscriber", wrong_password)
    assert _run_in_process(tmp_path, demo.SCENARIOS["play"]) == 1
    out, err = capsys.readouterr()
    assert "ok   Bill registers at Alpha (digest)" in out
    fail = re.search(r"FAIL Dave registers at Beta \(digest\) \([\d.]+ ms\)\n +(.*)", out)
    assert fail is not None, out
    assert re.match(r"Beta S-CSCF answered the REGISTER with 403 ", fail.group(1)), fail.group(1)
    assert 'step "Dave registers at Beta (digest)" failed' in err


# -- --play ---------------------------------------------------------------------------------


def test_play_without_a_terminal_exits_2_saying_why(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ims", "demo", "--out", str(tmp_path / "out"), "--play"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--play needs a terminal, and stdout is not a TTY" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing was started


@pytest.mark.parametrize(
    ("options", "message"),
    [(["--json"], "--play and --json do not go together"),
     (["--serve"], "--play and --serve do not go together"),
     (["--scenario", "deny"], "in deny nothing is played")],
)  # fmt: skip
def test_play_refuses_options_it_cannot_honour(
    tmp_path: Path, options: list[str], message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ims", "demo", "--out", str(tmp_path / "out"), "--play",
         *options],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2 and message in result.stderr


def test_play_keys_are_w_s_the_arrows_and_q() -> None:
    assert keys(b"w\x1b[As\x1b[B\x1bOA\x1bOB q") == [
        "up", "up", "down", "down", "up", "down", "stop", "quit"]
    assert keys(b"xyz\x1b[C") == []  # other keys and arrows do nothing


def test_play_in_a_terminal_draws_the_game_and_quits_on_q(tmp_path: Path) -> None:
    import pty

    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "ims", "demo", "--out", str(tmp_path / "out"), "--play"],
        cwd=ROOT, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
    )  # fmt: skip
    os.close(slave)
    seen = b""

    def read_until(done: bytes, seconds: float) -> None:
        nonlocal seen
        deadline = time.monotonic() + seconds
        while done not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    return
                if not chunk:
                    return
                seen += chunk

    try:
        read_until(b"(right): a bot", 60)  # the legend under the playfield
        assert b"(right): a bot" in seen, seen.decode(errors="replace")
        os.write(master, b"w\x1b[A")  # Bill's paddle up, once by letter, once by arrow
        time.sleep(0.3)
        os.write(master, b"q")
        read_until(b"demo: done", 60)
        assert process.wait(timeout=30) == 0, seen.decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        os.close(master)
    text = seen.decode(errors="replace")
    assert "\x1b[?25l" in text and "\x1b[?25h" in text  # the cursor is given back
    assert "+" + "-" * 20 in text and " 0 : 0 " in text  # a frame of render(): border, score
    assert "30 ticks/s in real time" in text
    assert "stopped before the end" in text
    assert "ok   Bill ends the session (BYE)" in text
