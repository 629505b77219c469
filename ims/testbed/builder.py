"""Applies a `Plan` with `ip`, `nft`, `sysctl` and `tc`, and removes it again.

Every step is idempotent (create only what is missing, `replace` for addresses and routes,
nft tables redefined whole), so `up` on a testbed that is up with the same options is a no-op
and `up` after an interrupted `up` completes it. Commands are batched per namespace
(`ip -n NS -batch -`, one `nft -f -` per CGN). All commands address our namespaces explicitly
(`ip -n`, `ip netns exec`); none runs in the host's namespace except `ip netns add/del/list`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ims.testbed.errors import (
    AlreadyUp,
    CommandFailed,
    NamespaceTaken,
    NetemUnavailable,
    NotPermitted,
    ToolMissing,
)
from ims.testbed.state import DEFAULT_STATE_DIR, StateFile, TestbedState
from ims.testbed.topology import PREFIX, Plan, Sysctl, build_plan

# runner(argv, stdin text or None) -> stdout; raises CommandFailed / ToolMissing.
Runner = Callable[[Sequence[str], str | None], str]

COMMAND_TIMEOUT = 20.0
_PACKAGES = {"ip": "iproute2", "nft": "nftables", "sysctl": "procps", "tc": "iproute2"}


def run_command(argv: Sequence[str], stdin: str | None = None) -> str:
    """Run one command, bounded in time; its stdout, or CommandFailed quoting its stderr."""
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT, check=False)
    except FileNotFoundError:
        raise ToolMissing(argv[0], _PACKAGES.get(argv[0], argv[0])) from None
    except subprocess.TimeoutExpired:
        raise CommandFailed(argv, -1, f"no answer within {COMMAND_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise CommandFailed(argv, done.returncode, done.stderr)
    return done.stdout


def check_host(plan: Plan) -> None:
    """Root and the tools `plan` needs, before anything is touched."""
    if os.geteuid() != 0:
        raise NotPermitted(
            "the testbed creates network namespaces, nftables rules and sysctls, which needs "
            "root: run it as root, e.g. `sudo python3 -m ims testbed ...` from the project "
            "directory (or `sudo ueconnect testbed ...`)")
    tools = ["ip", "nft", "sysctl"] + (["tc"] if plan.delays else [])
    for tool in tools:
        if shutil.which(tool) is None:
            raise ToolMissing(tool, _PACKAGES[tool])


@dataclass(frozen=True)
class NamespaceStatus:
    name: str
    purpose: str
    present: bool
    addresses: tuple[str, ...]  # `ip -br addr` lines as the kernel reports them


@dataclass(frozen=True)
class TestbedStatus:
    """`state` None: no testbed recorded. `strays`: `uec-` namespaces nobody recorded."""

    __test__ = False

    state: TestbedState | None
    namespaces: tuple[NamespaceStatus, ...]
    strays: tuple[str, ...]

    @property
    def up(self) -> bool:
        return (self.state is not None and self.state.complete
                and all(ns.present for ns in self.namespaces))


@dataclass(frozen=True)
class DownResult:
    removed: tuple[str, ...]
    warnings: tuple[str, ...]


class TestbedBuilder:
    """Builds, inspects and removes the testbed recorded in `state_dir`."""

    __test__ = False

    def __init__(self, state_dir: os.PathLike[str] | str = DEFAULT_STATE_DIR,
                 runner: Runner = run_command,
                 log: Callable[[str], None] | None = None) -> None:
        self.state_file = StateFile(Path(state_dir))
        self._runner = runner
        self._log = log

    # -- commands ------------------------------------------------------------------------------

    def _run(self, argv: Sequence[str], stdin: str | None = None) -> str:
        if self._log:
            self._log(" ".join(argv) + (f" <<\n{stdin.rstrip()}" if stdin else ""))
        return self._runner(argv, stdin)

    def namespaces(self) -> frozenset[str]:
        """The names `ip netns list` knows (all of them, ours or not)."""
        out = self._run(["ip", "-j", "netns", "list"]).strip()
        return frozenset(item["name"] for item in json.loads(out)) if out else frozenset()

    def _links(self, netns: str) -> frozenset[str]:
        out = self._run(["ip", "-n", netns, "-j", "link", "show"]).strip()
        return frozenset(item["ifname"] for item in json.loads(out)) if out else frozenset()

    # -- up ------------------------------------------------------------------------------------

    def up(self, plan: Plan) -> TestbedState:
        """Build `plan`; a no-op when it is up already. Raises, keeping the state, on failure."""
        state = self.state_file.load()
        existing = self.namespaces()
        wanted = tuple(ns.name for ns in plan.namespaces)
        if state is not None:
            if state.options != plan.options:
                raise AlreadyUp(
                    f"a testbed is up with {_describe(state)} (state {self.state_file.path}); "
                    "run `ueconnect testbed down` first")
            if state.complete and all(name in existing for name in wanted):
                return state
        else:
            taken = sorted(name for name in wanted if name in existing)
            if taken:
                raise NamespaceTaken(
                    f"namespaces {', '.join(taken)} exist but no testbed is recorded in "
                    f"{self.state_file.path}: remove them with `ip netns del NAME` (or give "
                    "the --state-dir they were made with)")
            state = TestbedState(plan.options)
        state = replace(state, complete=False, warnings=())
        self.state_file.save(state)

        for ns in plan.namespaces:
            if ns.name not in existing:
                state = state.with_namespace(ns.name)
                self.state_file.save(state)  # write-ahead: recorded before it exists
                self._run(["ip", "netns", "add", ns.name])
            else:
                state = state.with_namespace(ns.name)
        self.state_file.save(state)

        self._add_links(plan)
        for ns in plan.namespaces:
            self._run(["ip", "-n", ns.name, "-batch", "-"], _ip_batch(plan, ns.name,
                                                                     self._links(ns.name)))
        warnings = list(self._sysctls(plan, optional=False))
        for ruleset in plan.rulesets:
            self._run(["ip", "netns", "exec", ruleset.netns, "nft", "-f", "-"], ruleset.text)
        warnings += self._sysctls(plan, optional=True)
        for delay in plan.delays:
            try:
                self._run(["ip", "netns", "exec", delay.netns, "tc", "qdisc", "replace", "dev",
                           delay.dev, "root", "netem", "delay", f"{delay.ms}ms"])
            except CommandFailed as exc:
                if "qdisc kind is unknown" in exc.stderr:
                    raise NetemUnavailable(exc.stderr) from None
                raise
        state = replace(state, complete=True, warnings=tuple(warnings))
        self.state_file.save(state)
        return state

    def _add_links(self, plan: Plan) -> None:
        """veth pairs, created in one namespace with the peer end moved into the other."""
        links = {ns.name: self._links(ns.name) for ns in plan.namespaces}
        by_netns: dict[str, list[str]] = {}
        for link in plan.links:
            if link.dev in links[link.netns]:
                continue
            if link.peer_dev in links[link.peer_netns]:
                # Half a pair cannot exist (a veth dies with its peer); a same-named device
                # that is no veth of ours is someone else's, so say so rather than guess.
                raise CommandFailed(["ip", "-n", link.peer_netns, "link", "show", link.peer_dev],
                                    1, f"{link.peer_dev} exists in {link.peer_netns} without its "
                                       f"peer {link.dev} in {link.netns}; run `ueconnect "
                                       "testbed down` and up again")
            by_netns.setdefault(link.netns, []).append(
                f"link add {link.dev} type veth peer name {link.peer_dev} "
                f"netns {link.peer_netns}\n")
        for netns, lines in by_netns.items():
            self._run(["ip", "-n", netns, "-batch", "-"], "".join(lines))

    def _sysctls(self, plan: Plan, *, optional: bool) -> list[str]:
        warnings: list[str] = []
        by_netns: dict[str, list[Sysctl]] = {}
        for s in plan.sysctls:
            if s.optional == optional:
                by_netns.setdefault(s.netns, []).append(s)
        for netns, sysctls in by_netns.items():
            settings = [f"{s.key}={s.value}" for s in sysctls]
            if not optional:
                self._run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", *settings])
                continue
            for s, setting in zip(sysctls, settings, strict=True):  # each may be missing alone
                try:
                    self._run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", setting])
                except CommandFailed as exc:
                    if s.absent_ok and "No such file" in exc.stderr:
                        continue  # the kernel lacks the feature the key would configure
                    warnings.append(f"{netns}: {setting} not set ({exc.stderr.strip()}); the "
                                    "kernel default applies")
        return warnings

    # -- down ----------------------------------------------------------------------------------

    def down(self) -> DownResult:
        """Delete every namespace the state records (and with them all they hold)."""
        state = self.state_file.load()
        if state is None:
            return DownResult((), ())
        existing = self.namespaces()
        removed: list[str] = []
        warnings: list[str] = []
        for name in reversed(state.namespaces):
            if name not in existing:
                continue
            pids = self._run(["ip", "netns", "pids", name]).split()
            if pids:
                # Not ours to kill; they keep the namespace's devices alive until they exit.
                warnings.append(f"{name}: processes {', '.join(pids)} still run in it; the "
                                "namespace is gone from `ip netns list` but lives until they "
                                "exit")
            self._run(["ip", "netns", "del", name])
            removed.append(name)
            left = tuple(n for n in state.namespaces if n != name)
            state = replace(state, namespaces=left, complete=False)
            self.state_file.save(state)
        self.state_file.clear()
        return DownResult(tuple(removed), tuple(warnings))

    # -- status --------------------------------------------------------------------------------

    def status(self) -> TestbedStatus:
        state = self.state_file.load()
        existing = self.namespaces()
        rows: list[NamespaceStatus] = []
        if state is not None:
            plan = build_plan(state.options)
            purposes = {ns.name: ns.purpose for ns in plan.namespaces}
            for name in state.namespaces:
                present = name in existing
                brief = (self._run(["ip", "-n", name, "-br", "addr", "show"]).splitlines()
                         if present else [])
                rows.append(NamespaceStatus(name, purposes.get(name, ""), present,
                                            tuple(line.strip() for line in brief
                                                  if not line.startswith("lo "))))
        recorded = set(state.namespaces) if state else set()
        strays = tuple(sorted(n for n in existing if n.startswith(PREFIX) and n not in recorded))
        return TestbedStatus(state, tuple(rows), strays)


def _ip_batch(plan: Plan, netns: str, links: frozenset[str]) -> str:
    """One namespace's devices, addresses and routes as an `ip -batch` script."""
    lines = ["link set lo up"]
    for bridge in plan.bridges:
        if bridge.netns != netns:
            continue
        if bridge.name not in links:
            lines.append(f"link add {bridge.name} type bridge")
        lines += [f"link set {port} master {bridge.name}" for port in bridge.ports]
    for address in plan.addresses_of(netns):
        # No duplicate address detection: the plan is the only allocator on these links.
        nodad = " nodad" if ":" in address.cidr else ""
        lines.append(f"addr replace {address.cidr} dev {address.dev}{nodad}")
    lines += [f"link set {dev} up" for dev in plan.devices(netns)]
    lines += [f"route replace {r.destination} via {r.via}" for r in plan.routes
              if r.netns == netns]
    return "".join(line + "\n" for line in lines)


def _describe(state: TestbedState) -> str:
    delay = state.options.netem_delay_ms
    return (f"--nat {state.options.nat.value}"
            + (f" --netem-delay {delay}" if delay is not None else "")
            + f" (namespaces {state.options.prefix}*)")
