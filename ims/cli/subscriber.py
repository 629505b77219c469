"""`ueconnect subscriber ...`: provision subscribers in an operator's store.

Only digest HA1 values reach the store (ims.store.new_subscriber); the password is read from
--password, --password-file or a prompt and is never printed.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from pathlib import Path

from ims.config import ConfigError, OperatorConfig, load_config
from ims.store import (
    InvalidIdentity,
    Store,
    StoreError,
    Subscriber,
    canonical_aor,
    new_subscriber,
    open_store,
    validate_impi,
)


class _Refused(Exception):
    """A problem with the command line; the message says what to change."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("subscriber", help="add, list and remove an operator's subscribers")

    def usage(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=usage)
    commands = parser.add_subparsers(dest="subscriber_command", metavar="ACTION")

    add = commands.add_parser(
        "add", help="add a subscriber (digest HA1 values are stored, never the password)")
    _config_option(add)
    add.add_argument("--impi", required=True,
                     help="private identity, e.g. bill@ims.mnc001.mcc001.3gppnetwork.org")
    add.add_argument("--impu", action="append", required=True, metavar="URI",
                     help="public identity, tel:+E164 or sip:user@domain (repeat for several; "
                          "the first is the default)")
    add.add_argument("--display-name", help="e.g. \"Bill\"")
    secret = add.add_mutually_exclusive_group()
    secret.add_argument("--password",
                        help="the password (visible to other local users in the process list: "
                             "prefer --password-file or the prompt)")
    secret.add_argument("--password-file", metavar="FILE",
                        help="read the password from the first line of FILE ('-' for stdin)")
    add.set_defaults(func=_add)

    listing = commands.add_parser("list", help="list the subscribers")
    _config_option(listing)
    listing.set_defaults(func=_list)

    remove = commands.add_parser("remove", help="remove a subscriber and its registrations")
    _config_option(remove)
    remove.add_argument("impi", metavar="IMPI", help="the subscriber's private identity")
    remove.set_defaults(func=_remove)


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="the operator's TOML file; its [store] is where subscribers live")


def _run(action: str, args: argparse.Namespace) -> tuple[OperatorConfig, Store] | int:
    try:
        config = load_config(args.config)
        return config, open_store(config.store)
    except (ConfigError, StoreError) as exc:
        print(f"ueconnect subscriber {action}: {exc}", file=sys.stderr)
        return 1


def _password(args: argparse.Namespace) -> str:
    if args.password is not None:
        return str(args.password)
    if args.password_file is not None:
        if args.password_file == "-":
            line = sys.stdin.readline()
        else:
            try:
                with Path(args.password_file).open(encoding="utf-8") as f:
                    line = f.readline()
            except (OSError, UnicodeDecodeError) as exc:
                raise _Refused(f"--password-file {args.password_file}: cannot read it "
                               f"({getattr(exc, 'strerror', None) or exc})") from None
        password = line.rstrip("\r\n")
        if not password:
            raise _Refused(f"--password-file {args.password_file}: the first line is empty")
        return password
    if not sys.stdin.isatty():
        raise _Refused("no password: give --password-file FILE (or '-' for stdin), "
                       "or run in a terminal to be prompted")
    first = getpass.getpass("Password: ")
    if not first:
        raise _Refused("the password is empty")
    if getpass.getpass("Password again: ") != first:
        raise _Refused("the two passwords differ; nothing was added")
    return first


def _add(args: argparse.Namespace) -> int:
    try:
        try:
            impi = validate_impi(args.impi)
        except InvalidIdentity as exc:
            raise _Refused(f"--impi {exc}") from None
        for impu in args.impu:
            try:
                canonical_aor(impu)
            except InvalidIdentity as exc:
                raise _Refused(f"--impu {exc}") from None
        password = _password(args)
    except _Refused as exc:
        print(f"ueconnect subscriber add: {exc}", file=sys.stderr)
        return 1
    opened = _run("add", args)
    if isinstance(opened, int):
        return opened
    config, store = opened
    with store:
        try:
            subscriber = new_subscriber(impi, args.impu, password, config.realm,
                                        now=time.time(), display_name=args.display_name)
            store.subscribers.add(subscriber)
        except StoreError as exc:
            print(f"ueconnect subscriber add: {exc}", file=sys.stderr)
            return 1
    print(f"added {_describe(subscriber)}; digest credentials for realm {config.realm}")
    return 0


def _list(args: argparse.Namespace) -> int:
    opened = _run("list", args)
    if isinstance(opened, int):
        return opened
    config, store = opened
    with store:
        subscribers = store.subscribers.list()
    if not subscribers:
        print(f"no subscribers in {config.store.path}")
    for subscriber in subscribers:
        print(_describe(subscriber))
    return 0


def _remove(args: argparse.Namespace) -> int:
    opened = _run("remove", args)
    if isinstance(opened, int):
        return opened
    _, store = opened
    with store:
        try:
            subscriber = store.subscribers.remove(args.impi)
        except StoreError as exc:
            print(f"ueconnect subscriber remove: {exc}; `ueconnect subscriber list` shows "
                  "who there is", file=sys.stderr)
            return 1
    print(f"removed {_describe(subscriber)}")
    return 0


def _describe(subscriber: Subscriber) -> str:
    name = f" \"{subscriber.display_name}\"" if subscriber.display_name else ""
    return f"{subscriber.impi}{name}: {', '.join(subscriber.impus)}"
