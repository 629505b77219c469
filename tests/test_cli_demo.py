"""`ueconnect demo` (the README's main command) runs on loopback and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_exits_zero_and_reports_each_step(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "ims", "demo", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" ok ") == 6, result.stdout
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
    assert again.stdout.count(" ok ") == 6


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
