"""`ueconnect demo` (the README's main command) runs on loopback and exits 0."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def test_demo_exits_zero_and_reports_each_step(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "ims", "demo", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" ok ") == 8, result.stdout
    assert "forwards tel:+15550100002 at MNO 001-02" in result.stdout
    assert "100 datagrams each way" in result.stdout and "every relay leg and socket released" in result.stdout
    assert "FAIL" not in result.stdout
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
    assert doc["refusal"] == {"status": 603, "reason": "Decline (denied by the callee)"}
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
    assert "100 datagrams each way" in result.stdout


def test_demo_unassisted_without_testbed_exits_2_saying_why(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ims", "demo", "--out", str(tmp_path / "out"),
         "--scenario", "unassisted"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "the unassisted scenario needs --testbed (root)" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing was started


def test_demo_testbed_is_not_available_yet_and_says_what_is_missing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ims", "demo", "--out", str(tmp_path / "out"), "--testbed"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--testbed` is not available yet" in result.stderr and "missing" in result.stderr


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
        process.send_signal(signal.SIGINT)
        rest, errors = process.communicate(timeout=10)
        assert process.returncode == 0, errors
        assert "stopped" in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
