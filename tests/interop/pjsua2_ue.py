#!/usr/bin/env python3
"""A stock SIP UE built on pjsua2, driven from the command line, for interop tests.

It plays one scenario (register, place a call, answer a call), prints one JSON object per
line on stdout for each event and exits 0 when the scenario completed, always within
--timeout. Tests run it as a subprocess (see pjsua2_runner.py) so that a crash inside the
GPL binding can never take pytest down; ims/ and ue_ua/ never import pjsua2.

The binding (pjsua2-pybind11 0.1a3) deadlocks on the GIL when pjsua runs its own worker
threads, so everything runs on this thread: no worker threads, and the event loop is
``pjsua_handle_events()`` called through ctypes (the binding does not expose
``Endpoint.libHandleEvents``). A Python exception escaping a callback aborts the process, so
every callback body goes through ``_guarded``. Callback parameters are copies: answering is
done through ``Call.answer``.

Everything binds 127.0.0.1 only. Media is offered and answered "inactive" (RFC 3264 §5.1,
§6.1), so pjsua never sends RTP/RTCP, whatever address the peer's SDP names.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import IO, Any

EXIT_OK = 0
EXIT_SCENARIO_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_HARNESS_ERROR = 4

LOOPBACK = "127.0.0.1"

# pjsua C constants the binding does not export (pjsua.h / pjmedia/types.h, 2.14).
PJMEDIA_DIR_NONE = 0
PJSUA_CALL_SET_MEDIA_DIR = 128
PJSUA_DESTROY_NO_NETWORK = 3

# Time kept back from --timeout for the teardown (BYE linger, un-REGISTER, libDestroy).
TEARDOWN_SHARE = 0.2
TEARDOWN_MAX = 1.5
# After we send BYE, keep pumping this long so its 200 is absorbed rather than dropped.
BYE_LINGER = 0.2
PUMP_SLICE_MS = 20

_STARTED = time.monotonic()


# --- options -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    registrar_uri: str
    user: str
    password: str
    domain: str
    expires: int


@dataclass(frozen=True)
class UeOptions:
    local_port: int
    tcp: bool
    registration: Registration | None
    proxy: str | None
    id_uri: str
    call: str | None
    headers: tuple[tuple[str, str], ...]
    answer: bool
    answer_code: int
    hangup_after: float | None
    timeout: float
    log_file: str | None
    log_level: int


def _header_arg(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    name = name.strip()
    # RFC 3261 §25.1: header-name is a token; a space or an empty name cannot be sent.
    if not sep or not name or any(c in name for c in " \t\r\n"):
        raise argparse.ArgumentTypeError(f"--header wants 'Name: value', got {text!r}")
    if "\r" in value or "\n" in value:
        raise argparse.ArgumentTypeError(f"--header value must be one line, got {text!r}")
    return name, value.strip()


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pjsua2_ue.py",
        description="pjsua2 UE for interop tests: one scenario, JSON events on stdout.",
    )
    parser.add_argument("--local-port", type=int, required=True,
                        help="SIP port bound on 127.0.0.1 (UDP, and TCP with --tcp)")
    parser.add_argument("--tcp", action="store_true", help="also listen on TCP (same port)")
    parser.add_argument("--register", metavar="REGISTRAR_URI", help="REGISTER with this registrar")
    parser.add_argument("--user", help="user part of the AOR and digest username")
    parser.add_argument("--password", default="", help="digest password")
    parser.add_argument("--domain", help="domain of the AOR sip:USER@DOMAIN")
    parser.add_argument("--expires", type=int, default=300, help="REGISTER expiry (s)")
    parser.add_argument("--proxy", metavar="OUTBOUND_PROXY_URI",
                        help="outbound proxy for every request (add ;lr for a loose router)")
    parser.add_argument("--id-uri", help="own identity when not registering "
                        "(default sip:USER@DOMAIN or sip:pjsua2-ue@127.0.0.1)")
    parser.add_argument("--call", metavar="TARGET_URI", help="place one call to this URI")
    parser.add_argument("--header", action="append", type=_header_arg, default=[],
                        metavar="'NAME: VALUE'", help="extra header on the INVITE (repeatable)")
    parser.add_argument("--answer", action="store_true", help="wait for one call and answer it")
    parser.add_argument("--answer-code", type=int, default=200,
                        help="final response to the incoming INVITE (default 200)")
    parser.add_argument("--hangup-after", type=_non_negative_float, metavar="SECONDS",
                        help="send BYE this long after the call is confirmed "
                        "(default: wait for the peer's BYE)")
    parser.add_argument("--timeout", type=_positive_float, default=10.0, metavar="SECONDS",
                        help="hard limit for the whole run, teardown included (default 10)")
    parser.add_argument("--log-file", help="pjsua log file (stdout is reserved for events)")
    parser.add_argument("--log-level", type=int, default=0, help="pjsua log level 0-6")
    return parser


def parse_options(argv: Sequence[str]) -> UeOptions:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 1 <= args.local_port <= 65535:
        parser.error(f"--local-port must be 1-65535, got {args.local_port}")
    if args.call and args.answer:
        parser.error("--call and --answer are two scenarios: pick one")
    if not 200 <= args.answer_code <= 699 or 300 <= args.answer_code < 400:
        parser.error(f"--answer-code must be 2xx or 4xx-6xx, got {args.answer_code}")
    registration = None
    if args.register:
        if not args.user or not args.domain:
            parser.error("--register needs --user and --domain")
        registration = Registration(args.register, args.user, args.password, args.domain,
                                    args.expires)
    elif args.user or args.domain:
        parser.error("--user/--domain only make sense with --register")
    if args.id_uri:
        id_uri = args.id_uri
    elif registration is not None:
        id_uri = f"sip:{registration.user}@{registration.domain}"
    else:
        id_uri = f"sip:pjsua2-ue@{LOOPBACK}"
    return UeOptions(
        local_port=args.local_port, tcp=args.tcp, registration=registration, proxy=args.proxy,
        id_uri=id_uri, call=args.call, headers=tuple(args.header), answer=args.answer,
        answer_code=args.answer_code, hangup_after=args.hangup_after, timeout=args.timeout,
        log_file=args.log_file, log_level=args.log_level,
    )


# --- events --------------------------------------------------------------------------------


class EventSink:
    """One JSON object per line; ``t`` is seconds since the harness started."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, "t": round(time.monotonic() - _STARTED, 3), **fields}
        self._stream.write(json.dumps(record, sort_keys=False) + "\n")
        self._stream.flush()


def split_message_head(whole_msg: str) -> tuple[str, list[tuple[str, str]]]:
    """Start line and (name, value) header pairs of a SIP message, in received order.

    Continuation lines are unfolded (RFC 3261 §7.3.1); names keep the case and the compact
    form they arrived with.
    """
    text = whole_msg.replace("\r\n", "\n")
    head = text.split("\n\n", 1)[0]
    lines = head.split("\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
        elif ":" in line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return lines[0].strip(), headers


# --- the pjsua2 endpoint -------------------------------------------------------------------


class Phase(Enum):
    REGISTERING = "registering"
    READY = "ready"  # registered (or nothing to register): start the call part
    IN_CALL = "in_call"  # call placed, or waiting for / holding the incoming call
    DONE = "done"


@dataclass
class CallRecord:
    call: Any  # the pjsua2 Call subclass instance; kept alive here (pybind11 ownership)
    role: str
    confirmed_at: float | None = None
    disconnected: bool = False
    answered: bool = False
    bye_sent: bool = False
    last_code: int = 0


@dataclass
class Outcome:
    exit_code: int | None = None
    detail: str = ""
    calls: list[CallRecord] = field(default_factory=list)


def _load_handle_events(pj: Any) -> Callable[[int], int]:
    libdir = os.path.join(os.path.dirname(pj.__file__), "pjsua2_pybind11.libs")
    candidates = sorted(glob.glob(os.path.join(libdir, "libpjsua-*.so*")))
    if not candidates:
        raise RuntimeError(f"no libpjsua-*.so in {libdir}: cannot pump pjsua events")
    # Same file the binding already loaded, so dlopen hands back the live library.
    lib = ctypes.CDLL(candidates[0])
    handle = lib.pjsua_handle_events
    handle.argtypes = [ctypes.c_uint]
    handle.restype = ctypes.c_int

    def pump(msec: int) -> int:
        return int(handle(msec))

    return pump


class PjsuaUe:
    """Drives one scenario; callbacks only record, the loop in ``run`` decides."""

    def __init__(self, pj: Any, options: UeOptions, sink: EventSink) -> None:
        self.pj = pj
        self.options = options
        self.sink = sink
        self.outcome = Outcome()
        self.phase = Phase.REGISTERING if options.registration else Phase.READY
        self.registered = False
        self.unregistered = False
        self.scenario_call: CallRecord | None = None  # the one call the scenario is about
        self.answer_due = False
        self.account: Any = None
        self.endpoint: Any = None

    # Callbacks run inside pjsua_handle_events on this thread; an escaping exception would
    # abort the process, so each one is wrapped.
    def _guarded(self, where: str, body: Callable[[], None]) -> None:
        try:
            body()
        except BaseException as exc:
            self._fail(EXIT_HARNESS_ERROR, f"{where}: {type(exc).__name__}: {exc}")

    def _fail(self, exit_code: int, detail: str) -> None:
        self.sink.emit("error", message=detail)
        if self.outcome.exit_code is None:
            self.outcome.exit_code = exit_code
            self.outcome.detail = detail

    def _make_classes(self) -> tuple[type, type]:
        pj = self.pj
        ue = self

        class UeCall(pj.Call):  # type: ignore[misc,name-defined]
            record: CallRecord | None = None

            def onCallState(self, prm: Any) -> None:
                ue._guarded("onCallState", lambda: ue.on_call_state(self))

        class UeAccount(pj.Account):  # type: ignore[misc,name-defined]
            def onRegState(self, prm: Any) -> None:
                ue._guarded("onRegState", lambda: ue.on_reg_state(prm))

            def onIncomingCall(self, prm: Any) -> None:
                ue._guarded("onIncomingCall", lambda: ue.on_incoming_call(UeCall, prm))

        return UeAccount, UeCall

    # --- callbacks ---

    def on_reg_state(self, prm: Any) -> None:
        code, reason, expires = int(prm.code), str(prm.reason), int(prm.expiration)
        if self.phase is Phase.DONE:
            self.unregistered = True
            self.sink.emit("unregistered", code=code, reason=reason)
            if not 200 <= code < 300:
                self._fail(EXIT_SCENARIO_FAILED, f"un-REGISTER answered {code} {reason}")
            return
        if 200 <= code < 300 and expires > 0:
            self.registered = True
            self.sink.emit("registered", code=code, reason=reason, expires=expires)
            if self.phase is Phase.REGISTERING:
                self.phase = Phase.READY
        else:
            self.sink.emit("registration_failed", code=code, reason=reason,
                           status=int(prm.status))
            self._fail(EXIT_SCENARIO_FAILED, f"REGISTER failed: {code} {reason}")

    def on_incoming_call(self, call_cls: type, prm: Any) -> None:
        call = call_cls(self.account, prm.callId)
        record = CallRecord(call=call, role="UAS")
        call.record = record
        self.outcome.calls.append(record)
        start_line, headers = split_message_head(str(prm.rdata.wholeMsg))
        parts = start_line.split(" ")
        self.sink.emit(
            "incoming_call", call_id=prm.callId, method=parts[0],
            request_uri=parts[1] if len(parts) > 1 else "",
            source=str(prm.rdata.srcAddress), headers=[list(h) for h in headers],
        )
        if self.options.answer and self.scenario_call is None:
            self.scenario_call = record
            self.answer_due = True
        else:
            # Not part of the scenario: refuse it, nothing else rings here (RFC 3261 §21.4.18).
            self._respond(call, 486, "Busy Here")

    def on_call_state(self, call: Any) -> None:
        info = call.info
        record: CallRecord | None = call.record
        code = int(info.lastStatusCode)
        state = info.state.name
        self.sink.emit("call_state", call_id=info.id, state=state, code=code,
                       reason=str(info.lastReason), role=info.role.name,
                       sip_call_id=str(info.callIdString))
        if record is None:
            return
        record.last_code = code
        if info.state == self.pj.InvState.CONFIRMED and record.confirmed_at is None:
            record.confirmed_at = time.monotonic()
            self.sink.emit("confirmed", call_id=info.id, code=code, role=info.role.name)
        elif info.state == self.pj.InvState.DISCONNECTED and not record.disconnected:
            record.disconnected = True
            self.sink.emit("disconnected", call_id=info.id, code=code,
                           reason=str(info.lastReason), role=info.role.name,
                           was_confirmed=record.confirmed_at is not None,
                           by_us=record.bye_sent)

    # --- actions ---

    def _inactive_media(self, prm: Any) -> None:
        # One audio line marked a=inactive: the offer/answer completes, no RTP is ever sent.
        prm.opt.audioCount = 1
        prm.opt.flag |= PJSUA_CALL_SET_MEDIA_DIR
        directions = self.pj.IntVector()
        directions.append(PJMEDIA_DIR_NONE)
        prm.opt.mediaDir = directions

    def _respond(self, call: Any, code: int, reason: str = "") -> None:
        prm = self.pj.CallOpParam(True)
        prm.statusCode = self.pj.StatusCode(code)
        if reason:
            prm.reason = reason
        if 200 <= code < 300:
            self._inactive_media(prm)
        call.answer(prm)

    def _place_call(self, call_cls: type, target: str) -> None:
        call = call_cls(self.account)
        record = CallRecord(call=call, role="UAC")
        call.record = record
        self.outcome.calls.append(record)
        self.scenario_call = record
        prm = self.pj.CallOpParam(True)
        self._inactive_media(prm)
        for name, value in self.options.headers:
            header = self.pj.SipHeader()
            header.hName = name
            header.hValue = value
            prm.txOption.headers.append(header)
        self.sink.emit("calling", target=target, headers=[list(h) for h in self.options.headers])
        call.makeCall(target, prm)

    def _hangup(self, record: CallRecord) -> None:
        record.bye_sent = True
        record.call.hangup(self.pj.CallOpParam(True))

    # --- the scenario ---

    def _step(self, now: float, call_cls: type) -> None:
        """Advance the scenario; sets outcome.exit_code when it is over."""
        if self.outcome.exit_code is not None:
            return
        if self.phase is Phase.READY:
            if self.options.call:
                self._place_call(call_cls, self.options.call)
                self.phase = Phase.IN_CALL
            elif self.options.answer:
                self.sink.emit("waiting_for_call")
                self.phase = Phase.IN_CALL
            else:
                self.outcome.exit_code = EXIT_OK
                self.outcome.detail = "registered"
            return
        if self.phase is not Phase.IN_CALL:
            return
        record = self.scenario_call
        if record is None:
            return
        if self.answer_due:
            self.answer_due = False
            record.answered = True
            self._respond(record.call, self.options.answer_code)
        if (record.confirmed_at is not None and not record.disconnected
                and not record.bye_sent and self.options.hangup_after is not None
                and now >= record.confirmed_at + self.options.hangup_after):
            self._hangup(record)
        if not record.disconnected:
            return
        if record.confirmed_at is not None:
            self.outcome.exit_code = EXIT_OK
            self.outcome.detail = "call confirmed and ended"
        elif record.role == "UAS" and not 200 <= self.options.answer_code < 300:
            self.outcome.exit_code = EXIT_OK
            self.outcome.detail = f"incoming call refused with {self.options.answer_code}"
        else:
            self._fail(EXIT_SCENARIO_FAILED,
                       f"call ended before it was confirmed (last status {record.last_code})")

    def _pump_until(self, pump: Callable[[int], int], until: float,
                    done: Callable[[], bool]) -> None:
        while not done():
            left = until - time.monotonic()
            if left <= 0:
                return
            pump(max(1, min(PUMP_SLICE_MS, int(left * 1000))))

    def run(self) -> int:
        pj = self.pj
        options = self.options
        hard_deadline = _STARTED + options.timeout
        teardown = min(TEARDOWN_MAX, options.timeout * TEARDOWN_SHARE)
        scenario_deadline = hard_deadline - teardown

        ep = pj.Endpoint()
        self.endpoint = ep
        ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.medConfig.threadCnt = 0
        cfg.logConfig.consoleLevel = 0
        cfg.logConfig.level = options.log_level
        if options.log_file:
            cfg.logConfig.filename = options.log_file
        ep.libInit(cfg)
        pump = _load_handle_events(pj)

        transport = pj.TransportConfig()
        transport.port = options.local_port
        transport.boundAddress = LOOPBACK
        transport.publicAddress = LOOPBACK
        udp_id = ep.transportCreate(pj.TransportType.UDP, transport)
        if options.tcp:
            ep.transportCreate(pj.TransportType.TCP, transport)
        ep.libStart()
        ep.audDevManager.setNullDev()
        self.sink.emit("ready", port=options.local_port, tcp=options.tcp, id_uri=options.id_uri)

        account_cls, call_cls = self._make_classes()
        acc_cfg = pj.AccountConfig()
        acc_cfg.idUri = options.id_uri
        if not options.tcp:
            acc_cfg.sipConfig.transportId = udp_id
        if options.proxy:
            acc_cfg.sipConfig.proxies.append(options.proxy)
        reg = options.registration
        if reg is not None:
            acc_cfg.regConfig.registrarUri = reg.registrar_uri
            acc_cfg.regConfig.timeoutSec = reg.expires
            acc_cfg.regConfig.retryIntervalSec = 0  # one attempt: a failure is the result
            acc_cfg.sipConfig.authCreds.append(
                pj.AuthCredInfo("digest", "*", reg.user, 0, reg.password))
        self.account = account_cls()
        self.account.create(acc_cfg, True)

        # The scenario.
        while self.outcome.exit_code is None:
            now = time.monotonic()
            if now >= scenario_deadline:
                self._fail(EXIT_TIMEOUT, f"scenario not complete after {options.timeout}s "
                           f"(phase {self.phase.value})")
                break
            self._step(now, call_cls)
            if self.outcome.exit_code is None:
                pump(max(1, min(PUMP_SLICE_MS, int((scenario_deadline - now) * 1000))))
        self.phase = Phase.DONE
        self._teardown(pump, hard_deadline)
        return self.outcome.exit_code if self.outcome.exit_code is not None else EXIT_OK

    def _teardown(self, pump: Callable[[int], int], hard_deadline: float) -> None:
        # Leave the network tidy: end calls (BYE/CANCEL), let the responses in, un-REGISTER
        # (RFC 3261 §10.2.2, Expires 0), all inside the time kept back for it.
        limit = hard_deadline - 0.1
        live = [r for r in self.outcome.calls if not r.disconnected]
        for record in live:
            try:
                self._hangup(record)
            except Exception as exc:  # a call already on its way down
                self.sink.emit("error", message=f"hangup: {exc}")
        if any(r.bye_sent for r in self.outcome.calls):
            linger_until = min(limit, time.monotonic() + BYE_LINGER)
            self._pump_until(pump, linger_until, lambda: False)
        if self.registered:
            try:
                self.account.setRegistration(False)
                self._pump_until(pump, limit, lambda: self.unregistered)
            except Exception as exc:
                self.sink.emit("error", message=f"un-REGISTER: {exc}")
            if not self.unregistered:
                self.sink.emit("error", message="no answer to un-REGISTER before --timeout")
        for record in self.outcome.calls:
            record.call = None
        self.outcome.calls.clear()
        self.scenario_call = None
        if self.account is not None:
            self.account.shutdown()
            self.account = None
        # Everything that needed the network is done; do not let pjsua wait for more.
        self.endpoint.libDestroy(PJSUA_DESTROY_NO_NETWORK)


def main(argv: Sequence[str] | None = None) -> int:
    # stdout carries the events only: pjlib prints to fd 1, so fd 1 becomes stderr and the
    # events go to a private copy of the original stdout.
    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    sys.stdout.flush()
    os.dup2(2, 1)
    sink = EventSink(events)
    try:
        options = parse_options(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse already wrote the message to stderr
        code = exc.code if isinstance(exc.code, int) else EXIT_USAGE
        sink.emit("result", ok=code == EXIT_OK, exit_code=code, detail="usage")
        return code
    try:
        import pjsua2 as pj  # GPL binding, test-only
    except ImportError as exc:
        sink.emit("error", message=f"cannot import pjsua2: {exc}")
        sink.emit("result", ok=False, exit_code=EXIT_HARNESS_ERROR, detail="no pjsua2")
        return EXIT_HARNESS_ERROR
    ue = PjsuaUe(pj, options, sink)
    try:
        code = ue.run()
    except Exception as exc:
        ue._fail(EXIT_HARNESS_ERROR, f"{type(exc).__name__}: {exc}")
        code = EXIT_HARNESS_ERROR
    sink.emit("result", ok=code == EXIT_OK, exit_code=code, detail=ue.outcome.detail)
    return code


if __name__ == "__main__":
    exit_code = main()
    sys.stderr.flush()
    # pybind11 objects torn down during interpreter finalisation after libDestroy can
    # crash; the run is over, so leave without finalising.
    os._exit(exit_code)
