"""`ueconnect demo`: the whole flow on the embedded default."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("demo", help="run the end-to-end demo on loopback")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
