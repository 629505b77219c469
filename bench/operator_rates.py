"""Registrations and calls per second through an operator's core, Kamailio as the anchor.

Two measures, UDP on loopback, sipp as every UE:

- `register`: digest registrations per second. sipp (bench/scenarios/register_digest.xml)
  registers the users of an injection file in turn: REGISTER, 401 with an MD5 challenge,
  REGISTER with sipp's own [authentication], 200 OK. One sipp "call" is one registration,
  i.e. two REGISTER transactions.
- `call`: calls per second between two registered UEs. The callee registers from the port a
  sipp uas (bench/scenarios/uas_answer.xml) then answers on; the caller registers from the
  port the sipp uac (bench/scenarios/uac_call.xml) then calls from: INVITE, 200, ACK, BYE,
  200, in-dialog requests along the Record-Route set.

Subjects (`subjects()`), each started fresh for every step with `bench.proxy_cps.RunningProxy`
and measured with its ramp (`Ramp`, `RampSettings`, `classify`: the same rules as proxy_cps):

- `kamailio`: bench/kamailio/registrar.cfg, registrar (auth_db over db_text, usrloc in
  memory) and stateful proxy (`lookup("location")`, tm, rr), children=1.
- `ueconnect`: Alpha's P-CSCF and S-CSCF in one process (`python3 -m ims mno --config
  alpha.toml`, the file written by `operator_toml`), subscribers provisioned with the store
  API in a fresh SQLite file, digest MD5 only (sipp computes nothing else). The P-CSCF listens
  on 127.0.1.1 and the S-CSCF on 127.0.1.2 so that the UEs (127.0.0.1) are not mistaken for
  elements of the core.

For a subject, the `ProxyLaunch` fields mean: `listen` where UEs send (Kamailio, or our
P-CSCF); `next_hop` where our S-CSCF listens (Kamailio, one element, ignores it).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from bench import BenchConfigError, BenchError, Benchmark, ToolMissing
from bench.machine import machine_facts
from bench.proxy_cps import (
    KAMAILIO_MODULES,
    REPO_ROOT,
    UAS_SCENARIO,
    ProxyLaunch,
    ProxySubject,
    Ramp,
    RampSettings,
    RunningProxy,
    StepResult,
    SubjectResult,
    measured_step,
)
from bench.sipp import Endpoint, SippProcess, SippRun, find_sipp, free_port, run_sipp
from ims.sip.digest import DigestAlgorithm, compute_ha1

HERE = Path(__file__).resolve().parent
REGISTRAR_CFG = HERE / "kamailio" / "registrar.cfg"
REGISTER_SCENARIO = HERE / "scenarios" / "register_digest.xml"
CALL_SCENARIO = HERE / "scenarios" / "uac_call.xml"

UE_HOST = "127.0.0.1"
PCSCF_HOST = "127.0.1.1"  # as docs/examples/alpha.toml
SCSCF_HOST = "127.0.1.2"
ALPHA_DOMAIN = "ims.mnc001.mcc001.3gppnetwork.org"
STORE_FILE = "alpha.sqlite"
DIGEST_REALM = PCSCF_HOST  # ueconnect's realm; see operator_toml for why

Measure = Literal["register", "call"]
MEASURES: tuple[Measure, ...] = ("register", "call")
UNITS: dict[Measure, str] = {"register": "registrations/s", "call": "calls/s"}


# --- users, files, configuration (pure) -----------------------------------------------------


@dataclass(frozen=True)
class BenchUser:
    """One subscriber of the benchmark: AOR sip:USER@DOMAIN, digest username USER@DOMAIN
    (an IMS private identity, TS 23.003 section 13.3), a password of its own."""

    user: str
    password: str

    def impi(self, domain: str = ALPHA_DOMAIN) -> str:
        return f"{self.user}@{domain}"

    def impu(self, domain: str = ALPHA_DOMAIN) -> str:
        return f"sip:{self.user}@{domain}"


def bench_users(count: int) -> tuple[BenchUser, ...]:
    """`count` distinct users, bench00001 onwards, each with its own password."""
    if not 2 <= count <= 99_999:
        raise BenchConfigError(f"users must be in 2..99999 (a caller and a callee), not {count}")
    return tuple(BenchUser(f"bench{i:05d}", f"pw-{i:05d}-secret") for i in range(1, count + 1))


def authentication_keyword(user: BenchUser, domain: str = ALPHA_DOMAIN) -> str:
    """sipp's [authentication] keyword for `user`, to be injected whole from the CSV: sipp
    3.6.1 cuts a keyword at its first "]", so [authentication username=[field1] ...] does not
    work, while a keyword that comes from an injection field is expanded."""
    return f"[authentication username={user.impi(domain)} password={user.password}]"


def injection_csv(users: Sequence[BenchUser], domain: str = ALPHA_DOMAIN) -> str:
    """sipp's -inf file for register_digest.xml: one user per call, in order, wrapping
    (field0 AOR user part; field1 the [authentication] keyword). The realm comes from the challenge."""
    lines = ["SEQUENTIAL"]
    for u in users:
        fields = (u.user, authentication_keyword(u, domain))
        if any(c in f for f in (u.user, u.password, domain) for c in ";]\n "):
            raise BenchConfigError(
                f"user {u.user!r}: ';', ']', spaces and newlines cannot go in a sipp CSV field"
            )
        lines.append(";".join(fields))
    return "\n".join(lines) + "\n"


DBTEXT_SUBSCRIBER_HEADER = (
    "id(int,auto) username(string) domain(string) password(string) ha1(string) ha1b(string)"
)
DBTEXT_VERSION_HEADER = "id(int,auto) table_name(string) table_version(int)"
DBTEXT_SUBSCRIBER_VERSION = 7  # Kamailio 5.6's subscriber table version


def dbtext_tables(users: Sequence[BenchUser], domain: str = ALPHA_DOMAIN) -> dict[str, str]:
    """The db_text files (name -> content) auth_db reads: `version` and `subscriber`, whose
    ha1 column is MD5(user@domain:domain:password), the HA1 our store keeps for the IMPI."""
    rows = [DBTEXT_SUBSCRIBER_HEADER]
    for n, u in enumerate(users, start=1):
        if any(c in f for f in (u.user, domain) for c in ":\\\n"):
            raise BenchConfigError(f"user {u.user!r}: ':' and '\\' cannot go in a db_text row")
        ha1 = compute_ha1(DigestAlgorithm.MD5, u.impi(domain), domain, u.password)
        # db_text refuses empty (null) columns: no password is kept ("-"); ha1b, the HA1 of
        # user@domain that some UAs' usernames need, is the same value here.
        rows.append(f"{n}:{u.user}:{domain}:-:{ha1}:{ha1}")
    return {
        "version": f"{DBTEXT_VERSION_HEADER}\n1:subscriber:{DBTEXT_SUBSCRIBER_VERSION}\n",
        "subscriber": "\n".join(rows) + "\n",
    }


def operator_toml(pcscf: Endpoint, scscf: Endpoint, store: str = STORE_FILE) -> str:
    """Alpha with a P-CSCF and an S-CSCF only (same-operator calls need no border), MD5
    digest (what sipp's [authentication] computes), logging warnings only.

    The realm is the P-CSCF's IP (`DIGEST_REALM`), not the home domain: sipp 3.6.1's
    [authentication] always sends digest-uri "sip:REMOTE_IP:PORT" (its auth_uri option is
    ignored), and our registrar requires the digest-uri to be the Request-URI (RFC 2617
    section 3.2.2.5). So the REGISTERs carry Request-URI sip:P-CSCF:PORT, and the realm,
    being one of the registrar's domains, makes that host ours (RFC 3261 section 10.3 step 1).
    """
    return f"""\
# Written by bench/operator_rates.py: Alpha's P-CSCF and S-CSCF on free loopback ports.
[operator]
name = "Alpha"
plmn = "001-01"
mnc_digits = 2

[store]
backend = "sqlite"
path = "{store}"

[pcscf]
listen = ["udp:{pcscf}"]
keepalive = 30

[scscf]
listen = ["udp:{scscf}"]
realm = "{DIGEST_REALM}"
min_expires = 60
default_expires = 3600
max_expires = 7200
algorithms = ["MD5"]

[log]
level = "warning"
"""


def provision_store(
    path: Path, users: Sequence[BenchUser], domain: str = ALPHA_DOMAIN,
    realm: str = DIGEST_REALM,
) -> None:
    """A SQLite store at `path` holding `users` (HA1 values for `realm` only, as
    ims.store.new_subscriber makes them)."""
    from ims.config import StoreConfig
    from ims.store import new_subscriber, open_store

    now = time.time()
    with open_store(StoreConfig("sqlite", path)) as store:
        for u in users:
            store.subscribers.add(new_subscriber(u.impi(domain), [u.impu(domain)], u.password,
                                                 realm, now=now))


# --- subjects -------------------------------------------------------------------------------


def _kamailio_command(users: Sequence[BenchUser], launch: ProxyLaunch) -> list[str]:
    rundir = launch.workdir / "kamailio-run"
    dbdir = launch.workdir / "dbtext"
    rundir.mkdir(parents=True, exist_ok=True)
    dbdir.mkdir(parents=True, exist_ok=True)
    for name, text in dbtext_tables(users).items():
        (dbdir / name).write_text(text)
    return [
        "kamailio", "-DD", "-E",
        "-f", str(REGISTRAR_CFG),
        "-L", str(KAMAILIO_MODULES),
        "-Y", str(rundir),
        "-P", str(rundir / "kamailio.pid"),
        "-w", str(launch.workdir),
        "-m", "256", "-M", "8",
        "-A", f"LISTEN=udp:{launch.listen}",
        "-A", f"CHILDREN={launch.workers}",
        "-A", f'REALM="{ALPHA_DOMAIN}"',
        "-A", f'DBURL="text://{dbdir}"',
    ]  # fmt: skip


def _kamailio_missing() -> str | None:
    if shutil.which("kamailio") is None:
        return "kamailio not on PATH (Debian package kamailio provides /usr/sbin/kamailio)"
    for module in ("auth_db.so", "db_text.so", "usrloc.so", "registrar.so"):
        if not (KAMAILIO_MODULES / module).is_file():
            return f"kamailio module {KAMAILIO_MODULES / module} is missing"
    return None


def _ueconnect_command(template: Path, launch: ProxyLaunch) -> list[str]:
    config = launch.workdir / "alpha.toml"
    config.write_text(operator_toml(launch.listen, launch.next_hop))
    shutil.copyfile(template, launch.workdir / STORE_FILE)
    return [sys.executable, "-m", "ims", "mno", "--config", str(config)]


def _ueconnect_missing() -> str | None:
    argv = [sys.executable, "-m", "ims", "mno", "--help"]
    try:
        done = subprocess.run(
            argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=20, check=False
        )
    except subprocess.TimeoutExpired:
        return "`python3 -m ims mno --help` did not answer within 20 s"
    if done.returncode != 0:
        return "`python3 -m ims mno` is not available: " + done.stderr.strip()[-300:]
    return None


def subjects(users: Sequence[BenchUser], template: Path) -> tuple[ProxySubject, ...]:
    """The anchor first (ratios are "ueconnect / kamailio"). `template` is a store holding
    `users`; every ueconnect step starts from a copy of it."""
    return (
        ProxySubject(
            name="kamailio",
            description="Kamailio 5.6 registrar (auth_db/db_text, usrloc) + tm proxy",
            command=lambda launch: _kamailio_command(users, launch),
            missing=_kamailio_missing,
        ),
        ProxySubject(
            name="ueconnect",
            description="ueconnect Alpha, P-CSCF + S-CSCF in one process",
            command=lambda launch: _ueconnect_command(template, launch),
            missing=_ueconnect_missing,
            cwd=REPO_ROOT,
        ),
    )


def _launch(subject: ProxySubject, workdir: Path) -> ProxyLaunch:
    if subject.name == "kamailio":
        listen = Endpoint(PCSCF_HOST, free_port(PCSCF_HOST))
        return ProxyLaunch(listen, listen, 1, workdir)
    pcscf = Endpoint(PCSCF_HOST, free_port(PCSCF_HOST))
    scscf = Endpoint(SCSCF_HOST, free_port(SCSCF_HOST))
    return ProxyLaunch(pcscf, scscf, 1, workdir)


# --- steps ----------------------------------------------------------------------------------


def _register_run(
    local: Endpoint, remote: Endpoint, inf: Path, *, calls: int, rate: float | None,
    deadline: float, recv_timeout: float, name: str = "",
) -> SippRun:
    return SippRun(
        scenario=REGISTER_SCENARIO, local=local, remote=remote, max_calls=calls, rate=rate,
        deadline=deadline, recv_timeout=recv_timeout, variables=(("domain", ALPHA_DOMAIN),),
        extra_args=("-inf", str(inf)), name=name,
    )  # fmt: skip


def _deadline(settings: RampSettings) -> float:
    # Twice the step for a slow start, then time for the last calls to time out.
    return 2 * settings.step_seconds + settings.recv_timeout + 5


def register_step(
    proxy: RunningProxy, users: Sequence[BenchUser], target: int, settings: RampSettings,
    workdir: Path, sipp: str,
) -> StepResult:
    """`target` registrations per second for a step, the users in turn."""
    inf = workdir / "users.csv"
    inf.write_text(injection_csv(users))
    run = _register_run(
        Endpoint(UE_HOST, free_port(UE_HOST)), proxy.launch.listen, inf,
        calls=max(1, math.ceil(target * settings.step_seconds)), rate=target,
        deadline=_deadline(settings), recv_timeout=settings.recv_timeout,
    )  # fmt: skip
    return measured_step(proxy, run, target, workdir, sipp)


def _register_one(
    proxy: RunningProxy, user: BenchUser, local: Endpoint, workdir: Path, sipp: str
) -> None:
    inf = workdir / f"{user.user}.csv"
    inf.write_text(injection_csv([user]))
    run = _register_run(local, proxy.launch.listen, inf, calls=1, rate=None, deadline=10,
                        recv_timeout=5, name=f"register_{user.user}")
    result = run_sipp(run, workdir, sipp)
    if not result.ok:
        raise BenchError(f"{proxy.subject.name}: {user.user} could not register:\n"
                         + result.describe() + "\n" + proxy.log_tail())


def call_step(
    proxy: RunningProxy, users: Sequence[BenchUser], target: int, settings: RampSettings,
    workdir: Path, sipp: str,
) -> StepResult:
    """`target` calls per second from users[0] to users[1], both registered first."""
    caller, callee = users[0], users[1]
    answering = Endpoint(UE_HOST, free_port(UE_HOST))
    calling = Endpoint(UE_HOST, free_port(UE_HOST))
    _register_one(proxy, callee, answering, workdir, sipp)
    _register_one(proxy, caller, calling, workdir, sipp)
    far_end = SippRun(scenario=UAS_SCENARIO, local=answering, max_calls=None, deadline=600)
    with SippProcess(far_end, workdir, sipp) as uas:
        uas.wait_bound()
        run = SippRun(
            scenario=CALL_SCENARIO, local=calling, remote=proxy.launch.listen,
            max_calls=max(1, math.ceil(target * settings.step_seconds)), rate=target,
            deadline=_deadline(settings), recv_timeout=settings.recv_timeout,
            variables=(("domain", ALPHA_DOMAIN), ("caller", caller.user),
                       ("callee", callee.user)),
        )  # fmt: skip
        step = measured_step(proxy, run, target, workdir, sipp)
        if not uas.running():
            raise BenchError("the sipp uas (callee) died:\n" + uas.stop().describe())
    return step


STEPS: dict[Measure, Callable[..., StepResult]] = {"register": register_step, "call": call_step}


def fresh_step(
    subject: ProxySubject, measure: Measure, users: Sequence[BenchUser], target: int,
    settings: RampSettings, workdir: Path, sipp: str,
) -> StepResult:
    """One rate from a clean slate: a new subject process, new UEs."""
    workdir.mkdir(parents=True, exist_ok=True)
    with RunningProxy(subject, _launch(subject, workdir)) as proxy:
        proxy.wait_ready()
        return STEPS[measure](proxy, users, target, settings, workdir, sipp)


def measure(
    subject: ProxySubject, what: Measure, users: Sequence[BenchUser], settings: RampSettings,
    workdir: Path, *, report: Callable[[str], None] = lambda line: None,
) -> SubjectResult:
    """The ramp for one subject and measure; skipped (not raised) when the subject is
    missing here. `SubjectResult.workers` is 1: every subject runs one worker."""
    reason = subject.missing()
    if reason is not None:
        return SubjectResult(subject.name, 1, None, "", skipped=reason)
    sipp = find_sipp()
    ramp = Ramp(settings)
    while (target := ramp.next_target()) is not None:
        step = fresh_step(subject, what, users, target, settings,
                          workdir / f"{subject.name}-{what}-{target}", sipp)
        verdict = ramp.record(step)
        report(
            f"  {subject.name} {what} {target:>6}/s: achieved {step.achieved_cps:8.1f}, "
            f"{step.successful}/{step.calls} ok, {step.failed} failed, CPU "
            f"{step.proxy_cpu_ms_per_call:.3f} ms each -> {verdict}"
        )
    return SubjectResult(subject.name, 1, ramp.best, ramp.stop_reason, steps=tuple(ramp.steps))


# --- reporting (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class MeasureResult:
    measure: Measure
    result: SubjectResult


def markdown_table(results: Sequence[MeasureResult]) -> str:
    rows = [
        "| measure | subject | max clean rate | CPU ms each | ended because |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for m in results:
        r = m.result
        unit = UNITS[m.measure]
        if r.skipped:
            rows.append(f"| {m.measure} | {r.subject} | skipped | | {r.skipped} |")
        elif r.best is None:
            rows.append(f"| {m.measure} | {r.subject} | none clean | | {r.stop_reason} |")
        else:
            rows.append(
                f"| {m.measure} | {r.subject} | {r.best.achieved_cps:.0f} {unit} | "
                f"{r.best.proxy_cpu_ms_per_call:.3f} | {r.stop_reason} |"
            )
    return "\n".join(rows)


def ratio_lines(results: Sequence[MeasureResult], anchor: str = "kamailio") -> list[str]:
    """ "register: ueconnect / kamailio = 0.25 (rate), CPU per registration x4.0"."""
    lines = []
    for m in results:
        if m.result.subject == anchor or m.result.best is None:
            continue
        base = next((b.result for b in results if b.measure == m.measure
                     and b.result.subject == anchor and b.result.best is not None), None)
        if base is None or base.best is None:
            continue
        mine, theirs = m.result.best, base.best
        cpu = mine.proxy_cpu_ms_per_call / theirs.proxy_cpu_ms_per_call
        lines.append(
            f"{m.measure}: {m.result.subject} / {anchor} = "
            f"{mine.achieved_cps / theirs.achieved_cps:.2f} ({mine.achieved_cps:.0f} / "
            f"{theirs.achieved_cps:.0f} {UNITS[m.measure]}); CPU each x{cpu:.1f} "
            f"({mine.proxy_cpu_ms_per_call:.3f} / {theirs.proxy_cpu_ms_per_call:.3f} ms)"
        )
    return lines


# --- command line ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subjects", nargs="+", default=["kamailio", "ueconnect"],
                        choices=["kamailio", "ueconnect"], metavar="NAME",
                        help="subjects to measure (default: kamailio ueconnect)")
    parser.add_argument("--measures", nargs="+", default=list(MEASURES), choices=MEASURES,
                        metavar="NAME", help="register and/or call (default: both)")
    parser.add_argument("--users", type=int, default=1000,
                        help="distinct subscribers registering in turn (default: 1000)")
    defaults = RampSettings(start_cps=100)
    parser.add_argument("--start-rate", type=int, default=defaults.start_cps)
    parser.add_argument("--max-rate", type=int, default=defaults.max_cps)
    parser.add_argument("--step-seconds", type=float, default=defaults.step_seconds)
    parser.add_argument("--refine-steps", type=int, default=defaults.refine_steps)
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        settings = RampSettings(
            start_cps=args.start_rate, max_cps=args.max_rate,
            step_seconds=args.step_seconds, refine_steps=args.refine_steps,
        )  # fmt: skip
        users = bench_users(args.users)
        find_sipp()
    except (BenchConfigError, ToolMissing) as error:
        print(f"operator_rates: {error}", file=sys.stderr)
        return 2
    facts = machine_facts()
    _say("operator_rates: digest registrations/s and calls/s through a registrar + proxy")
    _say("  " + "; ".join(f"{k}: {v}" for k, v in facts.items()))
    results: list[MeasureResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-operator-rates-") as scratch:
        template = Path(scratch) / "template" / STORE_FILE
        template.parent.mkdir()
        provision_store(template, users)
        chosen = [s for s in subjects(users, template) if s.name in args.subjects]
        for what in args.measures:
            for subject in chosen:
                try:
                    result = measure(subject, what, users, settings, Path(scratch), report=_say)
                except BenchError as error:
                    result = SubjectResult(subject.name, 1, None, f"error: {error}")
                if result.skipped:
                    _say(f"  {subject.name}: skipped: {result.skipped}")
                results.append(MeasureResult(what, result))
    print()
    print(markdown_table(results))
    for line in ratio_lines(results):
        print(line)
    if args.json:
        args.json.write_text(json.dumps({
            "machine": facts, "settings": asdict(settings), "users": len(users),
            "results": [_result_json(m) for m in results],
        }, indent=2))  # fmt: skip
    failed = any(m.result.best is None and not m.result.skipped for m in results)
    return 1 if failed else 0


def _say(line: str) -> None:
    print(line, flush=True)


def _result_json(m: MeasureResult) -> dict[str, object]:
    r = m.result
    return {
        "measure": m.measure,
        "subject": r.subject,
        "max_rate": r.max_cps,
        "stop_reason": r.stop_reason,
        "skipped": r.skipped,
        "steps": [dict(asdict(step), verdict=verdict) for step, verdict in r.steps],
    }


BENCHMARK = Benchmark(
    name="operator_rates",
    help="digest registrations/s and calls/s through Alpha's P-CSCF + S-CSCF, Kamailio as "
    "the anchor",
    add_arguments=add_arguments,
    run=run,
)

__all__ = [
    "BENCHMARK",
    "BenchUser",
    "MeasureResult",
    "bench_users",
    "call_step",
    "dbtext_tables",
    "injection_csv",
    "markdown_table",
    "measure",
    "operator_toml",
    "provision_store",
    "ratio_lines",
    "register_step",
    "subjects",
]
