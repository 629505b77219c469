"""The ladder trace (ims.trace): recording JSON Lines, reading them back, listing calls and
drawing a call as a ladder."""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ims.sip.address import Address
from ims.sip.dialog import create_initial_request
from ims.sip.ids import IdSource
from ims.sip.message import Headers, Request, make_response
from ims.sip.stack import Direction, SipStack, TuEvent
from ims.sip.transaction import RequestReceived
from ims.sip.uri import parse_uri
from ims.trace import (
    KEY_HEADERS,
    TraceEntry,
    TraceFileError,
    TraceLineProblem,
    TraceRecorder,
    UnknownCallId,
    build_ladder,
    calls,
    entry_of,
    participant_name,
    read_trace,
    render_ladder,
    render_ladder_html,
)

IDS = IdSource()
BILL = parse_uri("sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org")
DAVE = parse_uri("sip:+15550100002@ims.mnc002.mcc001.3gppnetwork.org")

UA1, PROXY, UA2 = "udp:127.0.0.1:5071", "udp:127.0.0.1:5060", "udp:127.0.0.1:5072"
T0 = 1_700_000_000.0
INVITE = "INVITE sip:dave@127.0.0.1:5072 SIP/2.0"
ACK = "ACK sip:dave@127.0.0.1:5072 SIP/2.0"
BYE = "BYE sip:dave@127.0.0.1:5072 SIP/2.0"


def entry(t: float, direction: Direction, src: str, dst: str, first_line: str, cseq: str,
          branch: str, *, call_id: str = "call-1", line: int = 0) -> TraceEntry:
    """A record of the proxy "Alpha P-CSCF" at PROXY, as its TraceRecorder writes it."""
    name = "Alpha P-CSCF"
    response = first_line.startswith("SIP/")
    return TraceEntry(
        epoch=T0 + t, operator="Alpha", role="pcscf", direction=direction,
        source=src, destination=dst,
        source_name=name if src == PROXY else None,
        destination_name=name if dst == PROXY else None,
        first_line=first_line,
        method=None if response else first_line.split()[0],
        status=int(first_line.split()[1]) if response else None,
        call_id=call_id, cseq=cseq, branch=branch,
        headers=(("From", "<sip:bill@127.0.0.1>;tag=f1"), ("To", "<sip:dave@127.0.0.1>")),
        line=line,
    )


def proxied_call() -> list[TraceEntry]:
    """INVITE/180/200/ACK/BYE/200 between UA1 and UA2 through the proxy, as the proxy traced
    it; its 200 to UA1 is retransmitted once (RFC 3261 section 13.3.1.4)."""
    return [
        entry(0.000, "in", UA1, PROXY, INVITE, "1 INVITE", "b1"),
        entry(0.001, "out", PROXY, UA2, INVITE, "1 INVITE", "b2"),
        entry(0.010, "in", UA2, PROXY, "SIP/2.0 180 Ringing", "1 INVITE", "b2"),
        entry(0.011, "out", PROXY, UA1, "SIP/2.0 180 Ringing", "1 INVITE", "b1"),
        entry(0.500, "in", UA2, PROXY, "SIP/2.0 200 OK", "1 INVITE", "b2"),
        entry(0.501, "out", PROXY, UA1, "SIP/2.0 200 OK", "1 INVITE", "b1"),
        entry(1.001, "out", PROXY, UA1, "SIP/2.0 200 OK", "1 INVITE", "b1"),
        entry(1.100, "in", UA1, PROXY, ACK, "1 ACK", "b3"),
        entry(1.101, "out", PROXY, UA2, ACK, "1 ACK", "b4"),
        entry(5.000, "in", UA1, PROXY, BYE, "2 BYE", "b5"),
        entry(5.001, "out", PROXY, UA2, BYE, "2 BYE", "b6"),
        entry(5.010, "in", UA2, PROXY, "SIP/2.0 200 OK", "2 BYE", "b6"),
        entry(5.011, "out", PROXY, UA1, "SIP/2.0 200 OK", "2 BYE", "b5"),
    ]


EXPECTED_LADDER = """\
Call-ID: call-1
Start: 2023-11-14T22:13:20.000000Z  Messages: 13  (left: seconds since the start)

             127.0.0.1:5071       Alpha P-CSCF       127.0.0.1:5072
                    |                   |                   |
                    |INVITE sip:dave@1..|                   |
    0.000           |------------------>|                   |
                    |                   |INVITE sip:dave@1..|
    0.001           |                   |------------------>|
                    |                   |    180 Ringing    |
    0.010           |                   |<------------------|
                    |    180 Ringing    |                   |
    0.011           |<------------------|                   |
                    |                   |      200 OK       |
    0.500           |                   |<------------------|
                    |      200 OK       |                   |
    0.501           |<------------------|                   |
                    |   (rtx) 200 OK    |                   |
    1.001           |<~~~~~~~~~~~~~~~~~~|                   |
                    |ACK sip:dave@127...|                   |
    1.100           |------------------>|                   |
                    |                   |ACK sip:dave@127...|
    1.101           |                   |------------------>|
                    |BYE sip:dave@127...|                   |
    5.000           |------------------>|                   |
                    |                   |BYE sip:dave@127...|
    5.001           |                   |------------------>|
                    |                   |      200 OK       |
    5.010           |                   |<------------------|
                    |      200 OK       |                   |
    5.011           |<------------------|                   |
"""


# -- the ladder ----------------------------------------------------------------------------


def test_render_ladder_exact_text_for_a_proxied_call() -> None:
    assert render_ladder(proxied_call(), "call-1", width=70) == EXPECTED_LADDER


def test_ladder_is_in_time_order_whatever_the_file_order() -> None:
    shuffled = list(reversed(proxied_call()))
    assert render_ladder(shuffled, "call-1", width=70) == EXPECTED_LADDER


def test_message_traced_at_both_ends_is_one_arrow() -> None:
    # UA1 traced too (as "Alpha UE"): its INVITE out and the proxy's INVITE in are one arrow.
    ua_out = TraceEntry(T0 - 0.0005, "Alpha", "ue", "out", UA1, PROXY, "Alpha UE", None,
                        INVITE, method="INVITE", call_id="call-1", cseq="1 INVITE", branch="b1")
    ladder = build_ladder([ua_out, *proxied_call()], "call-1")
    assert ladder.participants == ("Alpha UE", "Alpha P-CSCF", "127.0.0.1:5072")
    assert len(ladder.arrows) == 13
    first = ladder.arrows[0]
    assert (first.source, first.destination, first.entry.direction) == (0, 1, "out")
    assert first.epoch == ua_out.epoch  # drawn at the sender's time


def test_tcp_ephemeral_port_joins_the_senders_column() -> None:
    # Over TCP the proxy sees UA1's connection port (40000), UA1 its listening port (5071).
    ua, ephemeral, proxy = "tcp:127.0.0.1:5071", "tcp:127.0.0.1:40000", "tcp:127.0.0.1:5060"
    records = [
        TraceEntry(T0, "Alpha", "ue", "out", ua, proxy, "Alpha UE", None, INVITE,
                   method="INVITE", call_id="c", cseq="1 INVITE", branch="b1"),
        TraceEntry(T0 + 0.001, "Alpha", "pcscf", "in", ephemeral, proxy, None, "Alpha P-CSCF",
                   INVITE, method="INVITE", call_id="c", cseq="1 INVITE", branch="b1"),
        TraceEntry(T0 + 0.002, "Alpha", "pcscf", "out", proxy, ephemeral, "Alpha P-CSCF", None,
                   "SIP/2.0 100 Trying", status=100, call_id="c", cseq="1 INVITE", branch="b1"),
        TraceEntry(T0 + 0.003, "Alpha", "ue", "in", proxy, ua, None, "Alpha UE",
                   "SIP/2.0 100 Trying", status=100, call_id="c", cseq="1 INVITE", branch="b1"),
    ]
    ladder = build_ladder(records, "c")
    assert ladder.participants == ("Alpha UE", "Alpha P-CSCF")
    assert [(a.source, a.destination, a.label) for a in ladder.arrows] == [
        (0, 1, "INVITE sip:dave@127.0.0.1:5072"), (1, 0, "100 Trying")]


def test_ladder_is_ascii_safe() -> None:
    odd = TraceEntry(T0, "Alpha", "pcscf", "in", UA1, PROXY, None, "Alpha P-CSCF",
                     "MESSAGE sip:d\u00e9j\u00e0@127.0.0.1 SIP/2.0", method="MESSAGE",
                     call_id="caf\u00e9", cseq="1 MESSAGE", branch="b")
    text = render_ladder([odd], "caf\u00e9", width=60)
    assert text.isascii()
    assert "MESSAGE sip:d?j?@127" in text and "Call-ID: caf?" in text


def test_unknown_call_id_names_the_known_ones() -> None:
    with pytest.raises(UnknownCallId) as caught:
        render_ladder(proxied_call(), "nope", width=70)
    assert "'nope'" in str(caught.value) and "call-1" in str(caught.value)
    assert caught.value.known == ("call-1",)


def test_render_ladder_html_is_svg_with_escaped_text_and_dashed_retransmission() -> None:
    page = render_ladder_html(proxied_call(), "call-1")
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and page.count("<line") == 16
    assert page.count('stroke-dasharray="6,4"') == 1  # the retransmitted 200
    assert "&lt;sip:bill@127.0.0.1&gt;;tag=f1" in page  # headers in the tooltip, escaped
    assert page.index("INVITE sip:dave") < page.index("180 Ringing") < page.index("BYE sip")


def test_calls_lists_call_ids_with_first_time_and_parties() -> None:
    other = entry(9.0, "in", UA1, PROXY, "OPTIONS sip:dave@127.0.0.1 SIP/2.0", "1 OPTIONS",
                  "b9", call_id="call-2")
    first, second = calls([other, *proxied_call()])
    assert (first.call_id, first.first_epoch, first.last_epoch) == ("call-1", T0, T0 + 5.011)
    assert (first.method, first.messages) == ("INVITE", 13)
    assert (first.caller, first.callee) == ("sip:bill@127.0.0.1", "sip:dave@127.0.0.1")
    assert first.participants == ("127.0.0.1:5071", "Alpha P-CSCF", "127.0.0.1:5072")
    assert (second.call_id, second.method, second.messages) == ("call-2", "OPTIONS", 1)


def test_participant_names() -> None:
    assert participant_name("Alpha", "pcscf") == "Alpha P-CSCF"
    assert participant_name("Beta", "scscf") == "Beta S-CSCF"
    assert participant_name("Beta", "border") == "Beta Border"
    assert participant_name("Alpha", "Lobby") == "Alpha Lobby"


# -- recording -------------------------------------------------------------------------------


def invite_with_key_headers() -> Request:
    request = create_initial_request(
        "INVITE", DAVE, from_=BILL, to=DAVE, ids=IDS,
        contact=parse_uri("sip:bill@127.0.0.1:5071"),
        route_set=[parse_uri("sip:127.0.0.1:5060;lr")],
        extra=[("P-Asserted-Identity", "<tel:+15550100001>"), ("Require", "ueconnect"),
               ("Target-MNO", "001-02"), ("Subject", "not kept")],
    )
    return request


def test_entry_of_keeps_the_key_headers() -> None:
    request = invite_with_key_headers()
    local, remote = Address("UDP", "127.0.0.1", 5060), Address("UDP", "127.0.0.1", 5071)
    e = entry_of("in", request, local, remote, T0, operator="Alpha", role="pcscf")
    assert (e.source, e.destination) == ("udp:127.0.0.1:5071", "udp:127.0.0.1:5060")
    assert (e.source_name, e.destination_name) == (None, "Alpha P-CSCF")
    assert e.first_line == f"INVITE {DAVE} SIP/2.0" and e.method == "INVITE"
    assert e.call_id == request.call_id and e.cseq == "1 INVITE"
    assert e.branch == request.top_via.branch and e.from_tag == request.from_.tag
    assert e.to_tag is None
    kept = dict(e.headers)
    assert kept["Target-MNO"] == "001-02" and kept["Require"] == "ueconnect"
    assert kept["P-Asserted-Identity"] == "<tel:+15550100001>" and "Route" in kept
    assert "Subject" not in kept and set(kept) <= set(KEY_HEADERS)


def test_entry_of_a_message_missing_headers_still_records() -> None:
    bare = Request("OPTIONS", DAVE, Headers.of(("Via", "garbage")))
    local, remote = Address("UDP", "127.0.0.1", 5060), Address("UDP", "127.0.0.1", 5071)
    e = entry_of("out", bare, local, remote, T0, operator="Alpha", role="pcscf",
                 names={"udp:127.0.0.1:5071": "Bill"})
    assert (e.call_id, e.cseq, e.branch, e.from_tag) == (None, None, None, None)
    assert (e.source_name, e.destination_name) == ("Alpha P-CSCF", "Bill")


def test_recorders_of_two_roles_append_valid_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"

    async def main() -> None:
        box: list[SipStack] = []

        def answer(event: TuEvent) -> None:
            if isinstance(event, RequestReceived):
                response = make_response(event.request, 200, to_tag=IDS.tag())
                box[0].respond(event.key, response)

        with TraceRecorder(path, "pcscf", "Alpha") as proxy_trace, \
                TraceRecorder(path, "ue", "Alpha") as ue_trace:
            server = SipStack(answer, observer=proxy_trace)
            box.append(server)
            client = SipStack(lambda event: None, observer=ue_trace)
            await client.listen("UDP", "127.0.0.1")
            server_end = (await server.listen("UDP", "127.0.0.1")).local
            request = create_initial_request("OPTIONS", DAVE, from_=BILL, to=DAVE, ids=IDS)
            assert (await client.request(request, server_end)).status_code == 200
            await client.close()
            await server.close()
            assert (proxy_trace.written, ue_trace.written) == (2, 2)

    asyncio.run(asyncio.wait_for(main(), 30))
    lines = path.read_text(encoding="ascii").splitlines()
    assert len(lines) == 4
    records = [json.loads(line) for line in lines]
    for r in records:
        assert set(r) >= {"time", "epoch", "operator", "role", "direction", "from", "to",
                          "from_name", "to_name", "first_line", "call_id", "cseq", "branch",
                          "status", "headers"}
        assert datetime.fromisoformat(r["time"]).timestamp() == pytest.approx(r["epoch"])
        assert r["operator"] == "Alpha" and r["headers"]["From"][0].endswith(f"tag={r['from_tag']}")
    assert [(r["role"], r["direction"]) for r in records] == [
        ("ue", "out"), ("pcscf", "in"), ("pcscf", "out"), ("ue", "in")]
    response = records[2]
    assert response["status"] == 200 and response["first_line"] == "SIP/2.0 200 OK"
    assert response["to_tag"] and response["from_name"] == "Alpha P-CSCF"
    # Read back: both ends of each message are one arrow between the two named roles.
    entries = read_trace(path)
    (summary,) = calls(entries)
    assert summary.participants == ("Alpha UE", "Alpha P-CSCF") and summary.messages == 2


def test_size_cap_stops_tracing_with_one_warning(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "trace.jsonl"
    request = invite_with_key_headers()
    local, remote = Address("UDP", "127.0.0.1", 5060), Address("UDP", "127.0.0.1", 5071)
    line = entry_of("in", request, local, remote, T0, operator="Alpha", role="pcscf").to_json()
    cap = 2 * (len(line) + 1) + 10
    with caplog.at_level(logging.WARNING, logger="ims.trace"), \
            TraceRecorder(path, "pcscf", "Alpha", max_bytes=cap) as recorder:
        for _ in range(5):
            recorder.on_message("in", request, local, remote, T0)
    assert (recorder.written, recorder.dropped) == (2, 3)
    assert path.stat().st_size <= cap
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "size cap" in warnings[0] and str(path) in warnings[0]


def test_recorder_reports_a_file_it_cannot_open(tmp_path: Path) -> None:
    with pytest.raises(TraceFileError, match="cannot open for appending"):
        TraceRecorder(tmp_path / "missing-dir" / "trace.jsonl", "pcscf", "Alpha")


# -- reading ---------------------------------------------------------------------------------


def test_read_trace_round_trips_entries(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    original = proxied_call()
    path.write_text("".join(e.to_json() + "\n" for e in original), encoding="ascii")
    back = read_trace(path)
    assert back == original
    assert [e.line for e in back] == list(range(1, 14))


def test_read_trace_skips_malformed_lines_naming_them(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    good = proxied_call()[0].to_json()
    path.write_bytes(b"\n".join([
        good.encode(), b"{not json", b"", b"[1, 2]", b'{"epoch": "soon"}',
        b"\xff\xfe", good.replace('"direction":"in"', '"direction":"up"').encode(), good.encode(),
        good.replace(f'"epoch":{T0}', '"epoch":NaN').encode(),
        good.replace(f'"epoch":{T0}', '"epoch":1e300').encode(),
    ]) + b"\n")
    problems: list[TraceLineProblem] = []
    entries = read_trace(path, on_problem=problems.append)
    assert [e.line for e in entries] == [1, 8]
    assert [p.line for p in problems] == [2, 4, 5, 6, 7, 9, 10]
    assert "not JSON" in problems[0].reason and "not a JSON object" in problems[1].reason
    assert "'epoch'" in problems[2].reason and "UTF-8" in problems[3].reason
    assert "'direction'" in problems[4].reason
    assert "between 1970 and 9999" in problems[5].reason and "1e+300" in problems[6].reason
    assert str(problems[0]).startswith(f"{path}:2: skipped malformed trace line")


def test_read_trace_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TraceFileError, match="no such file"):
        read_trace(tmp_path / "absent.jsonl")
    with pytest.raises(TraceFileError, match="is a directory"):
        read_trace(tmp_path)


# -- never a crash on a damaged file ---------------------------------------------------------

_FIELD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                          st.text(max_size=20), st.lists(st.text(max_size=5), max_size=3),
                          st.dictionaries(st.text(max_size=5), st.lists(st.text(max_size=5))))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "epoch", "direction", "from", "to", "first_line",
                                        "status", "call_id", "headers", "from_name"]),
                       _FIELD_VALUES))
def test_a_damaged_line_is_skipped_or_read_never_a_crash(record: dict[str, object]) -> None:
    base = json.loads(proxied_call()[0].to_json())
    base.update(record)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "t.jsonl"
        path.write_text(json.dumps(base) + "\n", encoding="utf-8")
        problems: list[TraceLineProblem] = []
        entries = read_trace(path, on_problem=problems.append)
    assert len(entries) + len(problems) == 1
    for e in entries:
        if e.call_id is not None:
            assert render_ladder(entries, e.call_id, width=80).isascii()
            render_ladder_html(entries, e.call_id)
