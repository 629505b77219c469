"""UE configuration files (TOML): who the UE is, where its operator is, its standing rules.

    [ue]
    name = "Bill"                                              # optional: the impi's user part
    impu = "sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org"
    impi = "bill@ims.mnc001.mcc001.3gppnetwork.org"
    password = "bill-demo"                                     # or password_file = "bill.pw"
    home_domain = "ims.mnc001.mcc001.3gppnetwork.org"
    pcscf = "127.0.1.1:5100"                                   # UDP
    bind_host = "127.0.0.1"                                    # optional
    transport_policy = "all"                                   # optional: "all" | "relay"
    stun_server = "192.0.2.53:3478"                            # optional
    setup_timeout = 10.0                                       # optional, seconds

    [rules]                                   # optional: the rule set of docs/extension.md 6.1
    version = 1
    [[rules.rules]]
    id = "friends"
    action = "allow"
    peer = "tel:+15550100002"

`load_ue_config(path)` returns the validated `UeConfig` and the `RuleBook` (None without
[rules]); `[[rules]]` (an array of rule tables, no version) is accepted as a shorthand. Bad
files raise the operator configuration's error family (ims.config: `ConfigFileError`,
`ConfigSyntaxError`, `ConfigValueError`), with every problem naming the file, the key, its
line and the fix, exactly as `ueconnect mno --check` reports them: one validator style
(ims.toml_check).
`ue_config_text` writes a file `load_ue_config` reads back.
"""

from __future__ import annotations

import datetime
import json
import tomllib
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any, cast

from ims.config import ConfigSyntaxError, ConfigValueError, read_config_text
from ims.permission.errors import InvalidRuleSet
from ims.permission.rules import RULES_VERSION, parse_rule_set
from ims.sip.errors import ParseError
from ims.sip.uri import SipUri, parse_uri
from ims.toml_check import (
    MISSING,
    HostPort,
    KeyLines,
    KeyPath,
    Problems,
    Table,
    host_port,
    ip_literal,
    is_domain,
    show,
    syntax_problem,
)
from ue_ua.client import UeConfig
from ue_ua.errors import UeUsageError
from ue_ua.ice import TRANSPORT_POLICIES, TransportPolicy
from ue_ua.permissions import RuleBook

__all__ = ["STUN_PORT", "load_ue_config", "parse_ue_config", "ue_config_text"]

STUN_PORT = 3478  # RFC 8489 section 18.4: the default when stun_server gives no port
_SECTIONS = ("ue", "rules")
_ENDPOINT_WHAT = "\"HOST:PORT\" with HOST an IP literal ([::1] for IPv6) and PORT 1-65535"
_PASSWORD_MAX = 1024  # bytes read from a password_file at most: a secret, not a document


def load_ue_config(path: str | PathLike[str]) -> tuple[UeConfig, RuleBook | None]:
    """Read and validate the UE configuration at `path`: (the UeConfig, its RuleBook or None).

    Raises ConfigFileError, ConfigSyntaxError or ConfigValueError (ims.config.ConfigError),
    the last one listing every problem of the file."""
    path = Path(path)
    text = read_config_text(path, "a UE TOML file (`ueconnect demo --serve` writes one per "
                                  "subscriber)")
    return parse_ue_config(text, path)


def parse_ue_config(text: str, path: Path) -> tuple[UeConfig, RuleBook | None]:
    """Validate TOML `text` as if read from `path` (a relative password_file resolves against
    its directory; its name appears in messages)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigSyntaxError(path, [syntax_problem(str(exc), text)]) from None
    problems = Problems(KeyLines(text))
    if "ue" not in data and "operator" in data:
        # The other kind of file (ims.config): one problem, not one per section.
        problems.add(("operator",), f"this is an operator's file, not a UE's: `ueconnect mno "
                     f"--config {path}` reads it; `ueconnect ue` needs a UE file (`ueconnect "
                     "demo --serve` writes one per subscriber)")
        raise ConfigValueError(path, problems.ordered())
    top = Table(data, (), problems)
    ue_table = top.table("ue")
    if ue_table is None and not top.present("ue"):
        problems.add(("ue",), "missing; a UE file needs a [ue] section with impu, impi, "
                     "password, home_domain and pcscf")
    config = _ue(ue_table, path, problems) if ue_table is not None else None
    rules = _rules(top, problems)
    top.finish("unknown section; sections are " + ", ".join(f"[{s}]" for s in _SECTIONS))
    if problems.items or config is None:
        raise ConfigValueError(path, problems.ordered())
    return config, rules


# -- [ue] ----------------------------------------------------------------------------------------


def _ue(t: Table, source: Path, problems: Problems) -> UeConfig | None:
    mark = len(problems.items)
    impu = t.string("impu", "the public identity, a sip: URI such as "
                    "\"sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org\"", required=True)
    impu_uri: SipUri | None = None
    if impu is not None:
        try:
            uri = parse_uri(impu.strip())
        except ParseError as exc:
            t.problem("impu", f"{show(impu)} is not a URI ({exc}); expected a sip: URI "
                      "such as \"sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org\"", impu)
        else:
            if isinstance(uri, SipUri):
                impu_uri = uri
            else:
                t.problem("impu", f"{show(impu)} is not a sip: URI; the public identity "
                          "registered is sip:NUMBER@HOME-DOMAIN (a tel: URI is an alias the "
                          "operator adds)", impu)
    impi = t.string("impi", "the private identity (the digest username), e.g. "
                    "\"bill@ims.mnc001.mcc001.3gppnetwork.org\"", required=True)
    if impi is not None and (not impi or not impi.isprintable() or any(c.isspace() for c in impi)
                             or len(impi) > 255):
        t.problem("impi", f"{show(impi)} is not a usable private identity; expected 1-255 "
                  "printable characters without spaces (as the operator provisioned it)", impi)
        impi = None
    password = _password(t, source)
    home_domain = t.string("home_domain", "the operator's home domain, e.g. "
                           "\"ims.mnc001.mcc001.3gppnetwork.org\"", required=True)
    if home_domain is not None:
        if is_domain(home_domain.rstrip(".")):
            home_domain = home_domain.rstrip(".").lower()
        else:
            t.problem("home_domain", f"{show(home_domain)} is not a domain name; expected "
                      "dot-separated labels of letters, digits and hyphens", home_domain)
            home_domain = None
    if impu_uri is not None and home_domain is not None \
            and impu_uri.host.lower().rstrip(".") != home_domain:
        t.problem("impu", f"{show(impu)} is not in home_domain {show(home_domain)}; an IMS "
                  "public identity lives in its operator's home domain (TS 23.003 section "
                  "13.4): fix one of the two", impu)
        impu_uri = None
    pcscf = _endpoint(t, "pcscf", "the P-CSCF (UDP)", required=True)
    bind_host = "127.0.0.1"
    bind_text = t.string("bind_host", "the one local IP address the UE binds, e.g. "
                         "\"127.0.0.1\"")
    if bind_text is not None:
        address = ip_literal(bind_text) or ip_literal(f"[{bind_text}]")
        if address is None:
            t.problem("bind_host", f"{show(bind_text)} is not an IP address; expected the "
                      "local address for SIP and ICE, e.g. \"127.0.0.1\" or \"::1\"", bind_text)
        else:
            bind_host = address
    policies = " or ".join(f'"{p}"' for p in TRANSPORT_POLICIES)
    policy = t.string("transport_policy", policies, default="all")
    if policy is not None and policy not in TRANSPORT_POLICIES:
        t.problem("transport_policy", f"{show(policy)} is not a transport policy; expected "
                  f"{policies} (\"relay\": only the operators' relay candidates)", policy)
        policy = None
    stun = _endpoint(t, "stun_server", "a STUN server (port 3478 when none is given)",
                     default_port=STUN_PORT) if t.present("stun_server") else None
    t.raw("stun_server")
    timeout = t.number("setup_timeout", "seconds for the ICE checks, more than 0 and at most "
                       "300", 10.0, 0.0, 300.0)
    if timeout == 0.0:
        t.problem("setup_timeout", "0 is out of range; expected seconds for the ICE checks, "
                  "more than 0 and at most 300")
        timeout = None
    name = t.string("name", "a display name, e.g. \"Bill\"")
    if name is not None and (not name.strip() or not name.isprintable() or len(name) > 64):
        t.problem("name", f"{show(name)} is not a usable display name; expected 1-64 "
                  "printable characters", name)
        name = None
    elif name is None and not t.present("name") and impi is not None:
        name = impi.partition("@")[0] or impi
    t.finish()
    if len(problems.items) > mark or None in (impu_uri, impi, password, home_domain, pcscf,
                                              policy, timeout, name):
        return None
    assert impu is not None and impi is not None and password is not None
    assert home_domain is not None and pcscf is not None and policy is not None
    assert timeout is not None and name is not None
    try:
        return UeConfig(name=name, impu=impu.strip(), impi=impi, password=password,
                        home_domain=home_domain, pcscf=pcscf, bind_host=bind_host,
                        transport_policy=cast(TransportPolicy, policy), stun_server=stun,
                        setup_timeout=timeout)
    except UeUsageError as exc:  # a rule UeConfig has that the checks above missed
        t.problem((), f"{exc}")
        return None


def _password(t: Table, source: Path) -> str | None:
    has_password, has_file = t.present("password"), t.present("password_file")
    if has_password and has_file:
        t.raw("password_file")
        t.problem("password_file", "password and password_file are both set; keep one")
        return None
    if not has_file:
        password = t.string("password", "the digest password (or password_file = a file "
                            "holding it)", required=True)
        if password is not None and not password:
            t.problem("password", "is empty; expected the digest password the operator "
                      "provisioned")
            return None
        return password
    text = t.string("password_file", "a file holding the password (its first line)")
    if text is None:
        return None
    if not text.strip() or "\0" in text:
        t.problem("password_file", f"{show(text)} is not a usable path; expected a file "
                  "holding the password", text)
        return None
    resolved = (source.resolve().parent / Path(text).expanduser()).resolve()
    try:
        with resolved.open("rb") as file:
            raw = file.read(_PASSWORD_MAX + 1)
    except OSError as exc:
        t.problem("password_file", f"{show(text)}: cannot read {resolved} "
                  f"({exc.strerror or exc}); expected a file holding the password", text)
        return None
    try:
        first = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        t.problem("password_file", f"{show(text)}: {resolved} is not UTF-8 text", text)
        return None
    if len(raw) > _PASSWORD_MAX or not first or not first[0]:
        t.problem("password_file", f"{show(text)}: {resolved} holds no password on its first "
                  f"line (or more than {_PASSWORD_MAX} bytes); write the password alone on "
                  "the first line", text)
        return None
    return first[0]


def _endpoint(t: Table, key: str, what: str, *, required: bool = False,
              default_port: int | None = None) -> tuple[str, int] | None:
    expected = f"{what} as {_ENDPOINT_WHAT}"
    text = t.string(key, expected, required=required)
    if text is None:
        return None
    hostport = host_port(text)
    if hostport is None and default_port is not None:
        address = ip_literal(text) or ip_literal(f"[{text}]")
        if address is not None:
            return address, default_port
    if hostport is None:
        t.problem(key, f"{show(text)} is not an address; expected {expected}", text)
        return None
    return hostport.host, hostport.port


# -- [rules] -------------------------------------------------------------------------------------


def _rules(top: Table, problems: Problems) -> RuleBook | None:
    value = top.raw("rules")
    if value is MISSING:
        return None
    base: KeyPath
    if isinstance(value, list):  # [[rules]]: the shorthand, an array of rules
        body: dict[str, Any] = {"version": RULES_VERSION, "rules": value}
        base = ("rules",)
    elif isinstance(value, dict):
        body = dict(value)
        base = ("rules", "rules")
        if "version" not in body:
            problems.add(("rules",), f"has no version; add version = {RULES_VERSION} (or write "
                         "the rules as [[rules]] tables)")
            return None
    else:
        problems.add(("rules",), f"{show(value)} is not a table; write [rules] with version = "
                     f"{RULES_VERSION} and [[rules.rules]] tables, or [[rules]] tables")
        return None
    items = body.get("rules")
    if isinstance(items, list):
        body["rules"] = [_rfc3339(item) for item in items]
    try:
        rule_set = parse_rule_set(body)
    except InvalidRuleSet as exc:
        index = _rule_index(items, exc)
        where = (*base, index) if index is not None else base if items is not None else ("rules",)
        problems.add(where, f"{exc}; see docs/extension.md section 6.1 (members id, action, "
                     "peer, peer_mno, application, expires)")
        return None
    return RuleBook(rule_set.rules)


def _rfc3339(item: object) -> object:
    """TOML has date-times of its own: `expires = 2026-12-31T23:59:59Z` is taken as the RFC
    3339 string the rule set wants."""
    if not isinstance(item, dict):
        return item
    expires = item.get("expires")
    if isinstance(expires, datetime.datetime):
        text = expires.isoformat()
        return {**item, "expires": text.replace("+00:00", "Z")}
    return item


def _rule_index(items: object, exc: InvalidRuleSet) -> int | None:
    if not isinstance(items, list):
        return None
    if exc.position is not None and 1 <= exc.position <= len(items):
        return exc.position - 1
    if exc.rule_id is not None:
        found = [i for i, r in enumerate(items)
                 if isinstance(r, dict) and r.get("id") == exc.rule_id]
        if found:
            return found[-1]  # a duplicate id: the second one is the defect
    return None


# -- writing --------------------------------------------------------------------------------------


def _toml(value: str | int | float) -> str:
    # A TOML basic string takes JSON's escapes (\" \\ \n \uXXXX); non-ASCII stays literal.
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)


def ue_config_text(config: UeConfig, *, rules: RuleBook | None = None,
                   comment: str = "") -> str:
    """A UE TOML file for `config` (and `rules` as [rules]) that `load_ue_config` reads back;
    `comment` lines go first, each prefixed with "# "."""
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    values: Mapping[str, str | int | float] = {
        "name": config.name, "impu": config.impu, "impi": config.impi,
        "password": config.password, "home_domain": config.home_domain,
        "pcscf": str(HostPort(*config.pcscf)), "bind_host": config.bind_host,
        "transport_policy": config.transport_policy,
        **({"stun_server": str(HostPort(*config.stun_server))}
           if config.stun_server is not None else {}),
        "setup_timeout": float(config.setup_timeout),
    }  # fmt: skip
    lines.append("[ue]")
    lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
    if rules is not None:
        lines += ["", "[rules]", f"version = {RULES_VERSION}"]
        for rule in rules.rules:
            lines += ["", "[[rules.rules]]"]
            lines += [f"{key} = {_toml(value)}" for key, value in rule.to_object().items()]
    return "\n".join(lines) + "\n"
