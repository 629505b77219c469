"""The network-namespace testbed: the plan as data, then real namespaces and real NAT.

The root tests build whole testbeds under their own prefix (`uec-t<pid>-`, ...) and state
directory, so they never meet a testbed someone has up, and remove them in teardown even after
a failure. NAT properties are proven with RFC 4787 terms: a UE socket sends to the Alpha core
and the Beta core, each running a UDP echo that answers with the source it saw.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from ims.cli import testbed as testbed_cli
from ims.testbed.builder import TestbedBuilder, run_command
from ims.testbed.errors import (
    AlreadyUp,
    CommandFailed,
    NetemUnavailable,
    StateUnreadable,
    TestbedUsageError,
)
from ims.testbed.requirements import missing_for_world
from ims.testbed.state import StateFile, TestbedState
from ims.testbed.topology import NatBehaviour, Plan, TestbedOptions, build_plan, render_nat

ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(float(sys.argv[3]))
print("ready", flush=True)
try:
    while True:
        data, addr = s.recvfrom(2048)
        s.sendto(f"{addr[0]}:{addr[1]}".encode(), addr)
except socket.timeout:
    pass
"""
# Bind, ask each echo what source it saw, then report one unsolicited datagram (or nothing).
PROBE = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(2.0)
for dst in sys.argv[4:]:
    host, port = dst.rsplit(":", 1)
    s.sendto(b"probe", (host, int(port)))
    try:
        print(s.recvfrom(2048)[0].decode(), flush=True)
    except socket.timeout:
        print("nothing", flush=True)
print("listening", flush=True)
s.settimeout(float(sys.argv[3]))
try:
    data, addr = s.recvfrom(2048)
    print(f"{addr[0]}:{addr[1]}", flush=True)
except socket.timeout:
    print("nothing", flush=True)
"""
SEND = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
s.sendto(b"unsolicited", (sys.argv[2], int(sys.argv[3])))
"""
RECV_ONE = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(float(sys.argv[3]))
print("ready", flush=True)
try:
    print("%s:%d" % s.recvfrom(2048)[1], flush=True)
except socket.timeout:
    print("nothing", flush=True)
"""
ALPHA_CORE, BETA_CORE, ECHO_PORT = "192.0.2.10", "192.0.2.20", 7000
ALPHA_PUBLIC, BETA_PUBLIC, UE = "198.51.100.1", "203.0.113.1", "100.64.0.2"


# -- the plan as data (no root) ----------------------------------------------------------------


def test_plan_namespaces_are_prefixed_and_interface_names_fit_ifnamsiz() -> None:
    plan = build_plan(TestbedOptions(prefix="uec-t1-"))
    names = [ns.name for ns in plan.namespaces]
    assert len(names) == len(set(names)) == 8
    assert all(n.startswith("uec-t1-") for n in names)
    touched = {a.netns for a in plan.addresses} | {r.netns for r in plan.routes}
    touched |= {s.netns for s in plan.sysctls} | {r.netns for r in plan.rulesets}
    assert touched <= set(names)  # nothing addressed outside our namespaces
    for ns in names:
        assert all(len(dev) <= 15 for dev in plan.devices(ns))  # IFNAMSIZ - 1


def test_plan_takes_core_and_dns_addresses_from_the_testbed_world() -> None:
    plan = build_plan(TestbedOptions())
    alpha = {a.cidr for a in plan.addresses_of(plan.namespace("alpha-core"))}
    beta = {a.cidr for a in plan.addresses_of(plan.namespace("beta-core"))}
    assert {f"192.0.2.{n}/24" for n in range(10, 15)} <= alpha
    assert {f"192.0.2.{n}/24" for n in range(20, 25)} <= beta
    assert "2001:db8:0:2::10/64" in alpha
    assert {a.cidr for a in plan.addresses_of(plan.namespace("dns"))} == {
        "192.0.2.53/24", "2001:db8:0:2::53/64"}
    # Both UEs hold the same shared address (RFC 6598), each behind its own CGN.
    for op in ("alpha", "beta"):
        assert [a.cidr for a in plan.addresses_of(plan.namespace(f"{op}-ue"))] == ["100.64.0.2/10"]
    assert plan.delays == ()


def test_rfc4787_mapping_behaviour_is_chosen_by_the_nat_rule() -> None:
    symmetric = render_nat(NatBehaviour.SYMMETRIC, ALPHA_PUBLIC)
    eim = render_nat(NatBehaviour.EIM, ALPHA_PUBLIC)
    assert "masquerade random,fully-random" in symmetric
    # EIM: no port range (a source port outside it is re-drawn per flow) and no random flag.
    assert f"snat ip to {ALPHA_PUBLIC} persistent" in eim
    assert "random" not in eim and "-" not in eim.split("snat ip to", 1)[1].split("\n")[0]
    for text in (symmetric, eim):  # filtering: only replies and PCP-DNATed flows get in
        assert 'iifname "out0" drop' in text


@pytest.mark.parametrize("kwargs", [{"prefix": "ue-"}, {"prefix": "uec-x"},
                                    {"prefix": "uec-Bad-"}, {"netem_delay_ms": 0},
                                    {"udp_timeout": 0}])
def test_options_refuse_what_cannot_be_built(kwargs: dict[str, object]) -> None:
    with pytest.raises(TestbedUsageError):
        TestbedOptions(**kwargs)  # type: ignore[arg-type]


def test_state_round_trips_and_refuses_names_outside_the_prefix(tmp_path: Path) -> None:
    store = StateFile(tmp_path)
    assert store.load() is None
    state = TestbedState(TestbedOptions(nat=NatBehaviour.EIM, netem_delay_ms=5),
                         ("uec-ix",), complete=True, warnings=("w",))
    store.save(state)
    assert store.load() == state
    data = json.loads(store.path.read_text())
    data["namespaces"].append("host-netns")
    store.path.write_text(json.dumps(data))
    with pytest.raises(StateUnreadable, match="does not start with 'uec-'"):
        store.load()
    store.path.write_text("{")
    with pytest.raises(StateUnreadable, match="ip netns del"):
        store.load()


def _cli(*args: str) -> int:
    parser = argparse.ArgumentParser()
    testbed_cli.register(parser.add_subparsers())
    ns = parser.parse_args(["testbed", *args])
    return int(ns.func(ns))


# Without root: up and down "cannot run here" (2, as `demo --testbed`); status is "unknown"
# (4, an LSB init script's status action), not 1, which is PARTIAL.
@pytest.mark.parametrize(("action", "code"), [("up", 2), ("down", 2),
                                              ("status", testbed_cli.STATUS_UNKNOWN)])
def test_cli_without_root_names_the_fix(action: str, code: int,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert _cli(action, "--state-dir", str(tmp_path)) == code
    err = capsys.readouterr().err
    assert "needs root" in err and "sudo" in err
    assert not list(tmp_path.iterdir())  # refused before writing anything


# -- real namespaces (root) --------------------------------------------------------------------


def _skip_reason() -> str | None:
    return missing_for_world(tools=(("ip", "iproute2"), ("nft", "nftables"),
                                    ("sysctl", "procps")))


def _netns_list() -> set[str]:
    out = run_command(["ip", "-j", "netns", "list"]).strip()
    return {item["name"] for item in json.loads(out)} if out else set()


def _host_view() -> tuple[str, str, str]:
    """The host's own links, routes and ruleset: the testbed must leave them as they were."""
    return (run_command(["ip", "-br", "link"]), run_command(["ip", "route"]),
            run_command(["nft", "list", "ruleset"]))


def _popen(ns: str, script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", script, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _readline(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line:
        proc.wait(timeout=10)
        raise AssertionError(proc.stderr.read() if proc.stderr else "no output")
    return line


def _nat_probe(plan: Plan, ue_port: int, unsolicited_from: tuple[str, str] | None = None
               ) -> tuple[list[str], str]:
    """From Alpha's UE: the sources the Alpha and Beta core echoes saw, then what (if anything)
    reached the UE socket when `unsolicited_from` = (netns, address) sent to its mapping."""
    echoes = [_popen(plan.namespace("alpha-core"), ECHO, ALPHA_CORE, str(ECHO_PORT), "4"),
              _popen(plan.namespace("beta-core"), ECHO, BETA_CORE, str(ECHO_PORT), "4")]
    try:
        for echo in echoes:
            assert _readline(echo) == "ready"
        probe = _popen(plan.namespace("alpha-ue"), PROBE, UE, str(ue_port), "0.8",
                       f"{ALPHA_CORE}:{ECHO_PORT}", f"{BETA_CORE}:{ECHO_PORT}")
        try:
            seen = [_readline(probe), _readline(probe)]
            assert _readline(probe) == "listening"
            if unsolicited_from is not None:
                netns, source = unsolicited_from
                port = seen[0].rsplit(":", 1)[1]
                run_command(["ip", "netns", "exec", netns, sys.executable, "-c", SEND, source,
                             ALPHA_PUBLIC, port])
            late = _readline(probe)
        finally:
            probe.wait(timeout=10)
    finally:
        for echo in echoes:
            echo.kill()
            echo.wait(timeout=10)
    return seen, late


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def _teardown(builder: TestbedBuilder, prefix: str) -> None:
    try:
        builder.down()
    finally:
        for name in _netns_list():
            if name.startswith(prefix):
                subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


@pytest.fixture(scope="module")
def symmetric(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestbedBuilder, Plan]]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    prefix = f"uec-t{os.getpid() % 100000}-"
    builder = TestbedBuilder(tmp_path_factory.mktemp("symmetric"))
    plan = build_plan(TestbedOptions(prefix=prefix))
    try:
        try:
            builder.up(plan)
        except CommandFailed as exc:
            if "netns add" in " ".join(exc.argv):
                pytest.skip(f"cannot create network namespaces here: {exc}")
            raise
        yield builder, plan
    finally:
        _teardown(builder, prefix)


@pytest.mark.root
def test_up_builds_the_topology_and_status_lists_it(
        symmetric: tuple[TestbedBuilder, Plan]) -> None:
    builder, plan = symmetric
    status = builder.status()
    assert status.up
    assert [ns.name for ns in status.namespaces] == [ns.name for ns in plan.namespaces]
    by_name = {ns.name: " ".join(ns.addresses) for ns in status.namespaces}
    for op in ("alpha", "beta"):
        assert "100.64.0.2/10" in by_name[plan.namespace(f"{op}-ue")]
    assert "192.0.2.53/24" in by_name[plan.namespace("dns")]
    assert "2001:db8:0:2::24/64" in by_name[plan.namespace("beta-core")]
    assert status.state is not None and status.state.warnings == ()  # conntrack timeouts set
    out = run_command(["ip", "netns", "exec", plan.namespace("alpha-cgn"), "sysctl", "-n",
                       "net.netfilter.nf_conntrack_udp_timeout_stream"])
    assert out.strip() == "60"


@pytest.mark.root
def test_rfc4787_symmetric_nat_maps_each_destination_to_its_own_port(
        symmetric: tuple[TestbedBuilder, Plan]) -> None:
    (alpha_seen, beta_seen), _ = _nat_probe(symmetric[1], 40000)
    assert alpha_seen.startswith(ALPHA_PUBLIC + ":") and beta_seen.startswith(ALPHA_PUBLIC + ":")
    # Address and port-dependent mapping (RFC 4787 section 4.1): another destination, another
    # external port (fully random: equal by chance once in ~64000 runs).
    assert alpha_seen != beta_seen


@pytest.mark.root
def test_rfc4787_unsolicited_datagram_from_beta_cgn_does_not_reach_alpha_ue(
        symmetric: tuple[TestbedBuilder, Plan]) -> None:
    plan = symmetric[1]
    # Control: Beta's CGN does reach Alpha's CGN public address (routing through the IX).
    receiver = _popen(plan.namespace("alpha-cgn"), RECV_ONE, ALPHA_PUBLIC, "5999", "2")
    try:
        assert _readline(receiver) == "ready"
        run_command(["ip", "netns", "exec", plan.namespace("beta-cgn"), sys.executable, "-c",
                     SEND, BETA_PUBLIC, ALPHA_PUBLIC, "5999"])
        assert _readline(receiver).startswith(BETA_PUBLIC + ":")
    finally:
        receiver.wait(timeout=10)
    # To the UE's live mapping (towards the Alpha core), from a host it never sent to: dropped.
    seen, late = _nat_probe(plan, 40001, (plan.namespace("beta-cgn"), BETA_PUBLIC))
    assert "nothing" not in seen
    assert late == "nothing"


@pytest.mark.root
def test_up_twice_is_a_no_op_and_other_options_are_refused(
        symmetric: tuple[TestbedBuilder, Plan]) -> None:
    builder, plan = symmetric
    before = builder.state_file.load()
    assert builder.up(plan) == before
    with pytest.raises(AlreadyUp, match="testbed down"):
        builder.up(build_plan(TestbedOptions(nat=NatBehaviour.EIM, prefix=plan.options.prefix)))
    assert builder.status().up


@pytest.mark.root
def test_cli_eim_keeps_the_port_for_every_destination_and_down_removes_everything(
        state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    prefix = f"uec-e{os.getpid() % 100000}-"
    host = _host_view()
    builder = TestbedBuilder(state_dir)
    try:
        assert _cli("up", "--nat", "eim", "--prefix", prefix, "--state-dir", str(state_dir)) == 0
        assert _cli("status", "--state-dir", str(state_dir)) == testbed_cli.STATUS_UP
        out = capsys.readouterr().out
        assert f"{prefix}alpha-cgn" in out and "--nat eim" in out
        plan = build_plan(TestbedOptions(nat=NatBehaviour.EIM, prefix=prefix))
        (alpha_seen, beta_seen), late = _nat_probe(plan, 40002,
                                                   (plan.namespace("beta-cgn"), BETA_PUBLIC))
        # Endpoint-independent mapping (RFC 4787 section 4.1, REQ-1): one external endpoint
        # for both destinations, here the UE's own port (Linux keeps it when free).
        assert alpha_seen == beta_seen == f"{ALPHA_PUBLIC}:40002"
        assert late == "nothing"  # filtering stays address-and-port-dependent
        assert _cli("down", "--state-dir", str(state_dir)) == 0
        assert not {n for n in _netns_list() if n.startswith(prefix)}
        assert not builder.state_file.path.exists()
        assert _cli("status", "--state-dir", str(state_dir)) == testbed_cli.STATUS_DOWN
        assert _host_view() == host  # the host's links, routes and nft ruleset untouched
    finally:
        _teardown(builder, prefix)


@pytest.mark.root
def test_down_after_a_failed_up_removes_what_was_made(state_dir: Path) -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    prefix = f"uec-f{os.getpid() % 100000}-"

    def failing(argv: Sequence[str], stdin: str | None = None) -> str:
        if "nft" in argv:  # midway: namespaces, links and addresses exist, NAT not yet
            raise CommandFailed(argv, 1, "simulated failure")
        return run_command(argv, stdin)

    plan = build_plan(TestbedOptions(prefix=prefix))
    builder = TestbedBuilder(state_dir, runner=failing)
    try:
        with pytest.raises(CommandFailed, match="simulated"):
            builder.up(plan)
        state = builder.state_file.load()
        assert state is not None and not state.complete
        made = {n for n in _netns_list() if n.startswith(prefix)}
        assert made == set(state.namespaces) == {ns.name for ns in plan.namespaces}
        assert not builder.status().up
        result = TestbedBuilder(state_dir).down()
        assert set(result.removed) == made
        assert not {n for n in _netns_list() if n.startswith(prefix)}
        assert builder.state_file.load() is None
    finally:
        _teardown(TestbedBuilder(state_dir), prefix)


@pytest.mark.root
def test_netem_delay_is_applied_or_refused_naming_the_kernel_module(
        state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reason = _skip_reason() or (None if shutil.which("tc") else "'tc' is not installed")
    if reason:
        pytest.skip(reason)
    prefix = f"uec-n{os.getpid() % 100000}-"
    plan = build_plan(TestbedOptions(prefix=prefix, netem_delay_ms=20))
    try:
        code = _cli("up", "--netem-delay", "20", "--prefix", prefix,
                    "--state-dir", str(state_dir))
        if code == 0:  # a kernel with sch_netem: every link interface carries the delay
            for delay in plan.delays:
                qdisc = run_command(["ip", "netns", "exec", delay.netns, "tc", "qdisc", "show",
                                     "dev", delay.dev])
                assert "netem" in qdisc and "20ms" in qdisc, (delay, qdisc)
        else:  # without it: a message naming the module, and the partial testbed removed
            err = capsys.readouterr().err
            assert "sch_netem" in err and "partial testbed was removed" in err
            # ... and where a delay without netem is to be had instead.
            assert "fall back to NFQUEUE" in err and "demo --testbed --delay" in err
            assert not {n for n in _netns_list() if n.startswith(prefix)}
            with pytest.raises(NetemUnavailable, match="sch_netem"):
                TestbedBuilder(state_dir).up(plan)
    finally:
        _teardown(TestbedBuilder(state_dir), prefix)
    assert not {n for n in _netns_list() if n.startswith(prefix)}
