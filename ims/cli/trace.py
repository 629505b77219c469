"""`ueconnect trace FILE`: list the calls of a ladder trace or draw one call's ladder.

The trace is the JSON Lines file of the configuration's [trace] path (ims.trace). Without
--call-id the most recent call is drawn; --html writes the same ladder as an HTML page.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ims.cli.report import bounded_int, help_page
from ims.trace import (
    TraceError,
    TraceLineProblem,
    calls,
    iso_time,
    read_trace,
    render_ladder,
    render_ladder_html,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "trace", help="show a SIP ladder trace: list its calls or draw one call",
        **help_page(
            "Read a ladder trace (the JSON Lines file an operator writes where its [trace] "
            "path says, or `ueconnect demo` under --out) and list its calls, or draw one "
            "call's SIP ladder in the terminal, and with --html as an HTML page. Default: the "
            "most recent call, as wide as the terminal. Malformed lines are named and skipped.",
            ["ueconnect trace ueconnect-demo/trace.jsonl --list",
             "ueconnect trace ueconnect-demo/trace.jsonl",
             "ueconnect trace alpha-trace.jsonl --call-id 3f2a9c --width 120 --html call.html"]))
    parser.add_argument("file", metavar="FILE", help="the JSON Lines trace ([trace] path)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--call-id", metavar="ID",
                       help="the call to draw (default: the most recent call)")
    which.add_argument("--list", action="store_true", help="list the calls instead")
    parser.add_argument("--width", type=bounded_int(40, 1000, noun="a number of characters"),
                        metavar="N",
                        help="diagram width in characters (default: the terminal's)")
    parser.add_argument("--html", metavar="OUT",
                        help="also write the ladder as an HTML page (SVG) to OUT")
    parser.set_defaults(func=_trace)


MAX_PROBLEMS_SHOWN = 10  # malformed lines named one by one; the rest are counted


class _Problems:
    """Names the first malformed lines, counts the rest: a file that is not a trace at all
    (a config file given by mistake) must not flood the terminal with a line per line."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, problem: TraceLineProblem) -> None:
        self.count += 1
        if self.count <= MAX_PROBLEMS_SHOWN:
            print(problem, file=sys.stderr)

    def summary(self, path: Path) -> None:
        more = self.count - MAX_PROBLEMS_SHOWN
        if more > 0:
            print(f"{path}: {more} more malformed line{'s' if more != 1 else ''} skipped",
                  file=sys.stderr)


def _trace(args: argparse.Namespace) -> int:
    path = Path(args.file)
    problems = _Problems()
    try:
        entries = read_trace(path, on_problem=problems)
    except TraceError as exc:
        print(f"ueconnect trace: {exc}", file=sys.stderr)
        return 1
    problems.summary(path)
    if problems.count and not entries:
        print(f"ueconnect trace: {path} is not a ladder trace: none of its lines is a trace "
              "entry; give the JSON Lines file of an operator's [trace] path", file=sys.stderr)
        return 1
    summaries = calls(entries)
    if args.list:
        if not summaries:
            print(f"{path}: no SIP calls in the trace")
            return 0
        print(f"{'START (UTC)':<27} {'MSGS':>4}  {'METHOD':<9} {'CALL-ID':<36} FROM -> TO")
        for s in summaries:
            print(f"{iso_time(s.first_epoch):<27} {s.messages:>4}  {s.method or '-':<9} "
                  f"{s.call_id:<36} {s.caller or '?'} -> {s.callee or '?'}")
        return 0
    if args.call_id is not None:
        call_id = args.call_id
    elif summaries:
        call_id = max(summaries, key=lambda s: s.first_epoch).call_id
    else:
        print(f"ueconnect trace: {path} has no SIP calls to draw", file=sys.stderr)
        return 1
    width = args.width or shutil.get_terminal_size((100, 24)).columns
    try:
        sys.stdout.write(render_ladder(entries, call_id, width))
        if args.html:
            Path(args.html).write_text(render_ladder_html(entries, call_id), encoding="utf-8")
    except TraceError as exc:
        print(f"ueconnect trace: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"ueconnect trace: cannot write {args.html}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0
