"""`ueconnect mno`: run one operator (MNO) from its TOML file, or check the file."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from ims.config import ConfigError, OperatorConfig, Role, load_config
from ims.sip.errors import SipError
from ims.store import StoreError

_ROLES = [role.value for role in Role]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "mno", help="run one operator (MNO) from its TOML file, or check the file",
        description="Run the roles an operator's configuration enables (docs/configuration.md)"
                    " in the foreground until SIGINT/SIGTERM, or only validate the file with "
                    "--check.",
    )
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="the operator's TOML file, e.g. docs/examples/alpha.toml")
    parser.add_argument("--check", action="store_true",
                        help="validate the file, print every problem, exit 0 when it is usable")
    parser.add_argument("--role", action="append", choices=_ROLES, metavar="NAME",
                        help=f"run only this role ({', '.join(_ROLES)}); repeat for several; "
                             "default: every role the file configures")
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
    roles = [Role(name) for name in args.role] if args.role else None
    return run_operator(config, roles)


def run_operator(config: OperatorConfig, roles: Sequence[Role] | None = None) -> int:
    """Run `roles` (default: every configured role) in the foreground until SIGINT or
    SIGTERM; the exit status (1 when the operator cannot start)."""
    logging.basicConfig(format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    root = logging.getLogger()
    # [log] level, unless the command line (-v) asked for more.
    root.setLevel(min(root.level, logging.getLevelNamesMapping()[config.log.level]))
    try:
        return asyncio.run(_serve(config, roles))
    except KeyboardInterrupt:
        return 0


async def _serve(config: OperatorConfig, roles: Sequence[Role] | None) -> int:
    from ims.operator import Operator, OperatorError

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with Operator.start(config, roles=roles):
            await stop.wait()
            logging.getLogger("ims.operator").info(
                "operator %s stopping", config.operator.name
            )
    except (OperatorError, StoreError, SipError, OSError) as exc:
        print(f"ueconnect mno: {config.source}: cannot run: {exc}", file=sys.stderr)
        return 1
    return 0
