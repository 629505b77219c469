"""`ueconnect dns ...`: the embedded authoritative DNS server."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("dns", help="DNS interconnect tools")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
