"""sipp as a real SIP peer in tests: on a free loopback port, bounded, stopped on teardown.

    with sipp_server(tmp_path, scenario("uas_call.xml")) as peer:   # ready when it yields
        ... our UA calls sip:service@{peer.run.local} ...
        result = peer.wait()            # or: await peer.wait_async() inside asyncio.run
    assert result.ok, result.describe()

    result = run_sipp_client(tmp_path, Endpoint("127.0.0.1", port))   # built-in uac, 1 call

A test that uses these skips, with the reason, when sipp is not installed. The scenario files
live in tests/interop/scenarios/ (`scenario(name)`); built-in ones are named as `sipp -sn`
knows them ("uac", "uas", ...). Every run keeps its message trace in the test's directory
(`result.messages()`), and `result.describe()` is a ready-made assertion message.
Built on bench.sipp (one sipp driver for benchmarks and tests).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench import ToolMissing
from bench.sipp import (
    Endpoint,
    SippProcess,
    SippResult,
    SippRun,
    find_sipp,
    free_port,
    run_sipp,
    start_sipp,
)

__all__ = [
    "ALPHA_REALM",
    "BILL_IMPI",
    "FIXED_NONCE",
    "LOOPBACK",
    "SCENARIOS",
    "Endpoint",
    "SippProcess",
    "SippResult",
    "digest_registrar_variables",
    "run_sipp_client",
    "scenario",
    "sipp_or_skip",
    "sipp_server",
    "start_sipp_client",
]

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
LOOPBACK = "127.0.0.1"

# uas_register_digest.xml: the demo world's MNO Alpha and its subscriber Bill.
ALPHA_REALM = "ims.mnc001.mcc001.3gppnetwork.org"
BILL_IMPI = f"+15550100001@{ALPHA_REALM}"
FIXED_NONCE = "ueconnect-fixed-nonce-0001"  # what the scenario's 401 always offers


def sipp_or_skip() -> str:
    """Path of sipp, or skip the calling test with the reason and the package to install."""
    try:
        return find_sipp()
    except ToolMissing as missing:
        pytest.skip(str(missing))


def scenario(name: str) -> Path:
    """A scenario file of tests/interop/scenarios/."""
    path = SCENARIOS / name
    if not path.is_file():
        known = ", ".join(sorted(p.name for p in SCENARIOS.glob("*.xml")))
        raise FileNotFoundError(f"no scenario {name!r} in {SCENARIOS} (there are: {known})")
    return path


def digest_registrar_variables(
    password: str, realm: str = ALPHA_REALM, user: str = BILL_IMPI
) -> tuple[tuple[str, str], ...]:
    """The -set globals uas_register_digest.xml needs: the realm it challenges with and the
    one username/password it accepts."""
    return (("realm", realm), ("user", user), ("password", password))


@contextmanager
def sipp_server(
    workdir: Path,
    scenario: str | Path = "uas",
    *,
    max_calls: int | None = 1,
    deadline: float = 15.0,
    variables: Sequence[tuple[str, str]] = (),
    port: int | None = None,
    trace_messages: bool = True,
    extra_args: Sequence[str] = (),
) -> Iterator[SippProcess]:
    """sipp serving `scenario` on 127.0.0.1 (a free UDP port unless `port`), yielded once its
    socket is bound; it ends after `max_calls` calls or at `deadline` seconds, and is stopped
    when the block exits whatever happened. Its address is `peer.run.local`."""
    sipp = sipp_or_skip()
    run = SippRun(
        scenario=scenario,
        local=Endpoint(LOOPBACK, port or free_port(LOOPBACK)),
        max_calls=max_calls,
        deadline=deadline,
        variables=tuple(variables),
        trace_messages=trace_messages,
        extra_args=tuple(extra_args),
    )
    process = start_sipp(run, workdir, sipp)
    try:
        process.wait_bound()
        yield process
    finally:
        process.stop()


def _client_run(
    remote: Endpoint,
    scenario: str | Path,
    max_calls: int,
    rate: float,
    deadline: float,
    variables: Sequence[tuple[str, str]],
    service: str | None,
    trace_messages: bool,
    extra_args: Sequence[str],
) -> SippRun:
    return SippRun(
        scenario=scenario,
        local=Endpoint(LOOPBACK, free_port(LOOPBACK)),
        remote=remote,
        max_calls=max_calls,
        rate=rate,
        deadline=deadline,
        variables=tuple(variables),
        service=service,
        trace_messages=trace_messages,
        extra_args=tuple(extra_args),
    )


def run_sipp_client(
    workdir: Path,
    remote: Endpoint,
    scenario: str | Path = "uac",
    *,
    max_calls: int = 1,
    rate: float = 10.0,
    deadline: float = 15.0,
    variables: Sequence[tuple[str, str]] = (),
    service: str | None = None,
    trace_messages: bool = True,
    extra_args: Sequence[str] = (),
) -> SippResult:
    """sipp running client `scenario` against `remote` to the end (blocking; inside an
    asyncio test use `start_sipp_client` and `await peer.wait_async()`)."""
    sipp = sipp_or_skip()
    run = _client_run(
        remote, scenario, max_calls, rate, deadline, variables, service, trace_messages,
        extra_args,
    )  # fmt: skip
    return run_sipp(run, workdir, sipp)


def start_sipp_client(
    workdir: Path,
    remote: Endpoint,
    scenario: str | Path = "uac",
    *,
    max_calls: int = 1,
    rate: float = 10.0,
    deadline: float = 15.0,
    variables: Sequence[tuple[str, str]] = (),
    service: str | None = None,
    trace_messages: bool = True,
    extra_args: Sequence[str] = (),
) -> SippProcess:
    """`run_sipp_client` without waiting: the caller waits (or uses `with`)."""
    sipp = sipp_or_skip()
    run = _client_run(
        remote, scenario, max_calls, rate, deadline, variables, service, trace_messages,
        extra_args,
    )  # fmt: skip
    return start_sipp(run, workdir, sipp)
