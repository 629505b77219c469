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

from ims.cli.report import help_page, print_config_error
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
    parser = sub.add_parser(
        "subscriber", help="add, list and remove an operator's subscribers",
        **help_page(
            "Provision the subscribers of one operator in the store its TOML file names "
            "([store] path, default <config stem>.sqlite beside the file). Only digest HA1 "
            "values are stored (SHA-256 and MD5, for the realm of [scscf], default the home "
            "domain), never the password.",
            ["ueconnect subscriber add --config alpha.toml --impi "
             "bill@ims.mnc001.mcc001.3gppnetwork.org --impu tel:+15550100001 "
             "--password-file bill.pw",
             "ueconnect subscriber list --config alpha.toml",
             "ueconnect subscriber remove --config alpha.toml "
             "bill@ims.mnc001.mcc001.3gppnetwork.org"]))

    def usage(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=usage)
    commands = parser.add_subparsers(dest="subscriber_command", metavar="ACTION")

    add = commands.add_parser(
        "add", help="add a subscriber (digest HA1 values are stored, never the password)",
        **help_page(
            "Add a subscriber: its private identity (the digest username), its public "
            "identities and its password, read from --password, --password-file or a prompt "
            "(asked twice; default when stdin is a terminal). The store is created, with its "
            "directory, when missing.",
            ["ueconnect subscriber add --config alpha.toml --impi "
             "bill@ims.mnc001.mcc001.3gppnetwork.org --impu tel:+15550100001 "
             "--impu sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org --display-name Bill",
             "echo secret | ueconnect subscriber add --config alpha.toml --impi "
             "carol@ims.mnc001.mcc001.3gppnetwork.org --impu tel:+15550100003 "
             "--password-file -"]))
    _config_option(add)
    add.add_argument("--impi", required=True, metavar="IMPI",
                     help="private identity, e.g. bill@ims.mnc001.mcc001.3gppnetwork.org")
    add.add_argument("--impu", action="append", required=True, metavar="URI",
                     help="public identity, tel:+E164 or sip:user@domain (repeat for several; "
                          "the first is the default)")
    add.add_argument("--display-name", metavar="NAME",
                     help="e.g. \"Bill\" (default: none)")
    secret = add.add_mutually_exclusive_group()
    secret.add_argument("--password",
                        help="the password (visible to other local users in the process list: "
                             "prefer --password-file or the prompt)")
    secret.add_argument("--password-file", metavar="FILE",
                        help="read the password from the first line of FILE ('-' for stdin)")
    add.set_defaults(func=_add)

    listing = commands.add_parser(
        "list", help="list the subscribers",
        **help_page("List every subscriber of the store: private identity, display name, "
                    "public identities. A store that does not exist yet is not created.",
                    ["ueconnect subscriber list --config alpha.toml"]))
    _config_option(listing)
    listing.set_defaults(func=_list)

    remove = commands.add_parser(
        "remove", help="remove a subscriber and its registrations",
        **help_page("Remove a subscriber and its registrar bindings; its permission "
                    "decisions stay (they are the operator's audit).",
                    ["ueconnect subscriber remove --config alpha.toml "
                     "bill@ims.mnc001.mcc001.3gppnetwork.org"]))
    _config_option(remove)
    remove.add_argument("impi", metavar="IMPI", help="the subscriber's private identity")
    remove.set_defaults(func=_remove)


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="the operator's TOML file; its [store] is where subscribers live")


def _run(action: str, args: argparse.Namespace,
         create: bool = True) -> tuple[OperatorConfig, Store | None] | int:
    """The configuration and its store; with `create` False, None for a store that does not
    exist yet (reading commands do not create one only to find it empty)."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print_config_error(exc, sys.stderr)
        return 1
    if not create and not config.store.path.exists():
        return config, None
    try:
        return config, open_store(config.store)
    except StoreError as exc:
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
        impi = validate_impi(args.impi)
    except InvalidIdentity as exc:  # a malformed option value: a usage error
        return _refuse(f"--impi {exc}", EXIT_USAGE)
    seen: dict[str, str] = {}  # canonical AOR (RFC 3261 section 10.3 step 5) -> as given
    for impu in args.impu:
        try:
            first = seen.setdefault(canonical_aor(impu), impu)
        except InvalidIdentity as exc:
            return _refuse(f"--impu {exc}", EXIT_USAGE)
        if first is not impu:  # the store would keep it once: say so rather than merge
            return _refuse(f"--impu {impu} is given twice"
                           + (f" (first as {first})" if first != impu else "")
                           + "; give each public identity once")
    try:
        password = _password(args)
    except _Refused as exc:
        return _refuse(str(exc))
    opened = _run("add", args)
    if isinstance(opened, int):
        return opened
    config, store = opened
    assert store is not None
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
    opened = _run("list", args, create=False)
    if isinstance(opened, int):
        return opened
    config, store = opened
    if store is None:
        print(f"no subscribers in {config.store.path} (no store there yet: `ueconnect "
              "subscriber add` creates it)")
        return 0
    with store:
        subscribers = store.subscribers.list()
    if not subscribers:
        print(f"no subscribers in {config.store.path}")
    for subscriber in subscribers:
        print(_describe(subscriber))
    return 0


def _remove(args: argparse.Namespace) -> int:
    opened = _run("remove", args, create=False)
    if isinstance(opened, int):
        return opened
    config, store = opened
    if store is None:
        print(f"ueconnect subscriber remove: no subscriber with identity {args.impi}: there is "
              f"no store at {config.store.path} yet ([store] path); nothing to remove",
              file=sys.stderr)
        return 1
    with store:
        try:
            subscriber = store.subscribers.remove(args.impi)
        except StoreError as exc:
            print(f"ueconnect subscriber remove: {exc}; `ueconnect subscriber list` shows "
                  "who there is", file=sys.stderr)
            return 1
    print(f"removed {_describe(subscriber)}")
    return 0


EXIT_USAGE = 2  # ims/cli/__init__.py: bad options or option values


def _refuse(problem: str, status: int = 1) -> int:
    print(f"ueconnect subscriber add: {problem}", file=sys.stderr)
    return status


def _describe(subscriber: Subscriber) -> str:
    name = f" \"{subscriber.display_name}\"" if subscriber.display_name else ""
    return f"{subscriber.impi}{name}: {', '.join(subscriber.impus)}"
