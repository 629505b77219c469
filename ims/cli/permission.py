"""`ueconnect permission ...`: a subscriber's standing rules and the decision audit.

    ueconnect permission rules --config FILE SUBSCRIBER
    ueconnect permission decisions --config FILE SUBSCRIBER [--limit N]

SUBSCRIBER is the private identity or any public identity (docs/extension.md section 11: the
records are the operator's, shown to the subscriber on request; a caller that asked for
privacy is shown as "anonymous").
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from ims.cli.report import bounded_int, help_page, print_config_error
from ims.config import ConfigError, load_config
from ims.permission.errors import PermissionProtocolError
from ims.permission.rules import parse_rule_set
from ims.store import InvalidIdentity, Store, StoreError, Subscriber, open_store

__all__ = ["register"]

MAX_LIMIT = 10_000


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "permission", help="show a subscriber's permission rules and decisions",
        **help_page(
            "Show what the permission function (docs/extension.md section 5) holds for one "
            "subscriber, read from the operator's store: the standing rule set its UE "
            "published, and the audit of decisions on calls to it. SUBSCRIBER is the private "
            "identity or any public one.",
            ["ueconnect permission rules --config beta.toml tel:+15550100002",
             "ueconnect permission decisions --config beta.toml "
             "dave@ims.mnc002.mcc001.3gppnetwork.org --limit 5"]))

    def usage(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=usage)
    commands = parser.add_subparsers(dest="permission_command", metavar="ACTION")
    rules = commands.add_parser(
        "rules", help="the rule set the subscriber's UE published",
        **help_page("The subscriber's standing rules (id, action, peer, peer MNO, "
                    "application, expiry) as its UE last published them, with the SIP-ETag "
                    "and until when the operator keeps them.",
                    ["ueconnect permission rules --config beta.toml tel:+15550100002"]))
    _common(rules)
    rules.set_defaults(func=_rules)
    decisions = commands.add_parser(
        "decisions", help="the latest permission decisions for calls to the subscriber, "
        "newest first",
        **help_page("The latest permission decisions for calls to the subscriber, newest "
                    "first: when, the caller (\"anonymous\" when it asked for privacy), its "
                    "MNO, the application, the outcome, how it was decided (rule or inquiry).",
                    ["ueconnect permission decisions --config beta.toml tel:+15550100002 "
                     "--limit 5"]))
    _common(decisions)
    decisions.add_argument("--limit", type=bounded_int(1, MAX_LIMIT), default=20, metavar="N",
                           help=f"how many to show, 1 to {MAX_LIMIT} (default 20)")
    decisions.set_defaults(func=_decisions)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="the operator's TOML file; its [store] holds rules and decisions")
    parser.add_argument("subscriber", metavar="SUBSCRIBER",
                        help="private identity or a public one (tel:+E164, sip:user@domain)")


def _open(action: str, args: argparse.Namespace) -> tuple[Store, Subscriber] | int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print_config_error(exc, sys.stderr)
        return 1
    unknown = (f"ueconnect permission {action}: no subscriber {args.subscriber} in "
               f"{config.store.path}; `ueconnect subscriber list` shows who there is")
    if not config.store.path.exists():  # reading: do not create a store only to find it empty
        print(f"{unknown} (no store there yet)", file=sys.stderr)
        return 1
    try:
        store = open_store(config.store)
    except StoreError as exc:
        print(f"ueconnect permission {action}: {exc}", file=sys.stderr)
        return 1
    try:
        subscriber = store.subscribers.get(args.subscriber)
    except (InvalidIdentity, StoreError) as exc:
        store.close()
        print(f"ueconnect permission {action}: {exc}", file=sys.stderr)
        return 1
    if subscriber is None:
        store.close()
        print(unknown, file=sys.stderr)
        return 1
    return store, subscriber


def _rules(args: argparse.Namespace) -> int:
    opened = _open("rules", args)
    if isinstance(opened, int):
        return opened
    store, subscriber = opened
    now = time.time()
    with store:
        stored = store.rules.get(subscriber.impi, now)
    if stored is None:
        print(f"{subscriber.impi}: no rule set (every call is decided by inquiry)")
        return 0
    try:
        rule_set = parse_rule_set(stored.body)
    except PermissionProtocolError as exc:
        print(f"ueconnect permission rules: the stored set of {subscriber.impi} is unusable: "
              f"{exc}", file=sys.stderr)
        return 1
    print(f"{subscriber.impi}: {len(rule_set.rules)} rule{'' if len(rule_set.rules) == 1 else 's'}"
          f", SIP-ETag {stored.etag}, kept until {_when(stored.expires_at)}")
    rows = [[r.id, str(r.action), r.peer, r.peer_mno, r.application,
             (r.expires or "-") + (" (expired)" if r.expired(now) else "")]
            for r in rule_set.rules]
    _table(["ID", "ACTION", "PEER", "PEER MNO", "APPLICATION", "EXPIRES"], rows)
    return 0


def _decisions(args: argparse.Namespace) -> int:
    opened = _open("decisions", args)
    if isinstance(opened, int):
        return opened
    store, subscriber = opened
    with store:
        records = store.decisions.list(subscriber.impi, args.limit)
    if not records:
        print(f"{subscriber.impi}: no decisions recorded")
        return 0
    rows = [[_when(r.at), r.shown_caller, r.caller_mno, r.application, str(r.outcome),
             str(r.how), r.detail or "-", r.inquiry or "-"] for r in records]
    _table(["TIME (UTC)", "CALLER", "CALLER MNO", "APPLICATION", "OUTCOME", "HOW", "DETAIL",
            "INQUIRY"], rows)
    return 0


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[n]) for row in [header, *rows]) for n in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())
