"""The demo's steps and what they report: each step timed and printed, the `--json` document,
and a failure attributed to the operator element and the SIP response that stopped it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ims.dns.errors import DnsError
from ims.sip.errors import SipError
from ims.trace import TraceError, participant_name, read_trace
from ue_ua.errors import ConnectivityFailed, ConnectRefused, RegistrationFailed, UeError
from ue_ua.game import GameError
from ue_ua.game_session import percentile
from ue_ua.lobby import LobbyError


@dataclass
class Report:
    """What `--json` prints; filled in as the steps run."""

    scenario: str
    caller: str
    callee: str
    steps: list[dict[str, object]] = field(default_factory=list)
    permission: str | None = None
    refusal: dict[str, object] | None = None
    path: str | None = None
    connected: bool = False
    setup_ms: float | None = None
    sent: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    rtts: list[float] = field(default_factory=list)
    leaked: dict[str, int] = field(
        default_factory=lambda: {"mappings": 0, "relays": 0, "sessions": 0, "registrations": 0}
    )

    @property
    def directions(self) -> tuple[str, str]:
        """The names of the two directions the game's datagrams are counted under, e.g.
        ("bill_to_dave", "dave_to_bill")."""
        caller, callee = self.caller.lower(), self.callee.lower()
        return f"{caller}_to_{callee}", f"{callee}_to_{caller}"

    def as_json(self, ok: bool) -> dict[str, object]:
        forward, backward = self.directions
        document: dict[str, object] = {
            "scenario": self.scenario,
            "ok": ok,
            "steps": self.steps,
            "permission": self.permission,
        }
        if self.refusal is not None:
            document["refusal"] = self.refusal
        document.update(
            path=self.path,
            connected=self.connected,
            setup_ms=None if self.setup_ms is None else round(self.setup_ms, 3),
            datagrams={
                name: {"sent": self.sent.get(name, 0), "received": self.received.get(name, 0)}
                for name in (forward, backward)
            },
            rtt_ms={
                "p50": round(percentile(self.rtts, 0.5), 3) if self.rtts else None,
                "p95": round(percentile(self.rtts, 0.95), 3) if self.rtts else None,
            },
            leaked=self.leaked,
        )
        return document


class StepFailed(Exception):
    """A demo step did not behave; `role` names the operator element at fault when known."""

    def __init__(self, what: str, role: str | None = None) -> None:
        super().__init__(f"{role}: {what}" if role else what)
        self.role = role


def who_answered(trace: Path | None, status: int, since: float,
                 method: str) -> tuple[str, str | None]:
    """Which element first sent the final response `status` to a `method` request, and the
    Reason it carried: the earliest trace line with it (the element that made it writes "out"
    before anyone forwards it). A response first seen coming in from a UE was that UE's; one
    not traced at all was made up by the UE itself (its transaction timed out or the transport
    failed: RFC 3261 section 8.1.3.1)."""
    entries = []
    if trace is not None and trace.exists():
        try:
            entries = read_trace(trace)
        except TraceError:
            entries = []
    seen = sorted(
        (e for e in entries
         if e.status == status and e.epoch >= since - 1
         and (e.cseq or "").upper().endswith(method)),
        key=lambda e: e.epoch,
    )  # fmt: skip
    if not seen:
        return "the UE itself (no operator element sent it)", None
    first = seen[0]
    reason = first.header("Reason")
    if first.direction == "out":
        return participant_name(first.operator, first.role), reason
    sender = first.source_name or f"the UE at {first.source}"
    return f"{sender} (through {participant_name(first.operator, first.role)})", reason


class Steps:
    def __init__(self, report: Report, out: TextIO) -> None:
        self.start = time.perf_counter()
        self.failed: str | None = None  # what stopped the demo: step, element, response
        self.report = report
        self.out = out  # stdout for the human view, stderr under --json
        self.trace: Path | None = None  # the operators' trace, once the world runs

    def _stopped_by(self, exc: Exception, since: float) -> str:
        """The failure in a user's words: the element and the SIP response, when a response
        stopped the step (and the UE API's error for it); else what went wrong."""
        if isinstance(exc, ConnectRefused):
            who, reason = who_answered(self.trace, exc.status, since, "INVITE")
            return (f"{who} answered {exc.status} {exc.reason}"
                    + (f" (Reason: {reason})" if reason else "")
                    + f"; the UE API raised {type(exc).__name__}: {exc.hint}")  # fmt: skip
        if isinstance(exc, RegistrationFailed):
            who, _ = who_answered(self.trace, exc.status, since, "REGISTER")
            return f"{who} answered the REGISTER with {exc.status} {exc.reason}"
        if isinstance(exc, ConnectivityFailed):
            return f"the ICE checks between the UEs failed: {exc}"
        if isinstance(exc, TimeoutError):
            return "no answer in time"
        return str(exc) or type(exc).__name__

    async def run(
        self, name: str, work: Callable[[], Awaitable[str]], *, timeout: float = 15
    ) -> bool:
        if self.failed:
            print(f"  skip {name}", file=self.out, flush=True)
            self.report.steps.append({"name": name, "ok": False, "ms": None})
            return False
        began, since = time.perf_counter(), time.time()
        ok = True
        try:
            detail = await asyncio.wait_for(work(), timeout)
        except (DnsError, SipError, UeError, LobbyError, GameError, StepFailed, OSError,
                TimeoutError) as exc:  # fmt: skip
            ok, detail = False, self._stopped_by(exc, since)
            self.failed = f"step \"{name}\" failed: {detail}"
        took = (time.perf_counter() - began) * 1000
        at = (time.perf_counter() - self.start) * 1000
        self.report.steps.append({"name": name, "ok": ok, "ms": round(took, 3)})
        print(f"  [{at:7.1f} ms] {'ok  ' if ok else 'FAIL'} {name} ({took:.1f} ms)\n{'':22}"
              f"{detail}", file=self.out, flush=True)
        return ok
