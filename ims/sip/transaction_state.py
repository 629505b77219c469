"""The four SIP transaction state machines as tables (RFC 3261 section 17, RFC 6026).

Everything a transaction may do is written here: for each (role, state, input) the next state,
the actions to take and the timers to arm. The module knows nothing about messages, addresses
or clocks; `ims.sip.transaction` runs the table. A missing entry means: for an input from the
network, discard it (a stray or late message); for an input from the TU, API misuse; for a
timer, a timer that no longer applies.

Timer durations (section 17.1.1.2, 17.1.2.2, 17.2.1, 17.2.2, table 4 of appendix A; RFC 6026
section 8.4 and 8.11 for L and M) are the one function `timer_duration`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True)
class TimerSettings:
    """T1 (RTT estimate), T2 (max non-INVITE retransmit interval), T4 (max message lifetime in
    the network), in seconds (RFC 3261 section 17.1.1.1 and appendix A)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    # Section 17.1.1.2: Timer D is "at least 32 seconds for unreliable transports"; settable so
    # that tests with a short T1 need not wait it out.
    timer_d: float = 32.0

    def __post_init__(self) -> None:
        if not (self.t1 > 0 and self.t2 > 0 and self.t4 > 0 and self.timer_d >= 0):
            raise ValueError(f"timer values must be positive: {self}")
        if self.t2 < self.t1:
            raise ValueError(f"T2 ({self.t2}) must not be smaller than T1 ({self.t1})")


class _TableKey(Enum):
    """An enum used in the keys of the tables below, looked up several times per message:
    hashed by identity (members are singletons, compared by identity) in C, instead of
    Enum's Python-level hash of the member name."""

    __hash__ = object.__hash__


class Role(_TableKey):
    INVITE_CLIENT = "INVITE client"  # 17.1.1, RFC 6026 section 7.2
    NON_INVITE_CLIENT = "non-INVITE client"  # 17.1.2
    INVITE_SERVER = "INVITE server"  # 17.2.1, RFC 6026 section 7.1
    NON_INVITE_SERVER = "non-INVITE server"  # 17.2.2

    @property
    def is_server(self) -> bool:
        return self in (Role.INVITE_SERVER, Role.NON_INVITE_SERVER)


class State(_TableKey):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"  # RFC 6026
    TERMINATED = "Terminated"


class Stimulus(_TableKey):
    # Client side, from the network: the class of the received response.
    PROVISIONAL = "1xx received"
    SUCCESS = "2xx received"
    FAILURE = "3xx-6xx received"
    # Server side, from the network.
    REQUEST = "request retransmission received"
    ACK = "ACK received"
    # Server side, from the TU.
    SEND_PROVISIONAL = "1xx from TU"
    SEND_SUCCESS = "2xx from TU"
    SEND_FAILURE = "3xx-6xx from TU"
    # From the transport adapter (section 17.1.4, 17.2.4).
    TRANSPORT_ERROR = "transport error"


class Timer(_TableKey):
    A = "A"  # INVITE request retransmit (unreliable only)
    B = "B"  # INVITE transaction timeout
    D = "D"  # wait for response retransmissions (Completed)
    E = "E"  # non-INVITE request retransmit (unreliable only)
    F = "F"  # non-INVITE transaction timeout
    G = "G"  # INVITE final response retransmit (unreliable only)
    H = "H"  # wait for ACK
    I = "I"  # noqa: E741 - the RFC's name; wait for ACK retransmissions (Confirmed)
    J = "J"  # wait for non-INVITE request retransmissions
    K = "K"  # wait for non-INVITE response retransmissions
    L = "L"  # RFC 6026: wait for INVITE retransmissions after a 2xx (Accepted)
    M = "M"  # RFC 6026: wait for 2xx retransmissions from other branches (Accepted)


class Action(_TableKey):
    PASS_TO_TU = "pass the response or ACK to the TU"
    SEND = "send the TU's message: the request (client), a response (server)"
    RETRANSMIT = "retransmit: the request (client) or the last response (server)"
    SEND_ACK = "send the ACK for the non-2xx final response (17.1.1.3)"
    REPORT_TIMEOUT = "tell the TU the transaction timed out"
    REPORT_TRANSPORT_ERROR = "tell the TU the transport failed"


Input = Stimulus | Timer


@dataclass(frozen=True, slots=True)
class Transition:
    state: State
    actions: tuple[Action, ...] = ()
    arm: tuple[Timer, ...] = ()


_R = Role
_S = State
_I = Stimulus
_T = Timer
_A = Action

INITIAL: dict[Role, Transition] = {
    # 17.1.1.2: send the INVITE, start A (unreliable only) and B.
    _R.INVITE_CLIENT: Transition(_S.CALLING, (_A.SEND,), (_T.A, _T.B)),
    # 17.1.2.2: send the request, start E (unreliable only) and F.
    _R.NON_INVITE_CLIENT: Transition(_S.TRYING, (_A.SEND,), (_T.E, _T.F)),
    # 17.2.1: the request is passed to the TU (the 100 Trying is the TU's, see make_trying).
    _R.INVITE_SERVER: Transition(_S.PROCEEDING, (_A.PASS_TO_TU,)),
    # 17.2.2
    _R.NON_INVITE_SERVER: Transition(_S.TRYING, (_A.PASS_TO_TU,)),
}

TRANSITIONS: dict[tuple[Role, State, Input], Transition] = {
    # --- INVITE client, 17.1.1 with RFC 6026 section 7.2 (figure 5) ---------------------------
    (_R.INVITE_CLIENT, _S.CALLING, _T.A): Transition(_S.CALLING, (_A.RETRANSMIT,), (_T.A,)),
    (_R.INVITE_CLIENT, _S.CALLING, _T.B): Transition(_S.TERMINATED, (_A.REPORT_TIMEOUT,)),
    (_R.INVITE_CLIENT, _S.CALLING, _I.PROVISIONAL): Transition(_S.PROCEEDING, (_A.PASS_TO_TU,)),
    (_R.INVITE_CLIENT, _S.CALLING, _I.SUCCESS): Transition(_S.ACCEPTED, (_A.PASS_TO_TU,), (_T.M,)),
    (_R.INVITE_CLIENT, _S.CALLING, _I.FAILURE): Transition(
        _S.COMPLETED, (_A.PASS_TO_TU, _A.SEND_ACK), (_T.D,)
    ),
    (_R.INVITE_CLIENT, _S.PROCEEDING, _I.PROVISIONAL): Transition(_S.PROCEEDING, (_A.PASS_TO_TU,)),
    (_R.INVITE_CLIENT, _S.PROCEEDING, _I.SUCCESS): Transition(
        _S.ACCEPTED, (_A.PASS_TO_TU,), (_T.M,)
    ),
    (_R.INVITE_CLIENT, _S.PROCEEDING, _I.FAILURE): Transition(
        _S.COMPLETED, (_A.PASS_TO_TU, _A.SEND_ACK), (_T.D,)
    ),
    # 17.1.1.2: retransmitted final responses are answered with the ACK, not passed up.
    (_R.INVITE_CLIENT, _S.COMPLETED, _I.FAILURE): Transition(_S.COMPLETED, (_A.SEND_ACK,)),
    (_R.INVITE_CLIENT, _S.COMPLETED, _T.D): Transition(_S.TERMINATED),
    # RFC 6026 section 7.2: every 2xx (retransmission or another fork) goes to the TU.
    (_R.INVITE_CLIENT, _S.ACCEPTED, _I.SUCCESS): Transition(_S.ACCEPTED, (_A.PASS_TO_TU,)),
    (_R.INVITE_CLIENT, _S.ACCEPTED, _T.M): Transition(_S.TERMINATED),
    # --- non-INVITE client, 17.1.2 (figure 6) -------------------------------------------------
    (_R.NON_INVITE_CLIENT, _S.TRYING, _T.E): Transition(_S.TRYING, (_A.RETRANSMIT,), (_T.E,)),
    (_R.NON_INVITE_CLIENT, _S.TRYING, _T.F): Transition(_S.TERMINATED, (_A.REPORT_TIMEOUT,)),
    (_R.NON_INVITE_CLIENT, _S.TRYING, _I.PROVISIONAL): Transition(_S.PROCEEDING, (_A.PASS_TO_TU,)),
    (_R.NON_INVITE_CLIENT, _S.TRYING, _I.SUCCESS): Transition(
        _S.COMPLETED, (_A.PASS_TO_TU,), (_T.K,)
    ),
    (_R.NON_INVITE_CLIENT, _S.TRYING, _I.FAILURE): Transition(
        _S.COMPLETED, (_A.PASS_TO_TU,), (_T.K,)
    ),
    (_R.NON_INVITE_CLIENT, _S.PROCEEDING, _T.E): Transition(
        _S.PROCEEDING, (_A.RETRANSMIT,), (_T.E,)
    ),
    (_R.NON_INVITE_CLIENT, _S.PROCEEDING, _T.F): Transition(_S.TERMINATED, (_A.REPORT_TIMEOUT,)),
    (_R.NON_INVITE_CLIENT, _S.PROCEEDING, _I.PROVISIONAL): Transition(
        _S.PROCEEDING, (_A.PASS_TO_TU,)
    ),
    (_R.NON_INVITE_CLIENT, _S.PROCEEDING, _I.SUCCESS): Transition(
        _S.COMPLETED, (_A.PASS_TO_TU,), (_T.K,)
    ),
    (_R.NON_INVITE_CLIENT, _S.PROCEEDING, _I.FAILURE): Transition(
        _S.COMPLETED, (_A.PASS_TO_TU,), (_T.K,)
    ),
    (_R.NON_INVITE_CLIENT, _S.COMPLETED, _T.K): Transition(_S.TERMINATED),
    # --- INVITE server, 17.2.1 with RFC 6026 section 7.1 (figure 7) ---------------------------
    # A retransmitted INVITE gets the most recent provisional response again.
    (_R.INVITE_SERVER, _S.PROCEEDING, _I.REQUEST): Transition(_S.PROCEEDING, (_A.RETRANSMIT,)),
    (_R.INVITE_SERVER, _S.PROCEEDING, _I.SEND_PROVISIONAL): Transition(_S.PROCEEDING, (_A.SEND,)),
    (_R.INVITE_SERVER, _S.PROCEEDING, _I.SEND_SUCCESS): Transition(
        _S.ACCEPTED, (_A.SEND,), (_T.L,)
    ),
    (_R.INVITE_SERVER, _S.PROCEEDING, _I.SEND_FAILURE): Transition(
        _S.COMPLETED, (_A.SEND,), (_T.G, _T.H)
    ),
    (_R.INVITE_SERVER, _S.COMPLETED, _I.REQUEST): Transition(_S.COMPLETED, (_A.RETRANSMIT,)),
    (_R.INVITE_SERVER, _S.COMPLETED, _T.G): Transition(_S.COMPLETED, (_A.RETRANSMIT,), (_T.G,)),
    # 17.2.1: Timer H means the ACK never came: a transaction failure for the TU.
    (_R.INVITE_SERVER, _S.COMPLETED, _T.H): Transition(_S.TERMINATED, (_A.REPORT_TIMEOUT,)),
    (_R.INVITE_SERVER, _S.COMPLETED, _I.ACK): Transition(_S.CONFIRMED, (), (_T.I,)),
    (_R.INVITE_SERVER, _S.CONFIRMED, _I.ACK): Transition(_S.CONFIRMED),  # absorbed
    (_R.INVITE_SERVER, _S.CONFIRMED, _I.REQUEST): Transition(_S.CONFIRMED),  # absorbed
    (_R.INVITE_SERVER, _S.CONFIRMED, _T.I): Transition(_S.TERMINATED),
    # RFC 6026 section 7.1: in Accepted, INVITE retransmissions are absorbed, the ACK goes to the
    # TU, and the TU's own 2xx retransmissions (13.3.1.4) are sent.
    (_R.INVITE_SERVER, _S.ACCEPTED, _I.REQUEST): Transition(_S.ACCEPTED),
    (_R.INVITE_SERVER, _S.ACCEPTED, _I.ACK): Transition(_S.ACCEPTED, (_A.PASS_TO_TU,)),
    (_R.INVITE_SERVER, _S.ACCEPTED, _I.SEND_SUCCESS): Transition(_S.ACCEPTED, (_A.SEND,)),
    (_R.INVITE_SERVER, _S.ACCEPTED, _T.L): Transition(_S.TERMINATED),
    # --- non-INVITE server, 17.2.2 (figure 8) -------------------------------------------------
    (_R.NON_INVITE_SERVER, _S.TRYING, _I.REQUEST): Transition(_S.TRYING),  # absorbed
    (_R.NON_INVITE_SERVER, _S.TRYING, _I.SEND_PROVISIONAL): Transition(_S.PROCEEDING, (_A.SEND,)),
    (_R.NON_INVITE_SERVER, _S.TRYING, _I.SEND_SUCCESS): Transition(
        _S.COMPLETED, (_A.SEND,), (_T.J,)
    ),
    (_R.NON_INVITE_SERVER, _S.TRYING, _I.SEND_FAILURE): Transition(
        _S.COMPLETED, (_A.SEND,), (_T.J,)
    ),
    (_R.NON_INVITE_SERVER, _S.PROCEEDING, _I.REQUEST): Transition(_S.PROCEEDING, (_A.RETRANSMIT,)),
    (_R.NON_INVITE_SERVER, _S.PROCEEDING, _I.SEND_PROVISIONAL): Transition(
        _S.PROCEEDING, (_A.SEND,)
    ),
    (_R.NON_INVITE_SERVER, _S.PROCEEDING, _I.SEND_SUCCESS): Transition(
        _S.COMPLETED, (_A.SEND,), (_T.J,)
    ),
    (_R.NON_INVITE_SERVER, _S.PROCEEDING, _I.SEND_FAILURE): Transition(
        _S.COMPLETED, (_A.SEND,), (_T.J,)
    ),
    (_R.NON_INVITE_SERVER, _S.COMPLETED, _I.REQUEST): Transition(_S.COMPLETED, (_A.RETRANSMIT,)),
    (_R.NON_INVITE_SERVER, _S.COMPLETED, _T.J): Transition(_S.TERMINATED),
}

# Section 17.1.4 / 17.2.4: a transport error ends the transaction in any live state.
for _role in Role:
    for _state in State:
        if _state is not State.TERMINATED:
            TRANSITIONS.setdefault(
                (_role, _state, Stimulus.TRANSPORT_ERROR),
                Transition(State.TERMINATED, (Action.REPORT_TRANSPORT_ERROR,)),
            )

# The timers that may run in each state: entering a state cancels every other timer (B stops
# once a provisional response arrives, 17.1.1.2; E and F keep running in Proceeding, 17.1.2.2).
LIVE_TIMERS: dict[tuple[Role, State], frozenset[Timer]] = {
    (_R.INVITE_CLIENT, _S.CALLING): frozenset({_T.A, _T.B}),
    (_R.INVITE_CLIENT, _S.COMPLETED): frozenset({_T.D}),
    (_R.INVITE_CLIENT, _S.ACCEPTED): frozenset({_T.M}),
    (_R.NON_INVITE_CLIENT, _S.TRYING): frozenset({_T.E, _T.F}),
    (_R.NON_INVITE_CLIENT, _S.PROCEEDING): frozenset({_T.E, _T.F}),
    (_R.NON_INVITE_CLIENT, _S.COMPLETED): frozenset({_T.K}),
    (_R.INVITE_SERVER, _S.COMPLETED): frozenset({_T.G, _T.H}),
    (_R.INVITE_SERVER, _S.CONFIRMED): frozenset({_T.I}),
    (_R.INVITE_SERVER, _S.ACCEPTED): frozenset({_T.L}),
    (_R.NON_INVITE_SERVER, _S.COMPLETED): frozenset({_T.J}),
}

# Timers that exist only to retransmit over an unreliable transport (17.1.1.2, 17.1.2.2, 17.2.1).
RETRANSMIT_TIMERS = frozenset({Timer.A, Timer.E, Timer.G})
# Timers that only absorb retransmissions: zero on a reliable transport (17.1.1.2, 17.1.2.2,
# 17.2.1, 17.2.2).
ABSORB_TIMERS = frozenset({Timer.D, Timer.I, Timer.J, Timer.K})


def timer_duration(
    timer: Timer,
    state: State,
    settings: TimerSettings,
    reliable: bool,
    previous: float | None,
) -> float | None:
    """The interval to arm `timer` with on entering (or staying in) `state`; None when the timer
    does not run on this transport, 0.0 when it fires at once. `previous` is the interval the
    timer ran with last time, for the retransmission back-off."""
    t1, t2, t4 = settings.t1, settings.t2, settings.t4
    if reliable and timer in RETRANSMIT_TIMERS:
        return None
    if reliable and timer in ABSORB_TIMERS:
        return 0.0
    if timer is Timer.A:
        # 17.1.1.2: T1, then doubled each time, with no cap (Timer B ends it).
        return t1 if previous is None else 2 * previous
    if timer is Timer.E:
        # 17.1.2.2: doubled up to T2 while Trying; T2 once Proceeding.
        if state is State.PROCEEDING:
            return t2
        return t1 if previous is None else min(2 * previous, t2)
    if timer is Timer.G:
        # 17.2.1: T1, then min(2 * previous, T2).
        return t1 if previous is None else min(2 * previous, t2)
    if timer is Timer.D:
        return settings.timer_d
    if timer in (Timer.I, Timer.K):
        return t4
    # B, F, H, J (unreliable), L, M: 64*T1.
    return 64 * t1
