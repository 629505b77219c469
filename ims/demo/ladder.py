"""The call's SIP ladder, from the operators' trace: printed, and written as HTML."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from ims.trace import TraceError, calls, read_trace, render_ladder, render_ladder_html


def show_ladder(trace: Path | None, out: Path, view: TextIO, *, draw: bool = True) -> None:
    """Draw the last INVITE's ladder on `view` (unless `draw` is False: --json keeps the
    terminal to the progress lines) and write it as out/ladder.html."""
    if trace is None or not trace.exists():
        return
    try:
        entries = read_trace(trace)
        invites = [c for c in calls(entries) if c.method == "INVITE"]
        if not invites:
            return
        call_id = invites[-1].call_id
        if draw:
            print("\nThe call's SIP ladder (from the operators' trace):", file=view)
            print(render_ladder(entries, call_id, width=140), file=view)
        html = out / "ladder.html"
        html.write_text(render_ladder_html(entries, call_id), encoding="utf-8")
        print(f"ladder written to {html}", file=view)
    except TraceError as exc:
        print(f"demo: could not draw the ladder: {exc}", file=sys.stderr)
