"""`ueconnect demo` (the README's main command) runs on loopback and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_exits_zero_and_reports_each_step() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ims", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" ok ") == 3, result.stdout
    assert "FAIL" not in result.stdout


def test_demo_names_a_missing_zone_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = subprocess.run(
        [sys.executable, "-m", "ims", "demo", "--zones", str(missing)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert str(missing) in result.stderr and "--zones" in result.stderr
