"""`ueconnect mno --config FILE --check` (ims/cli/mno.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ims.cli import mno

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ueconnect")
    mno.register(parser.add_subparsers())
    args = parser.parse_args(["mno", *argv])
    return int(args.func(args))


@pytest.mark.parametrize("name", ["alpha", "beta"])
def test_check_accepts_the_examples(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = EXAMPLES / f"{name}.toml"
    assert run("--config", str(path), "--check") == 0
    assert capsys.readouterr().out == f"{path}: OK (roles: pcscf, scscf, border)\n"


def test_check_prints_every_problem_and_fails(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[operator]\nname = "A"\nplmn = "1-01"\nmnc_digits = 2\n'
                    '[pcscf]\nlisten = ["udp:127.0.1.1:0"]\nkeepalive = 1\n', encoding="utf-8")
    assert run("--config", str(path), "--check") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0].startswith(f"{path}: operator.plmn (line 3): \"1-01\" is not a PLMN")
    assert lines[1].startswith(f"{path}: pcscf.listen[0] (line 6)")
    assert lines[2].startswith(f"{path}: pcscf.keepalive (line 7): 1 is out of range")
    assert lines[3] == f"{path}: 3 problems"


def test_missing_file_fails_with_one_line(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--config", str(tmp_path / "none.toml"), "--check") == 1
    assert "no such file" in capsys.readouterr().err


def test_running_a_broken_config_names_every_problem_and_does_not_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[operator]\nname = "Alpha"\nplmn = "001-01"\nmnc_digits = 2\nbogus = 1\n')
    assert run("--config", str(bad)) == 1
    assert "bogus" in capsys.readouterr().err
