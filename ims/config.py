"""Operator configuration: one TOML file per operator (MNO), validated into frozen dataclasses.

`load_config(path)` reads the file with tomllib, checks every key and returns an
`OperatorConfig`, or raises a `ConfigError` listing every problem found (not only the first).
A role (P-CSCF, S-CSCF, border) is enabled by the presence of its section; docs/configuration.md
is the reference of every key, docs/examples/ holds the demo world's two operators.

The generic TOML checking (typed table access, problem lists with key lines, IP literal and
domain grammars) lives in ims.toml_check, shared with the UE configuration (ue_ua.config);
`ConfigProblem` and `HostPort` come from there and are re-exported here.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from ims.dns.errors import InvalidMnoId
from ims.dns.locator import LocatorConfig, Nameserver
from ims.dns.plmn import Plmn, home_domain
from ims.gateway.relay import RelayOffload
from ims.sip.address import Address
from ims.sip.digest import DigestAlgorithm, DigestServerConfig
from ims.toml_check import (
    MISSING,
    ConfigProblem,
    HostPort,
    KeyLines,
    KeyPath,
    Problems,
    Table,
    format_key,
    host_port,
    ip_literal,
    is_domain,
    show,
    syntax_problem,
)

__all__ = [
    "BorderConfig",
    "ConfigError",
    "ConfigFileError",
    "ConfigProblem",
    "ConfigSyntaxError",
    "ConfigValueError",
    "DnsConfig",
    "GatewayConfig",
    "GatewayMode",
    "HostPort",
    "LogConfig",
    "MetricsConfig",
    "OperatorConfig",
    "OperatorIdentity",
    "PcscfConfig",
    "PeerConfig",
    "PermissionConfig",
    "Role",
    "ScscfConfig",
    "StoreConfig",
    "TraceConfig",
    "iter_listeners",
    "load_config",
    "parse_config",
    "read_config_text",
]

# --------------------------------------------------------------------------------------------
# Errors (one ConfigProblem per defect, from ims.toml_check)
# --------------------------------------------------------------------------------------------


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every defect found.

    `str()` is one line per problem, each naming the file, the key, the line and the fix.
    """

    def __init__(self, path: Path, problems: Sequence[ConfigProblem]) -> None:
        self.path = path
        self.problems = tuple(problems)
        super().__init__("\n".join(p.format(str(path)) for p in self.problems))


class ConfigFileError(ConfigError):
    """The file cannot be read (missing, unreadable, not UTF-8)."""


class ConfigSyntaxError(ConfigError):
    """The file is not valid TOML; the problem carries tomllib's line and column."""


class ConfigValueError(ConfigError):
    """The file is valid TOML but keys are unknown, missing, of the wrong type or out of range."""


# --------------------------------------------------------------------------------------------
# The validated result
# --------------------------------------------------------------------------------------------


class Role(enum.StrEnum):
    """The network roles one operator process can run (docs/ARCHITECTURE.md)."""

    PCSCF = "pcscf"
    SCSCF = "scscf"
    BORDER = "border"



@dataclass(frozen=True)
class OperatorIdentity:
    """[operator]: who this operator is (TS 23.003 section 2.2 PLMN, section 13.2 domain)."""

    name: str
    plmn: Plmn
    mnc_digits: int
    home_domain: str


@dataclass(frozen=True)
class StoreConfig:
    """[store]: where registrations, subscribers and sessions live. `path` is absolute."""

    backend: str
    path: Path


@dataclass(frozen=True)
class DnsConfig:
    """[dns]: the nameserver the locator asks (ENUM, RFC 3263) and how."""

    server: HostPort
    enum_suffix: str
    timeout: float
    # MCC -> MNC length (TS 23.003: 2 or 3 digits); always holds this operator's own MCC.
    mnc_lengths: Mapping[str, int]

    def locator_config(self) -> LocatorConfig:
        """The ims.dns locator's configuration for this section."""
        return LocatorConfig(
            nameservers=(Nameserver(self.server.host, self.server.port),),
            enum_suffix=self.enum_suffix.rstrip(".") + ".",
            timeout=self.timeout,
            mnc_lengths=self.mnc_lengths,
        )


@dataclass(frozen=True)
class PcscfConfig:
    """[pcscf]: the UE's first hop."""

    listen: tuple[Address, ...]
    # RFC 5626 section 4.4 (Flow-Timer): seconds within which the P-CSCF expects a UE's
    # keep-alive (CRLF on TCP, STUN on UDP) before it treats the flow as dead.
    keepalive: float
    # Host put in Path / Via / Record-Route; None means the first listen address.
    advertised_host: str | None


@dataclass(frozen=True)
class ScscfConfig:
    """[scscf]: registrar and authentication (RFC 3261 section 10.3, RFC 8760 digest)."""

    listen: tuple[Address, ...]
    realm: str
    nonce_lifetime: float
    min_expires: int
    max_expires: int
    default_expires: int
    algorithms: tuple[DigestAlgorithm, ...]
    advertised_host: str | None

    def digest_config(self, secret_key: bytes) -> DigestServerConfig:
        """The digest server configuration; `secret_key` keys the nonces (keep it stable
        across restarts, e.g. with `Store.secret`)."""
        return DigestServerConfig(
            realm=self.realm,
            secret_key=secret_key,
            nonce_lifetime=self.nonce_lifetime,
            algorithms=self.algorithms,
        )


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class PeerConfig:
    """[[border.peers]]: one operator the border admits and may send to."""

    name: str
    plmn: Plmn
    domain: str
    admit_from: tuple[IpNetwork, ...]
    tls_fingerprint: str | None  # "SHA-256 AB:CD:..." (RFC 8122 section 5 form)
    tls_ca: Path | None

    def admits(self, address: str) -> bool:
        """Whether a request from source IP `address` may come from this peer."""
        ip = ipaddress.ip_address(address)
        return any(ip.version == net.version and ip in net for net in self.admit_from)


@dataclass(frozen=True)
class BorderConfig:
    """[border]: I-CSCF / IBCF, the entry and exit between operators."""

    listen: tuple[Address, ...]
    peers: tuple[PeerConfig, ...]
    tls_certificate: Path | None
    tls_private_key: Path | None
    advertised_host: str | None

    def peer_for_source(self, address: str) -> PeerConfig | None:
        """The first peer admitting source IP `address`, None when no peer does."""
        return next((p for p in self.peers if p.admits(address)), None)


@dataclass(frozen=True)
class MetricsConfig:
    """[metrics]: the Prometheus /metrics endpoint (HTTP)."""

    listen: HostPort


@dataclass(frozen=True)
class TraceConfig:
    """[trace]: the ladder log, one JSON object per SIP message. `path` is absolute."""

    path: Path


@dataclass(frozen=True)
class PermissionConfig:
    """[permission]: the permission function of docs/extension.md section 5 runs at this
    operator's S-CSCF; `deadline` is how long it waits for a UE's answer (section 5.5)."""

    deadline: int = 10


class GatewayMode(enum.StrEnum):
    """[gateway] mode: how this operator opens its side of the data path."""

    RELAY = "relay"  # the userspace relay (ims.gateway.service), the embedded default
    PCP = "pcp"  # PCP mappings on the CGN (ims.gateway.pcp_gateway), the relay as fallback
    OFF = "off"  # open nothing; offers pass unchanged (ims.seams.LoggingGateway)


PCP_SERVER_PORT = 5351  # RFC 6887 section 19.1


@dataclass(frozen=True)
class GatewayConfig:
    """[gateway]: the connectivity gateway. `relay_address` is the IP address the relay ports
    are bound on (what UEs and the peer operator's relay send to; None only with mode off);
    `lifetime` the session lifetime in seconds when no Session-Expires (RFC 4028) says one.
    Mode pcp: `pcp_server` is the CGN's PCP server (port 5351 unless given), `pcp_lifetime`
    the mapping lifetime asked of it (the PCP client renews at half of it, RFC 6887 section
    11.2.1; a crashed operator's mappings lapse after it), `pcp_timeout` how long to wait
    for its answer before relaying that leg instead. `relay_offload` nft: the kernel forwards
    each relayed allocation once both its peers are known (ims.gateway.nft_relay; needs root,
    nft, conntrack and IP forwarding, checked at start)."""

    mode: GatewayMode = GatewayMode.RELAY
    relay_address: str | None = None
    lifetime: int = 1800
    pcp_server: HostPort | None = None
    pcp_lifetime: int = 120
    pcp_timeout: float = 3.0
    relay_offload: RelayOffload = RelayOffload.NONE


@dataclass(frozen=True)
class LogConfig:
    """[log]: the logging level name (DEBUG, INFO, WARNING, ERROR)."""

    level: str


@dataclass(frozen=True)
class OperatorConfig:
    """One operator's validated configuration; `source` is the file it came from."""

    source: Path
    operator: OperatorIdentity
    store: StoreConfig
    dns: DnsConfig
    log: LogConfig
    pcscf: PcscfConfig | None = None
    scscf: ScscfConfig | None = None
    border: BorderConfig | None = None
    metrics: MetricsConfig | None = None
    trace: TraceConfig | None = None
    permission: PermissionConfig | None = None
    gateway: GatewayConfig | None = None

    @property
    def roles(self) -> tuple[Role, ...]:
        """The enabled roles, in the order a request from a UE meets them."""
        present = {Role.PCSCF: self.pcscf, Role.SCSCF: self.scscf, Role.BORDER: self.border}
        return tuple(role for role, section in present.items() if section is not None)

    @property
    def realm(self) -> str:
        """The digest realm subscribers' credentials are made for: the S-CSCF's realm when
        that role is configured here, else the home domain (its default)."""
        return self.scscf.realm if self.scscf is not None else self.operator.home_domain


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_config(path: str | Path) -> OperatorConfig:
    """Read and validate the operator configuration at `path`.

    Raises `ConfigFileError`, `ConfigSyntaxError` or `ConfigValueError` (all `ConfigError`),
    the last one with every problem of the file.
    """
    path = Path(path)
    return parse_config(read_config_text(path, "an operator TOML file"), path)


MAX_CONFIG_BYTES = 1024 * 1024  # a configuration is a few KiB; more is the wrong file


def read_config_text(path: Path, what: str) -> str:
    """The text of the configuration file at `path`; ConfigFileError when it is missing (the
    message asks for the path of `what`), unreadable or not UTF-8. Shared with the UE
    configuration (ue_ua.config)."""
    try:
        with path.open("rb") as file:  # not read_text: /dev/zero or a runaway pipe never ends
            raw = file.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigFileError(path, [ConfigProblem(
                "", f"larger than {MAX_CONFIG_BYTES >> 20} MiB, more than any configuration "
                    f"holds; give the path of {what}")])
        return raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigFileError(
            path, [ConfigProblem("", f"no such file; give the path of {what}")]
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigFileError(
            path, [ConfigProblem("", f"not UTF-8 text ({exc.reason} at byte {exc.start}); "
                                     "TOML files must be UTF-8")]
        ) from None
    except IsADirectoryError:
        raise ConfigFileError(
            path, [ConfigProblem("", f"is a directory; give the path of {what} in it")]
        ) from None
    except OSError as exc:
        raise ConfigFileError(
            path, [ConfigProblem("", f"cannot read: {exc.strerror or exc}; give the path of "
                                     f"{what} this user can read")]
        ) from None


def parse_config(text: str, path: Path) -> OperatorConfig:
    """Validate TOML `text` as if read from `path` (relative paths resolve against its
    directory; its name appears in messages)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigSyntaxError(path, [syntax_problem(str(exc), text)]) from None
    problems = Problems(KeyLines(text))
    config = _Validator(problems, path).operator_config(data)
    if problems.items or config is None:
        raise ConfigValueError(path, problems.ordered())
    return config


# --------------------------------------------------------------------------------------------
# Value grammars
# --------------------------------------------------------------------------------------------


def _listen_address(text: str, transports: Sequence[str]) -> Address | None:
    transport, sep, rest = text.partition(":")
    if not sep or transport.lower() not in transports:
        return None
    hostport = host_port(rest)
    if hostport is None:
        return None
    return Address(transport.upper(), hostport.host, hostport.port)


def _advertised_ok(text: str) -> bool:
    return is_domain(text) or ip_literal(text) is not None


_HOST_PORT_WHAT = "HOST:PORT with HOST an IP literal ([::1] for IPv6) and PORT 1-65535"
_FINGERPRINT_RE = re.compile(r"(?i)SHA-256 (?:[0-9A-F]{2}:){31}[0-9A-F]{2}")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_MAX_DELTA_SECONDS = 2**32 - 1  # RFC 3261 section 25.1 delta-seconds, as ims.sip uses
_SQLITE_HEADER = b"SQLite format 3\0"  # the first 16 bytes of every SQLite 3 database file
_SECTIONS = ("operator", "store", "dns", "pcscf", "scscf", "border", "metrics", "trace",
             "permission", "gateway", "log")


# --------------------------------------------------------------------------------------------
# The validator
# --------------------------------------------------------------------------------------------


@dataclass
class _Validator:
    problems: Problems
    source: Path
    # (kind, host, port) of every listener, to catch two sockets on one address.
    listeners: dict[tuple[str, str, int], KeyPath] = field(default_factory=dict)
    # MCC -> MNC length from [operator] and [dns.mnc_lengths], even when [dns] is broken.
    mnc_lengths: dict[str, int] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self.source.resolve().parent

    def mark(self) -> int:
        return len(self.problems.items)

    def failed_since(self, mark: int) -> bool:
        """Whether a problem was reported after `mark`: the section is then unusable."""
        return len(self.problems.items) > mark

    def operator_config(self, data: Mapping[str, object]) -> OperatorConfig | None:
        if "operator" not in data and "ue" in data:
            # The other kind of file (ue_ua.config): one problem, not one per section.
            self.problems.add(("ue",), "this is a UE file, not an operator's: `ueconnect ue "
                              f"--config {self.source}` reads it; `ueconnect mno` needs an "
                              "operator file such as docs/examples/alpha.toml")
            return None
        top = Table(data, (), self.problems)
        operator_table = top.table("operator")
        if operator_table is None and not top.present("operator"):
            self.problems.add(("operator",), "missing; every file needs an [operator] section "
                              "with name, plmn and mnc_digits")
        identity = self.operator(operator_table) if operator_table else None

        store = self.store(top.table("store") or Table({}, ("store",), self.problems))
        dns = self.dns(top.table("dns") or Table({}, ("dns",), self.problems), identity)
        pcscf = self.pcscf(t) if (t := top.table("pcscf")) else None
        scscf = self.scscf(t, identity) if (t := top.table("scscf")) else None
        border = self.border(t, identity, dns) if (t := top.table("border")) else None
        metrics = self.metrics(t) if (t := top.table("metrics")) else None
        trace = self.trace(t) if (t := top.table("trace")) else None
        permission = self.permission(t) if (t := top.table("permission")) else None
        gateway = self.gateway(t, pcscf) if (t := top.table("gateway")) else None
        log = self.log(top.table("log") or Table({}, ("log",), self.problems))
        top.finish("unknown section; sections are " + ", ".join(f"[{s}]" for s in _SECTIONS))

        if not any(top.present(r.value) for r in Role):
            self.problems.add((), "no role configured: add at least one of [pcscf], [scscf], "
                              "[border]")
        if self.problems.items or identity is None or dns is None or store is None or log is None:
            return None
        # Every section builder reports a problem whenever it returns None.
        assert all(s is not None for s, k in ((pcscf, "pcscf"), (scscf, "scscf"),
                                              (border, "border"), (metrics, "metrics"),
                                              (trace, "trace"), (permission, "permission"),
                                              (gateway, "gateway"))
                   if top.present(k))
        return OperatorConfig(
            source=self.source, operator=identity, store=store, dns=dns, log=log,
            pcscf=pcscf, scscf=scscf, border=border, metrics=metrics, trace=trace,
            permission=permission, gateway=gateway,
        )

    # ---- [operator] ------------------------------------------------------------------------

    def operator(self, t: Table) -> OperatorIdentity | None:
        name = t.string("name", "the operator's name, e.g. \"Alpha\"", required=True)
        if name is not None and (not name.strip() or not name.isprintable() or len(name) > 64):
            t.problem("name", f"{show(name)} is not a usable name; expected 1-64 printable "
                      "characters", name)
            name = None
        plmn_text = t.string("plmn", "the PLMN as \"MCC-MNC\", e.g. \"001-01\"", required=True)
        digits_value = t.required("mnc_digits", "2 or 3 (TS 23.003: the MNC length of this MCC)")
        digits: int | None = None
        if digits_value is not MISSING:
            is_integer = isinstance(digits_value, int) and not isinstance(digits_value, bool)
            if is_integer and digits_value in (2, 3):
                assert isinstance(digits_value, int)
                digits = digits_value
            else:
                what = "not 2 or 3" if is_integer else "not an integer (write it bare: 2)"
                t.problem("mnc_digits", f"{show(digits_value)} is {what}; expected 2 or 3, "
                          "the MNC length of this MCC (TS 23.003 section 2.2)")
        plmn = self.plmn(t, "plmn", plmn_text, {} if digits is None else {"_": digits})
        domain: str | None = None
        if plmn is not None and digits is not None:
            domain = home_domain(plmn.mcc, plmn.mnc, digits)
        chosen = t.string("home_domain", "a domain name, e.g. "
                          "\"ims.mnc001.mcc001.3gppnetwork.org\"")
        if chosen is not None:
            if is_domain(chosen.rstrip(".")):
                domain = chosen.rstrip(".").lower()
            else:
                t.problem("home_domain", f"{show(chosen)} is not a domain name; expected "
                          "letters, digits and hyphens in dot-separated labels", chosen)
                domain = None
        t.finish()
        if name is None or plmn is None or digits is None or domain is None:
            return None
        return OperatorIdentity(name=name, plmn=plmn, mnc_digits=digits, home_domain=domain)

    def plmn(self, t: Table, key: str, text: str | None,
             lengths: Mapping[str, int]) -> Plmn | None:
        """"MCC-MNC"; `lengths` maps MCC to MNC length ("_" = any MCC: the operator's own)."""
        if text is None:
            return None
        mcc, sep, mnc = text.partition("-")
        what = "\"MCC-MNC\" with a 3-digit MCC and a 2- or 3-digit MNC, e.g. \"001-01\""
        if not sep:
            t.problem(key, f"{show(text)} is not a PLMN; expected {what}", text)
            return None
        try:
            plmn = Plmn(mcc, mnc)
        except InvalidMnoId:
            t.problem(key, f"{show(text)} is not a PLMN; expected {what}", text)
            return None
        length = lengths.get(mcc, lengths.get("_"))
        if length is not None and len(mnc) != length:
            t.problem(key, f"{show(text)} has a {len(mnc)}-digit MNC but MCC {mcc} uses "
                      f"{length}-digit MNCs (mnc_digits / dns.mnc_lengths); write the MNC with "
                      f"{length} digits", text)
            return None
        return plmn

    # ---- [store], [dns] --------------------------------------------------------------------

    def store(self, t: Table) -> StoreConfig | None:
        backend = t.string("backend", "\"sqlite\"", default="sqlite")
        if backend == "redis":
            t.problem("backend", "\"redis\" is not available yet; use \"sqlite\"", backend)
            backend = None
        elif backend is not None and backend != "sqlite":
            t.problem("backend", f"{show(backend)} is not a store backend; expected \"sqlite\"",
                      backend)
            backend = None
        mark = self.mark()
        path = self.path(t, "path", "a file path for the SQLite database")
        if path is not None:
            self.store_file(t, path)
        t.finish()
        if backend is None or self.failed_since(mark):
            return None
        return StoreConfig(backend, path or self.base_dir / f"{self.source.stem}.sqlite")

    def store_file(self, t: Table, path: Path) -> None:
        """What `--check` can see of the store without opening it (the store creates a
        missing file and its directory): not a directory, and a file that exists is SQLite."""
        written = t.data.get("path")
        if path.is_dir():
            t.problem("path", f"{show(written)} is a directory ({path}); give a file path in "
                      "it, e.g. \"alpha.sqlite\"", written)
            return
        try:
            with path.open("rb") as file:
                head = file.read(len(_SQLITE_HEADER))
        except FileNotFoundError:
            return
        except OSError as exc:
            t.problem("path", f"{show(written)}: cannot read {path} ({exc.strerror or exc}); "
                      "give a store file this user can read and write", written)
            return
        if head and head != _SQLITE_HEADER:
            t.problem("path", f"{show(written)}: {path} is not an SQLite database; give the "
                      "path of this operator's store, or of a file that does not exist yet",
                      written)

    def path(self, t: Table, key: str, what: str, must_exist: bool = False) -> Path | None:
        """The resolved path, None when absent or bad (a bad one adds a problem)."""
        text = t.string(key, what)
        if text is None:
            return None
        if not text.strip() or "\0" in text:
            t.problem(key, f"{show(text)} is not a usable path; expected {what}", text)
            return None
        resolved = (self.base_dir / Path(text).expanduser()).resolve()
        if must_exist and not resolved.is_file():
            t.problem(key, f"{show(text)}: no such file ({resolved}); expected {what}", text)
        return resolved

    def dns(self, t: Table, identity: OperatorIdentity | None) -> DnsConfig | None:
        ok = True
        server_text = t.string("server", _HOST_PORT_WHAT, default="127.0.0.1:53530")
        server = None if server_text is None else host_port(server_text)
        if server is None:
            ok = False
            if server_text is not None:
                t.problem("server", f"{show(server_text)} is not a DNS server address; "
                          f"expected {_HOST_PORT_WHAT}", server_text)
        suffix = t.string("enum_suffix", "a domain name such as \"e164.arpa\"",
                          default="e164.arpa")
        if suffix is None:
            ok = False
        elif not is_domain(suffix.rstrip(".")):
            t.problem("enum_suffix", f"{show(suffix)} is not a domain name; expected "
                      "something like \"e164.arpa\" (RFC 6116)", suffix)
            ok = False
        timeout = t.number("timeout", "seconds per query, more than 0 and at most 60",
                           2.0, 0.001, 60.0)
        lengths: dict[str, int] = {}
        table = t.table("mnc_lengths")
        if table is not None:
            for mcc in table.data:
                value = table.raw(mcc)
                if not re.fullmatch(r"[0-9]{3}", mcc):
                    table.problem(mcc, "is not an MCC; expected 3-digit MCCs as keys, "
                                  "e.g. \"310\" = 3")
                elif isinstance(value, bool) or value not in (2, 3):
                    table.problem(mcc, f"{show(value)} is not an MNC length; expected 2 or 3")
                else:
                    assert isinstance(value, int)
                    lengths[mcc] = value
        if identity is not None:
            own = identity.plmn.mcc
            if lengths.get(own, identity.mnc_digits) != identity.mnc_digits:
                t.problem(("mnc_lengths", own), f"says {lengths[own]} but operator.mnc_digits "
                          f"says {identity.mnc_digits} for this operator's own MCC; make them "
                          "agree")
                ok = False
            lengths[own] = identity.mnc_digits
        self.mnc_lengths = lengths
        t.finish()
        if not ok or server is None or suffix is None or timeout is None:
            return None
        return DnsConfig(server, suffix.rstrip(".").lower(), timeout,
                         MappingProxyType(dict(sorted(lengths.items()))))

    # ---- roles ------------------------------------------------------------------------------

    def listen(self, t: Table, transports: Sequence[str]) -> tuple[Address, ...] | None:
        choices = "|".join(transports)
        what = (f"TRANSPORT:HOST:PORT with TRANSPORT {choices}, HOST an IP literal, "
                "PORT 1-65535")
        items = t.strings("listen", f"\"{'|'.join(transports)}:HOST:PORT\" strings",
                          required=True)
        if items is None:
            return None
        if not t.data.get("listen"):
            t.problem("listen", f"is empty; expected at least one {what}")
            return None
        out: list[Address] = []
        for i, text in enumerate(items):
            address = _listen_address(text, transports)
            if address is None:
                t.problem(("listen", i), f"{show(text)} is not a valid listen address; "
                          f"expected {what}", text)
                continue
            self.claim(t, ("listen", i), address.transport, address.host, address.port, text)
            out.append(address)
        return tuple(out) if len(out) == len(items) else None

    def claim(self, t: Table, key: KeyPath, transport: str, host: str, port: int,
              text: str) -> None:
        """Two listeners on one socket address is an error; UDP and TCP may share a port."""
        kind = "udp" if transport.upper() == "UDP" else "tcp"
        here = (*t.path, *key)
        ip = ipaddress.ip_address(host)
        wildcard = "0.0.0.0" if ip.version == 4 else "::"
        for other_host in {host, wildcard} if host != wildcard else set():
            taken = self.listeners.get((kind, other_host, port))
            if taken is not None:
                t.problem(key, f"{show(text)} uses the same {kind.upper()} address as "
                          f"{format_key(taken)}; give each listener its own port", text)
                return
        if host == wildcard:
            for (k, h, p), taken in self.listeners.items():
                if k == kind and p == port and ipaddress.ip_address(h).version == ip.version:
                    t.problem(key, f"{show(text)} overlaps {format_key(taken)} (a wildcard "
                              "address takes the port on every address)", text)
                    return
        self.listeners[(kind, host, port)] = here

    def advertised(self, t: Table) -> str | None:
        text = t.string("advertised_host", "a host name or IP literal")
        if text is not None and not _advertised_ok(text):
            t.problem("advertised_host", f"{show(text)} is not a host name or IP literal; "
                      "expected e.g. \"pcscf.ims.mnc001.mcc001.3gppnetwork.org\"", text)
            return None
        return text

    def pcscf(self, t: Table) -> PcscfConfig | None:
        mark = self.mark()
        listen = self.listen(t, ("udp", "tcp"))
        keepalive = t.number("keepalive", "seconds, 5 to 3600 (RFC 5626 Flow-Timer)",
                             30.0, 5.0, 3600.0)
        advertised = self.advertised(t)
        t.finish()
        if self.failed_since(mark) or listen is None or keepalive is None:
            return None
        return PcscfConfig(listen, keepalive, advertised)

    def scscf(self, t: Table, identity: OperatorIdentity | None) -> ScscfConfig | None:
        mark = self.mark()
        listen = self.listen(t, ("udp", "tcp"))
        realm = t.string("realm", "the digest realm, a domain name")
        if realm is not None and not is_domain(realm):
            t.problem("realm", f"{show(realm)} is not a domain name; the realm is usually the "
                      "home domain (RFC 3261 section 22.1)", realm)
            realm = None
        elif realm is None and not t.present("realm") and identity is not None:
            realm = identity.home_domain
        nonce_lifetime = t.number("nonce_lifetime", "seconds, 1 to 86400", 300.0, 1.0, 86400.0)
        expires_what = f"whole seconds, 1 to {_MAX_DELTA_SECONDS}"
        min_expires = t.number("min_expires", expires_what, 60, 1, _MAX_DELTA_SECONDS, True)
        max_expires = t.number("max_expires", expires_what, 7200, 1, _MAX_DELTA_SECONDS, True)
        default_expires = t.number("default_expires", expires_what, 3600, 1,
                                   _MAX_DELTA_SECONDS, True)
        if None not in (min_expires, max_expires, default_expires):
            assert min_expires is not None and max_expires is not None
            assert default_expires is not None
            if not min_expires <= default_expires <= max_expires:
                t.problem("default_expires", f"must lie between min_expires ({min_expires:.0f}) "
                          f"and max_expires ({max_expires:.0f}); now {default_expires:.0f} "
                          "(RFC 3261 section 10.3 step 7)")
                default_expires = None
        algorithms = self.algorithms(t)
        advertised = self.advertised(t)
        t.finish()
        if (self.failed_since(mark) or listen is None or realm is None
                or nonce_lifetime is None or min_expires is None or max_expires is None
                or default_expires is None or algorithms is None):
            return None
        return ScscfConfig(listen, realm, nonce_lifetime, int(min_expires), int(max_expires),
                           int(default_expires), algorithms, advertised)

    def algorithms(self, t: Table) -> tuple[DigestAlgorithm, ...] | None:
        allowed = {"sha-256": DigestAlgorithm.SHA_256, "md5": DigestAlgorithm.MD5}
        what = "\"SHA-256\" and/or \"MD5\""
        if not t.present("algorithms"):
            t.raw("algorithms")
            return (DigestAlgorithm.SHA_256, DigestAlgorithm.MD5)
        names = t.strings("algorithms", what)
        if names is None:
            return None
        out: list[DigestAlgorithm] = []
        for i, name in enumerate(names):
            algorithm = allowed.get(name.lower())
            if algorithm is None:
                t.problem(("algorithms", i), f"{show(name)} is not offered; expected {what} "
                          "(RFC 8760: SHA-256 first, MD5 for older UAs)", name)
            elif algorithm in out:
                t.problem(("algorithms", i), f"{show(name)} is listed twice", name)
            else:
                out.append(algorithm)
        if not names:
            t.problem("algorithms", f"is empty; expected at least one of {what}")
        if not out or len(out) != len(names):
            return None
        return tuple(out)

    def border(self, t: Table, identity: OperatorIdentity | None,
               dns: DnsConfig | None) -> BorderConfig | None:
        mark = self.mark()
        listen = self.listen(t, ("udp", "tcp", "tls"))
        certificate = self.path(t, "tls_certificate", "a PEM certificate file", must_exist=True)
        private_key = self.path(t, "tls_private_key", "a PEM private key file", must_exist=True)
        ok = True
        if listen and any(a.transport == "TLS" for a in listen) and (
                certificate is None or private_key is None):
            t.problem("listen", "has a tls: listener but tls_certificate and tls_private_key "
                      "are not both set; add them or drop the tls: listener")
            ok = False
        elif (certificate is None) != (private_key is None):
            t.problem("tls_certificate" if certificate is None else "tls_private_key",
                      "missing; tls_certificate and tls_private_key go together")
            ok = False
        peers = self.peers(t, identity, dns)
        advertised = self.advertised(t)
        t.finish()
        if not ok or self.failed_since(mark) or listen is None or peers is None:
            return None
        return BorderConfig(listen, peers, certificate, private_key, advertised)

    def peers(self, t: Table, identity: OperatorIdentity | None,
              dns: DnsConfig | None) -> tuple[PeerConfig, ...] | None:
        value = t.raw("peers")
        if value is MISSING:
            return ()
        if not isinstance(value, list) or not all(isinstance(p, dict) for p in value):
            t.problem("peers", "is not an array of tables; write each peer as [[border.peers]]")
            return None
        out: list[PeerConfig] = []
        seen: dict[tuple[str, str], int] = {}
        ok = True
        for i, entry in enumerate(value):
            peer = self.peer(Table(entry, (*t.path, "peers", i), self.problems), identity, dns)
            # Duplicates are checked on what was written, so they show even next to other
            # problems of the same peer; the domain (often derived) only on valid peers.
            written = [(w, entry.get(w)) for w in ("name", "plmn", "domain")]
            if peer is not None:
                written[2] = ("domain", peer.domain)
            else:
                ok = False
            for what, key in written:
                if not isinstance(key, str):
                    continue
                first = seen.setdefault((what, key.lower()), i)
                if first != i:
                    t.problem(("peers", i, what), f"{show(key)} is also the {what} of "
                              f"border.peers[{first}]; each peer appears once", key)
                    ok = False
            if peer is not None:
                out.append(peer)
        return tuple(out) if ok else None

    def peer(self, t: Table, identity: OperatorIdentity | None,
             dns: DnsConfig | None) -> PeerConfig | None:
        mark = self.mark()
        name = t.string("name", "the peer operator's name, e.g. \"Beta\"", required=True)
        lengths = self.mnc_lengths
        plmn_text = t.string("plmn", "the peer's PLMN as \"MCC-MNC\"", required=True)
        plmn = self.plmn(t, "plmn", plmn_text, lengths)
        if plmn is not None and plmn.mcc not in lengths and identity is not None:
            t.problem("plmn", f"MCC {plmn.mcc} has no configured MNC length; add "
                      f"\"{plmn.mcc}\" = {len(plmn.mnc)} to [dns.mnc_lengths] (TS 23.003: "
                      "the length is never guessed)", plmn_text)
            plmn = None
        if plmn is not None and identity is not None and plmn == identity.plmn:
            t.problem("plmn", f"{show(plmn_text)} is this operator's own PLMN; a peer is "
                      "another operator", plmn_text)
            plmn = None
        domain_text = t.string("domain", "the peer's home domain")
        domain: str | None = None
        if domain_text is not None:
            if is_domain(domain_text.rstrip(".")):
                domain = domain_text.rstrip(".").lower()
            else:
                t.problem("domain", f"{show(domain_text)} is not a domain name", domain_text)
        elif plmn is not None and not t.present("domain"):
            domain = plmn.home_domain
        if domain is not None and identity is not None and domain == identity.home_domain:
            t.problem("domain", f"{show(domain)} is this operator's own home domain", domain)
            domain = None
        admit = self.networks(t)
        fingerprint = t.string("tls_fingerprint", "\"SHA-256 XX:XX:...\" (32 hex pairs)")
        if fingerprint is not None:
            if _FINGERPRINT_RE.fullmatch(fingerprint):
                fingerprint = "SHA-256 " + fingerprint[8:].upper()
            else:
                t.problem("tls_fingerprint", f"{show(fingerprint)} is not a certificate "
                          "fingerprint; expected \"SHA-256 \" and 32 colon-separated hex "
                          "pairs (RFC 8122 section 5)", fingerprint)
                fingerprint = None
        ca = self.path(t, "tls_ca", "a PEM CA certificate file", must_exist=True)
        t.finish()
        if self.failed_since(mark) or name is None or plmn is None or domain is None \
                or admit is None:
            return None
        return PeerConfig(name, plmn, domain, admit, fingerprint, ca)

    def networks(self, t: Table) -> tuple[IpNetwork, ...] | None:
        what = "CIDR prefixes such as \"127.0.2.0/24\" or \"::1/128\""
        items = t.strings("admit_from", what, required=True)
        if items is None:
            return None
        if not items and not t.data.get("admit_from"):
            t.problem("admit_from", f"is empty; expected {what} (the peer's source addresses)")
            return None
        out: list[IpNetwork] = []
        for i, text in enumerate(items):
            try:
                out.append(ipaddress.ip_network(text, strict=True))
            except ValueError:
                try:
                    loose = ipaddress.ip_network(text, strict=False)
                except ValueError:
                    t.problem(("admit_from", i), f"{show(text)} is not a CIDR prefix; "
                              f"expected {what}", text)
                else:
                    t.problem(("admit_from", i), f"{show(text)} has host bits set; did you "
                              f"mean \"{loose}\"?", text)
        return tuple(out) if len(out) == len(items) else None

    # ---- [metrics], [trace], [log] ----------------------------------------------------------

    def metrics(self, t: Table) -> MetricsConfig | None:
        text = t.string("listen", _HOST_PORT_WHAT, required=True)
        t.finish()
        if text is None:
            return None
        hostport = host_port(text)
        if hostport is None:
            t.problem("listen", f"{show(text)} is not a valid listen address; expected "
                      f"{_HOST_PORT_WHAT}", text)
            return None
        self.claim(t, ("listen",), "TCP", hostport.host, hostport.port, text)
        return MetricsConfig(hostport)

    def trace(self, t: Table) -> TraceConfig | None:
        mark = self.mark()
        if not t.present("path"):
            t.required("path", "a file path for the JSON-lines ladder log")
        path = self.path(t, "path", "a file path for the JSON-lines ladder log")
        written = t.data.get("path")
        # The trace file is created when missing, its directory is not (ims.trace).
        if path is not None and path.is_dir():
            t.problem("path", f"{show(written)} is a directory ({path}); give a file path in "
                      "it, e.g. \"alpha-trace.jsonl\"", written)
        elif path is not None and not path.parent.is_dir():
            t.problem("path", f"{show(written)}: the directory {path.parent} does not exist; "
                      "create it or give a path in an existing one", written)
        t.finish()
        return None if path is None or self.failed_since(mark) else TraceConfig(path)

    def permission(self, t: Table) -> PermissionConfig | None:
        # Section 5.5: the operator waits at most 30 seconds for an answer.
        deadline = t.number("deadline", "whole seconds, 1 to 30", 10, 1, 30, True)
        t.finish()
        return None if deadline is None else PermissionConfig(int(deadline))

    def gateway(self, t: Table, pcscf: PcscfConfig | None) -> GatewayConfig | None:
        modes = ", ".join(m.value for m in GatewayMode)
        mark = self.mark()
        mode_text = t.string("mode", f"one of {modes}", default=GatewayMode.RELAY.value)
        mode = None
        if mode_text is not None:
            try:
                mode = GatewayMode(mode_text.lower())
            except ValueError:
                t.problem("mode", f"{show(mode_text)} is not a gateway mode; expected one of "
                          f"{modes}", mode_text)
        what = "the relay's IP address, e.g. \"127.0.0.1\" or \"::1\""
        text = t.string("relay_address", what)
        address: str | None = None
        if text is not None:
            address = ip_literal(text) or ip_literal(f"[{text}]")
            if address is None:
                t.problem("relay_address", f"{show(text)} is not an IP address; expected "
                          f"{what}", text)
        elif mode is not None and mode is not GatewayMode.OFF and not t.present("relay_address"):
            if pcscf is not None:
                address = pcscf.listen[0].host  # where the UEs already reach us
            else:
                t.required("relay_address", f"{what} (no [pcscf] here to default to)")
        # A session shorter than RFC 4028's Min-SE (90 s) is allowed: tests and demos.
        lifetime = t.number("lifetime", "whole seconds, 1 to 86400", 1800, 1, 86400, True)
        pcp_server = self.pcp_server(t, mode)
        pcp_lifetime = t.number("pcp_lifetime", "whole seconds, 1 to 86400", 120, 1, 86400,
                                True)
        pcp_timeout = t.number("pcp_timeout", "seconds, 0.05 to 60", 3.0, 0.05, 60.0)
        if mode is not None and mode is not GatewayMode.PCP:
            for key in ("pcp_lifetime", "pcp_timeout"):
                if t.present(key):
                    t.problem(key, f"applies to mode \"pcp\" only (mode is {mode.value}); "
                              "remove it or set mode = \"pcp\"")
        offload = self.relay_offload(t, mode, address)
        t.finish()
        if mode is None or lifetime is None or pcp_lifetime is None or pcp_timeout is None \
                or offload is None or self.failed_since(mark):
            return None
        return GatewayConfig(mode, address, int(lifetime), pcp_server, int(pcp_lifetime),
                             float(pcp_timeout), offload)

    def relay_offload(self, t: Table, mode: GatewayMode | None,
                      address: str | None) -> RelayOffload | None:
        what = ('"none" (the userspace relay forwards every datagram) or "nft" (the kernel '
                "forwards, through nftables rules, once both peers are known)")
        text = t.string("relay_offload", what, default=RelayOffload.NONE.value)
        if text is None:
            return None
        try:
            offload = RelayOffload(text.lower())
        except ValueError:
            t.problem("relay_offload", f"{show(text)} is not a relay offload; expected {what}",
                      text)
            return None
        if offload is RelayOffload.NONE:
            return offload
        if mode is GatewayMode.OFF:
            t.problem("relay_offload", 'applies to modes "relay" and "pcp" (mode is off: '
                      'nothing is relayed); remove it or set mode = "relay"', text)
            return None
        if address is not None and ipaddress.ip_address(address).is_loopback:
            t.problem("relay_offload", f'"nft" makes the kernel forward between other hosts '
                      f"through this one, but relay_address {address} is loopback, where "
                      'datagrams are delivered locally, never forwarded; use relay_offload = '
                      '"none" (the embedded default) or a relay_address on a network interface',
                      text)
            return None
        return offload

    def pcp_server(self, t: Table, mode: GatewayMode | None) -> HostPort | None:
        what = ("the CGN's PCP server, an IP address with an optional port, e.g. "
                "\"198.51.100.1\" or \"198.51.100.1:5351\" or \"[2001:db8::1]:5351\"")
        text = t.string("pcp_server", what)
        if text is None:
            if mode is GatewayMode.PCP and not t.present("pcp_server"):
                t.required("pcp_server", f"{what} (mode \"pcp\" asks it for mappings)")
            return None
        if mode is not None and mode is not GatewayMode.PCP:
            t.problem("pcp_server", f"applies to mode \"pcp\" only (mode is {mode.value}); "
                      "remove it or set mode = \"pcp\"", text)
            return None
        hostport = host_port(text)
        if hostport is None:
            address = ip_literal(text) or ip_literal(f"[{text}]")
            hostport = HostPort(address, PCP_SERVER_PORT) if address is not None else None
        if hostport is None:
            t.problem("pcp_server", f"{show(text)} is not an IP address with an optional port; "
                      f"expected {what}", text)
            return None
        try:
            unspecified = ipaddress.ip_address(hostport.host).is_unspecified
        except ValueError:
            unspecified = True
        if unspecified:
            t.problem("pcp_server", f"{show(text)} is the unspecified address; expected {what}",
                      text)
            return None
        return hostport

    def log(self, t: Table) -> LogConfig | None:
        level = t.string("level", "one of debug, info, warning, error", default="info")
        t.finish()
        if level is None:
            return None
        if level.upper() not in _LOG_LEVELS:
            t.problem("level", f"{show(level)} is not a log level; expected one of debug, "
                      "info, warning, error", level)
            return None
        return LogConfig(level.upper())


def iter_listeners(config: OperatorConfig) -> Iterator[tuple[Role, Address]]:
    """Every SIP listener of the enabled roles, with its role."""
    for role, section in ((Role.PCSCF, config.pcscf), (Role.SCSCF, config.scscf),
                          (Role.BORDER, config.border)):
        if section is not None:
            for address in section.listen:
                yield role, address
