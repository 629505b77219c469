"""The benchmark machinery without running anything: the ramp schedule, step verdicts,
sipp's statistics file, sipp command lines, the loopback-only rule, the subject table."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import BenchConfigError
from bench.__main__ import BENCHMARKS, build_parser
from bench.proxy_cps import (
    KAMAILIO,
    SUBJECTS,
    ProxyLaunch,
    Ramp,
    RampSettings,
    StepResult,
    SubjectResult,
    classify,
    comparison_lines,
    markdown_table,
    subject_named,
)
from bench.sipp import Endpoint, SippRun, parse_statistics, sipp_command

# A real -trace_stat file of sipp 3.6.1 (header and last row), from a uac stopped by SIGTERM
# with one call still open: created 1, successful 0, failed 0, one retransmission.
STATS_CAPTURE = (
    "StartTime;LastResetTime;CurrentTime;ElapsedTime(P);ElapsedTime(C);TargetRate;CallRate(P);CallRate(C);IncomingCall(P);IncomingCall(C);OutgoingCall(P);OutgoingCall(C);TotalCallCreated;CurrentCall;SuccessfulCall(P);SuccessfulCall(C);FailedCall(P);FailedCall(C);FailedCannotSendMessage(P);FailedCannotSendMessage(C);FailedMaxUDPRetrans(P);FailedMaxUDPRetrans(C);FailedTcpConnect(P);FailedTcpConnect(C);FailedTcpClosed(P);FailedTcpClosed(C);FailedUnexpectedMessage(P);FailedUnexpectedMessage(C);FailedCallRejected(P);FailedCallRejected(C);FailedCmdNotSent(P);FailedCmdNotSent(C);FailedRegexpDoesntMatch(P);FailedRegexpDoesntMatch(C);FailedRegexpShouldntMatch(P);FailedRegexpShouldntMatch(C);FailedRegexpHdrNotFound(P);FailedRegexpHdrNotFound(C);FailedOutboundCongestion(P);FailedOutboundCongestion(C);FailedTimeoutOnRecv(P);FailedTimeoutOnRecv(C);FailedTimeoutOnSend(P);FailedTimeoutOnSend(C);FailedTestDoesntMatch(P);FailedTestDoesntMatch(C);FailedTestShouldntMatch(P);FailedTestShouldntMatch(C);FailedStrcmpDoesntMatch(P);FailedStrcmpDoesntMatch(C);FailedStrcmpShouldntMatch(P);FailedStrcmpShouldntMatch(C);OutOfCallMsgs(P);OutOfCallMsgs(C);DeadCallMsgs(P);DeadCallMsgs(C);Retransmissions(P);Retransmissions(C);AutoAnswered(P);AutoAnswered(C);Warnings(P);Warnings(C);FatalErrors(P);FatalErrors(C);WatchdogMajor(P);WatchdogMajor(C);WatchdogMinor(P);WatchdogMinor(C);ResponseTime1(P);ResponseTime1(C);ResponseTime1StDev(P);ResponseTime1StDev(C);CallLength(P);CallLength(C);CallLengthStDev(P);CallLengthStDev(C);ResponseTimeRepartition1;ResponseTimeRepartition1_<10;ResponseTimeRepartition1_<20;ResponseTimeRepartition1_<30;ResponseTimeRepartition1_<40;ResponseTimeRepartition1_<50;ResponseTimeRepartition1_<100;ResponseTimeRepartition1_<150;ResponseTimeRepartition1_<200;ResponseTimeRepartition1_>=200;CallLengthRepartition;CallLengthRepartition_<10;CallLengthRepartition_<50;CallLengthRepartition_<100;CallLengthRepartition_<500;CallLengthRepartition_<1000;CallLengthRepartition_<5000;CallLengthRepartition_<10000;CallLengthRepartition_>=10000;\n"
    "2026-11-27\t04:32:56.264834\t1795753976.264834;2026-11-27\t04:32:57.265505\t1795753977.265505;2026-11-27\t04:32:57.762924\t1795753977.762924;00:00:00;00:00:01;10;0;0.667557;0;0;0;1;1;1;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;1;0;0;0;0;0;0;0;0;0;0;00:00:00:000000;00:00:00:000000;00:00:00:000000;00:00:00:000000;00:00:00:000000;00:00:00:000000;00:00:00:000000;00:00:00:000000;;0;0;0;0;0;0;0;0;0;;0;0;0;0;0;0;0;0;\n"
)


def step(
    target: int,
    *,
    achieved: float | None = None,
    calls: int = 1000,
    failed: int = 0,
    generator_cpu: float = 0.5,
) -> StepResult:
    return StepResult(
        target_cps=target,
        achieved_cps=float(target) if achieved is None else achieved,
        calls=calls,
        successful=calls - failed,
        failed=failed,
        unexpected_messages=0,
        retransmissions=0,
        proxy_cpu_seconds=0.4,
        generator_cpu_seconds=generator_cpu,
        wall_seconds=3.0,
    )


# --- sipp statistics --------------------------------------------------------------------------


def test_parse_statistics_reads_the_last_row_of_a_real_capture() -> None:
    stats = parse_statistics(STATS_CAPTURE)
    assert stats.target_rate == 10
    assert stats.call_rate == pytest.approx(0.667557)
    assert stats.elapsed == 1.0
    assert (stats.calls_created, stats.outgoing_calls, stats.current_calls) == (1, 1, 1)
    assert (stats.successful_calls, stats.failed_calls) == (0, 0)
    assert stats.retransmissions == 1


def test_a_call_cut_short_by_the_deadline_counts_as_unfinished() -> None:
    assert parse_statistics(STATS_CAPTURE).unfinished_calls == 1


def test_parse_statistics_without_a_data_row_names_the_problem() -> None:
    header_only = STATS_CAPTURE.splitlines()[0]
    with pytest.raises(Exception, match="no data row"):
        parse_statistics(header_only)


def test_parse_statistics_missing_column_names_it() -> None:
    header, row = STATS_CAPTURE.splitlines()
    broken = header.replace("SuccessfulCall(C)", "Renamed") + "\n" + row
    with pytest.raises(Exception, match=r"SuccessfulCall\(C\)"):
        parse_statistics(broken)


# --- sipp command lines and the loopback rule -------------------------------------------------


def test_sipp_command_is_bounded_and_on_loopback(tmp_path: Path) -> None:
    run = SippRun(
        scenario="uac",
        local=Endpoint("127.0.0.1", 5070),
        remote=Endpoint("127.0.0.1", 5060),
        max_calls=300,
        rate=100,
        deadline=5,
        recv_timeout=2.5,
        variables=(("realm", "ims.mnc001.mcc001.3gppnetwork.org"),),
    )
    argv = sipp_command(run, tmp_path, "sipp")
    joined = " ".join(argv)
    assert argv[:3] == ["sipp", "-sn", "uac"]
    assert "127.0.0.1:5060" in argv
    assert "-i 127.0.0.1 -p 5070" in joined
    assert "-m 300" in joined and "-r 100 -rp 1000" in joined
    assert "-recv_timeout 2500" in joined
    assert "-set realm ims.mnc001.mcc001.3gppnetwork.org" in joined
    assert f"-stf {tmp_path / 'sipp_uac_5070_stats.csv'}" in joined
    assert "-fd 1" in joined  # statistics survive a kill at the deadline


def test_sipp_command_uses_a_scenario_file(tmp_path: Path) -> None:
    xml = tmp_path / "x.xml"
    xml.write_text("<scenario/>")
    argv = sipp_command(SippRun(scenario=xml, local=Endpoint("::1", 5070)), tmp_path)
    assert argv[1:3] == ["-sf", str(xml)]
    assert "::1" in argv


@pytest.mark.parametrize("host", ["192.0.2.1", "10.0.0.1", "0.0.0.0", "::", "example.org"])
def test_endpoint_refuses_anything_but_loopback(host: str) -> None:
    with pytest.raises(BenchConfigError):
        Endpoint(host, 5060)


def test_endpoint_parse_and_str_round_trip() -> None:
    assert str(Endpoint.parse("127.0.0.2:5080")) == "127.0.0.2:5080"
    assert Endpoint.parse("[::1]:5080") == Endpoint("::1", 5080)
    assert str(Endpoint("::1", 5080)) == "[::1]:5080"
    with pytest.raises(BenchConfigError):
        Endpoint.parse("127.0.0.1")


@pytest.mark.parametrize(
    "kwargs",
    [{"max_calls": 0}, {"deadline": 0}, {"deadline": 10_000}, {"rate": -1}, {"call_limit": 0}],
)
def test_sipp_run_refuses_unbounded_or_silly_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(BenchConfigError):
        SippRun(scenario="uas", local=Endpoint("127.0.0.1", 5070), **kwargs)  # type: ignore[arg-type]


def test_missing_scenario_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(BenchConfigError, match="does not exist"):
        SippRun(scenario=tmp_path / "nope.xml", local=Endpoint("127.0.0.1", 5070))


# --- step verdicts and the ramp -----------------------------------------------------------------

SETTINGS = RampSettings(start_cps=200, max_cps=3200, refine_steps=2)


def test_step_verdicts() -> None:
    assert classify(step(400), SETTINGS) == "clean"
    assert classify(step(400, failed=3), SETTINGS) == "lossy"  # 0.3% <= 0.5%
    assert classify(step(400, failed=6), SETTINGS) == "failing"  # 0.6% > 0.5%
    assert classify(step(400, achieved=370), SETTINGS) == "clean"  # within 90%
    assert classify(step(400, achieved=300), SETTINGS) == "queueing"
    assert classify(step(400, achieved=300, generator_cpu=2.7), SETTINGS) == "generator-bound"
    assert classify(step(400, calls=0), SETTINGS) == "failing"


def drive(ramp: Ramp, outcome: dict[int, StepResult] | None = None, limit: int = 50) -> list[int]:
    """Feed the ramp: every rate below 1000 is clean, 1000 and above fail (unless `outcome`
    says otherwise); the rates it asked for, in order."""
    asked: list[int] = []
    while (target := ramp.next_target()) is not None and len(asked) < limit:
        asked.append(target)
        result = (outcome or {}).get(target) or (
            step(target) if target < 1000 else step(target, failed=500)
        )
        ramp.record(result)
    return asked


def test_ramp_doubles_until_failure_then_bisects() -> None:
    ramp = Ramp(SETTINGS)
    assert drive(ramp) == [200, 400, 800, 1600, 1200, 1000]
    assert ramp.best is not None and ramp.best.target_cps == 800
    assert "failed at 1600 cps" in ramp.stop_reason


def test_ramp_without_refinement_stops_at_first_failure() -> None:
    ramp = Ramp(RampSettings(start_cps=200, max_cps=3200, refine_steps=0))
    assert drive(ramp) == [200, 400, 800, 1600]


def test_ramp_stops_at_the_ceiling() -> None:
    ramp = Ramp(RampSettings(start_cps=100, max_cps=500, refine_steps=2))
    assert drive(ramp) == [100, 200, 400]
    assert "ceiling of 500" in ramp.stop_reason
    assert ramp.best is not None and ramp.best.target_cps == 400


def test_ramp_keeps_going_through_small_losses_but_does_not_count_them() -> None:
    outcome = {400: step(400, failed=2)}  # 0.2%: lossy, below the stop threshold
    ramp = Ramp(RampSettings(start_cps=200, max_cps=3200, refine_steps=0))
    assert drive(ramp, outcome) == [200, 400, 800, 1600]
    assert ramp.best is not None and ramp.best.target_cps == 800


def test_ramp_stops_when_the_proxy_queues() -> None:
    outcome = {800: step(800, achieved=610)}
    ramp = Ramp(RampSettings(start_cps=200, max_cps=3200, refine_steps=0))
    assert drive(ramp, outcome) == [200, 400, 800]
    assert "the proxy queues" in ramp.stop_reason


def test_ramp_stops_when_the_generator_saturates_and_says_so() -> None:
    outcome = {800: step(800, achieved=610, generator_cpu=2.9)}
    ramp = Ramp(RampSettings(start_cps=200, max_cps=3200, refine_steps=0))
    assert drive(ramp, outcome) == [200, 400, 800]
    assert "load generator" in ramp.stop_reason and "lower bound" in ramp.stop_reason
    assert ramp.best is not None and ramp.best.target_cps == 400


def test_ramp_failing_at_the_first_rate_has_no_figure() -> None:
    ramp = Ramp(RampSettings(start_cps=2000, max_cps=3200, refine_steps=2))
    assert drive(ramp) == [2000]
    assert ramp.best is None


def test_ramp_best_is_the_highest_achieved_clean_rate() -> None:
    outcome = {1200: step(1200, achieved=1150)}
    ramp = Ramp(SETTINGS)
    drive(ramp, {**outcome, 1000: step(1000)})
    assert ramp.best is not None and ramp.best.achieved_cps == 1150


@pytest.mark.parametrize(
    "kwargs",
    [{"start_cps": 0}, {"factor": 1.0}, {"step_seconds": 0.1}, {"max_cps": 10, "start_cps": 20}],
)
def test_ramp_settings_refuse_unbounded_schedules(kwargs: dict[str, float]) -> None:
    with pytest.raises(BenchConfigError):
        RampSettings(**kwargs)  # type: ignore[arg-type]


# --- subjects, report, registry -----------------------------------------------------------------


def test_kamailio_subject_command_carries_listen_next_hop_and_workers(tmp_path: Path) -> None:
    launch = ProxyLaunch(Endpoint("127.0.0.1", 5060), Endpoint("127.0.0.1", 5070), 2, tmp_path)
    argv = KAMAILIO.command(launch)
    assert argv[0] == "kamailio" and "-DD" in argv and "-E" in argv
    assert "LISTEN=udp:127.0.0.1:5060" in argv
    assert "CHILDREN=2" in argv
    assert 'NEXTHOP="sip:127.0.0.1:5070"' in argv
    assert str(tmp_path / "kamailio-run" / "kamailio.pid") in argv  # pid file in scratch


def test_ueconnect_subject_is_the_proxy_command_line(tmp_path: Path) -> None:
    launch = ProxyLaunch(Endpoint("127.0.0.1", 5060), Endpoint("127.0.0.1", 5070), 3, tmp_path)
    argv = subject_named("ueconnect").command(launch)
    assert argv[1:] == [
        "-m",
        "ims",
        "sip",
        "proxy",
        "--listen",
        "127.0.0.1:5060",
        "--next-hop",
        "127.0.0.1:5070",
        "--workers",
        "3",
    ]


def test_the_anchor_is_first_and_unknown_subjects_are_named() -> None:
    assert SUBJECTS[0] is KAMAILIO
    with pytest.raises(BenchConfigError, match="kamailio"):
        subject_named("asterisk")


def test_comparison_is_subject_over_anchor_at_equal_workers() -> None:
    results = [
        SubjectResult("kamailio", 1, step(2000), "x"),
        SubjectResult("kamailio", 2, step(4000), "x"),
        SubjectResult("ueconnect", 1, step(500), "x"),
        SubjectResult("ueconnect", 2, None, "x", skipped="not available"),
    ]
    assert comparison_lines(results) == [
        "ueconnect / kamailio at 1 worker(s): 0.25 (500 / 2000 cps)"
    ]
    table = markdown_table(results)
    assert "| kamailio | 2 | 4000 |" in table
    assert "| ueconnect | 2 | skipped | | not available |" in table


def test_every_registered_benchmark_has_a_subcommand() -> None:
    parser = build_parser()
    for benchmark in BENCHMARKS:
        args = parser.parse_args([benchmark.name])
        assert args.run is benchmark.run
