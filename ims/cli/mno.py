"""`ueconnect mno`: check (and later run) one operator from its TOML file."""

from __future__ import annotations

import argparse
import sys

from ims.config import ConfigError, OperatorConfig, load_config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "mno", help="run one operator (MNO) from its TOML file, or check the file",
        description="Run the roles an operator's configuration enables (docs/configuration.md),"
                    " or only validate the file with --check.",
    )
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="the operator's TOML file, e.g. docs/examples/alpha.toml")
    parser.add_argument("--check", action="store_true",
                        help="validate the file, print every problem, exit 0 when it is usable")
    parser.set_defaults(func=_mno)


def _mno(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        count = len(exc.problems)
        print(f"{args.config}: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    if args.check:
        print(f"{args.config}: OK (roles: {', '.join(config.roles)})")
        return 0
    return run_operator(config)


def run_operator(config: OperatorConfig) -> int:
    """Run `config.roles` until stopped; the exit status. Not written yet (the lead's)."""
    print("ueconnect mno: running roles is not available yet; use --check to validate "
          f"{config.source}", file=sys.stderr)
    return 1
