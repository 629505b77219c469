"""`ueconnect demo`: the whole flow on the embedded default."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("demo", help="run the end-to-end demo on loopback")
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    print("ueconnect demo: not yet available in this build", file=sys.stderr)
    return 1
