"""A per-link delay without sch_netem: NFQUEUE in the kernel, the waiting in userspace.

The testbed's `--netem-delay` wants MS milliseconds on the egress of each radio link (the UE's
eth0, the CGN's in0). Where the kernel has no sch_netem (CONFIG_NET_SCH_NETEM unset) this
module gives the same one-way delay another way: an iptables rule in the namespace,

    iptables-legacy -t mangle -A POSTROUTING -o DEV -j NFQUEUE --queue-num N --queue-bypass

hands every datagram leaving DEV (forwarded and local alike) to nfnetlink_queue, a netlink
socket of ours bound to queue N receives its packet id, and the verdict NF_ACCEPT is sent
`delay_ms` later. The packet itself stays in the kernel (copy mode META: only its metadata
crosses), so nothing is rewritten; FIFO order is kept because every packet waits the same time.

Three layers, as elsewhere in the project:

- a sans-IO codec for nfnetlink_queue (linux/netfilter/nfnetlink_queue.h): `encode_config`,
  `encode_verdict`, `parse_messages`; pure functions over bytes and frozen dataclasses;
- `DelayLine`, the waiting room as a state machine with time as an input (`push`, `due`,
  `get_timer`), so the order and the backlog rule are testable with a fake clock;
- `LinkDelay`, the asyncio adapter that owns the socket (made in the namespace's own thread, a
  netlink socket belongs to the namespace that made it), and `start_link_delay`, which binds
  one in a `NamespaceLoop`, adds the rule and returns a `RunningLinkDelay` handle.

Safety nets: `--queue-bypass` lets packets through unqueued whenever no socket is bound (a
crashed process does not cut the link), and NFQA_CFG_F_FAIL_OPEN makes the kernel accept rather
than drop when its own queue or our socket buffer overflows. Beyond `backlog` packets waiting,
we accept at once (counted as `dropped`: dropped from the delay, not from the link).

`netem_available()` says whether the kernel has netem, so callers take `tc ... netem` when it
is there and this module otherwise.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import errno
import gzip
import logging
import os
import shutil
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ims.testbed.builder import run_command
from ims.testbed.errors import CommandFailed, TestbedError, TestbedUsageError, ToolMissing
from ims.testbed.netns import NamespaceLoop

__all__ = [
    "ConfigCommand",
    "ConfigRequest",
    "CopyMode",
    "DelayLine",
    "LinkDelay",
    "LinkDelayError",
    "LinkDelayUsageError",
    "NetemProbe",
    "NetlinkAck",
    "NfqueueDecodeError",
    "NfqueueUnavailable",
    "PacketQueued",
    "QueueTaken",
    "RunningLinkDelay",
    "Verdict",
    "encode_config",
    "encode_verdict",
    "iptables_rule",
    "netem_available",
    "parse_messages",
    "probe_netem",
    "start_link_delay",
]

log = logging.getLogger(__name__)

# -- constants, in the kernel's own names -------------------------------------------------------

NETLINK_NETFILTER = 12  # <linux/netlink.h>
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLM_F_REQUEST, NLM_F_ACK = 0x01, 0x04
NLA_F_NESTED, NLA_F_NET_BYTEORDER = 1 << 15, 1 << 14
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

NFNETLINK_V0 = 0  # <linux/netfilter/nfnetlink.h>
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2

NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_IFINDEX_OUTDEV, NFQA_PAYLOAD = 1, 2, 6, 10
NFQA_CAP_LEN = 13
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQA_CFG_F_FAIL_OPEN = 1 << 0

NF_DROP, NF_ACCEPT = 0, 1  # <linux/netfilter.h>

# nlmsghdr and nlattr are in host byte order; the nfqueue structs inside are big-endian.
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NFGENMSG = struct.Struct("!BBH")  # family, version, res_id (the queue number)
_NLATTR = struct.Struct("=HH")  # len, type
_PACKET_HDR = struct.Struct("!IHB")  # packet_id, hw_protocol, hook
_VERDICT_HDR = struct.Struct("!II")  # verdict, id
_CONFIG_CMD = struct.Struct("!BxH")  # command, _pad, pf
_CONFIG_PARAMS = struct.Struct("!IB")  # copy_range, copy_mode (packed: 5 bytes)
_U32 = struct.Struct("!I")
_NLMSGERR = struct.Struct("=i")  # error, followed by the offending request's header

QUEUE_NUM_MAX = 65535
DEFAULT_BACKLOG = 1024
KERNEL_HEADROOM = 4096  # packets the kernel may hold beyond our backlog (see LinkDelay.open)
ACK_TIMEOUT = 2.0
RECV_BUFFER = 1 << 20  # socket receive buffer (SO_RCVBUFFORCE as root): room for bursts
RECV_SIZE = 1 << 16
RECVS_PER_WAKEUP = 64  # bounded work per readiness callback
OVERFLOW_LOG_INTERVAL = 1.0  # seconds between "beyond the backlog" warnings
IPTABLES = "iptables-legacy"


# -- errors -------------------------------------------------------------------------------------


class LinkDelayError(TestbedError):
    """Base of the delay's errors (the host, the kernel or the queue refusing)."""


class LinkDelayUsageError(LinkDelayError, TestbedUsageError):
    """An argument the delay cannot work with (the message names it)."""


class NfqueueUnavailable(LinkDelayError):
    """The kernel has no nfnetlink_queue (or no NFQUEUE target) in this namespace."""


class QueueTaken(LinkDelayError):
    """Another socket holds the queue number in this namespace."""


class NfqueueDecodeError(LinkDelayError, ValueError):
    """The kernel sent bytes that are not nfnetlink as we know it (the message says where)."""


# -- the codec (sans-IO) ------------------------------------------------------------------------


class ConfigCommand(enum.IntEnum):
    """enum nfqnl_msg_config_cmds. PF_BIND/PF_UNBIND are no-ops since Linux 3.8."""

    NONE = 0
    BIND = 1
    UNBIND = 2


class CopyMode(enum.IntEnum):
    """enum nfqnl_config_mode: what of each packet crosses to userspace."""

    NONE = 0
    META = 1  # the packet header attributes only, no payload
    PACKET = 2  # plus up to copy_range bytes of the packet


@dataclass(frozen=True)
class ConfigRequest:
    """One NFQNL_MSG_CONFIG: each field left None is not sent (the kernel keeps its value)."""

    queue_num: int
    command: ConfigCommand | None = None
    copy_mode: CopyMode | None = None
    copy_range: int = 0
    queue_maxlen: int | None = None
    flags: int | None = None  # NFQA_CFG_F_*, applied under mask `flags_mask`
    flags_mask: int | None = None


@dataclass(frozen=True)
class Verdict:
    """One NFQNL_MSG_VERDICT for packet `packet_id` of queue `queue_num`."""

    queue_num: int
    packet_id: int
    verdict: int = NF_ACCEPT


@dataclass(frozen=True)
class PacketQueued:
    """NFQNL_MSG_PACKET: a packet waits in queue `queue_num` for our verdict."""

    queue_num: int
    packet_id: int
    hw_protocol: int  # ethertype, e.g. 0x0800 for IPv4
    hook: int  # NF_INET_* hook it was queued from (4 = POST_ROUTING)
    outdev: int | None = None  # ifindex (NFQA_IFINDEX_OUTDEV)
    payload: bytes = b""  # NFQA_PAYLOAD, empty in copy mode META
    cap_len: int | None = None  # NFQA_CAP_LEN: the packet's length when payload was cut


@dataclass(frozen=True)
class NetlinkAck:
    """NLMSG_ERROR: `error` 0 acknowledges request `seq`, a negative errno refuses it."""

    seq: int
    error: int

    @property
    def ok(self) -> bool:
        return self.error == 0


Event = PacketQueued | NetlinkAck


def _msg_type(msg: int) -> int:
    return (NFNL_SUBSYS_QUEUE << 8) | msg


def _attr(kind: int, value: bytes) -> bytes:
    """One nlattr, padded to NLA_ALIGNTO (4)."""
    length = _NLATTR.size + len(value)
    return _NLATTR.pack(length, kind) + value + b"\0" * (-length % 4)


def _nfnl_message(msg: int, flags: int, seq: int, queue_num: int, attrs: bytes) -> bytes:
    body = _NFGENMSG.pack(socket.AF_UNSPEC, NFNETLINK_V0, queue_num) + attrs
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), _msg_type(msg), flags, seq, 0) + body


def _check_queue_num(queue_num: int) -> None:
    if not 0 <= queue_num <= QUEUE_NUM_MAX:
        raise LinkDelayUsageError(f"queue number {queue_num}: give 0 to {QUEUE_NUM_MAX}")


def encode_config(request: ConfigRequest, seq: int, *, ack: bool = True) -> bytes:
    """NFQNL_MSG_CONFIG bytes. The kernel applies the command first, then the parameters,
    so BIND and its copy mode, queue length and flags may travel in one message."""
    _check_queue_num(request.queue_num)
    attrs = b""
    if request.command is not None:
        attrs += _attr(NFQA_CFG_CMD, _CONFIG_CMD.pack(request.command, socket.AF_UNSPEC))
    if request.copy_mode is not None:
        attrs += _attr(NFQA_CFG_PARAMS, _CONFIG_PARAMS.pack(request.copy_range,
                                                            request.copy_mode))
    if request.queue_maxlen is not None:
        attrs += _attr(NFQA_CFG_QUEUE_MAXLEN, _U32.pack(request.queue_maxlen))
    if request.flags is not None:
        mask = request.flags if request.flags_mask is None else request.flags_mask
        attrs += _attr(NFQA_CFG_FLAGS, _U32.pack(request.flags))
        attrs += _attr(NFQA_CFG_MASK, _U32.pack(mask))
    flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
    return _nfnl_message(NFQNL_MSG_CONFIG, flags, seq, request.queue_num, attrs)


def encode_verdict(verdict: Verdict, seq: int = 0) -> bytes:
    """NFQNL_MSG_VERDICT bytes (no ACK asked: the kernel still reports an error)."""
    _check_queue_num(verdict.queue_num)
    attrs = _attr(NFQA_VERDICT_HDR, _VERDICT_HDR.pack(verdict.verdict, verdict.packet_id))
    return _nfnl_message(NFQNL_MSG_VERDICT, NLM_F_REQUEST, seq, verdict.queue_num, attrs)


def _attributes(data: bytes, where: str) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    offset = 0
    while offset + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size or offset + length > len(data):
            raise NfqueueDecodeError(f"{where}: attribute at offset {offset} claims length "
                                     f"{length} of {len(data) - offset} bytes left")
        attrs.setdefault(kind & NLA_TYPE_MASK, data[offset + _NLATTR.size:offset + length])
        offset += (length + 3) & ~3
    return attrs


def _parse_packet(body: bytes) -> PacketQueued:
    if len(body) < _NFGENMSG.size:
        raise NfqueueDecodeError(f"NFQNL_MSG_PACKET of {len(body)} bytes has no nfgenmsg")
    _, _, queue_num = _NFGENMSG.unpack_from(body)
    attrs = _attributes(body[_NFGENMSG.size:], "NFQNL_MSG_PACKET")
    header = attrs.get(NFQA_PACKET_HDR)
    if header is None or len(header) < _PACKET_HDR.size:
        raise NfqueueDecodeError("NFQNL_MSG_PACKET without a 7-byte NFQA_PACKET_HDR")
    packet_id, hw_protocol, hook = _PACKET_HDR.unpack_from(header)
    outdev = attrs.get(NFQA_IFINDEX_OUTDEV)
    cap_len = attrs.get(NFQA_CAP_LEN)
    return PacketQueued(queue_num=queue_num, packet_id=packet_id, hw_protocol=hw_protocol,
                        hook=hook,
                        outdev=_U32.unpack(outdev[:4])[0] if outdev and len(outdev) >= 4 else None,
                        payload=attrs.get(NFQA_PAYLOAD, b""),
                        cap_len=_U32.unpack(cap_len[:4])[0] if cap_len and len(cap_len) >= 4
                        else None)


def parse_messages(data: bytes) -> tuple[Event, ...]:
    """Every netlink message in one datagram from the kernel, as events.

    Packets and acknowledgements become events; NLMSG_NOOP/DONE and messages of other
    nfnetlink types are skipped; a malformed header raises NfqueueDecodeError.
    """
    events: list[Event] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _, seq, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise NfqueueDecodeError(f"netlink message at offset {offset} claims length "
                                     f"{length} of {len(data) - offset} bytes left")
        body = data[offset + _NLMSGHDR.size:offset + length]
        if kind == NLMSG_ERROR:
            if len(body) < _NLMSGERR.size:
                raise NfqueueDecodeError(f"NLMSG_ERROR of {len(body)} bytes has no error code")
            # The ack names the request it answers by the request's own header (seq).
            request_seq = (_NLMSGHDR.unpack_from(body, _NLMSGERR.size)[3]
                           if len(body) >= _NLMSGERR.size + _NLMSGHDR.size else seq)
            events.append(NetlinkAck(seq=request_seq, error=_NLMSGERR.unpack_from(body)[0]))
        elif kind == _msg_type(NFQNL_MSG_PACKET):
            events.append(_parse_packet(body))
        offset += (length + 3) & ~3
    if offset < len(data):
        raise NfqueueDecodeError(f"{len(data) - offset} stray bytes after the last message")
    return tuple(events)


# -- the waiting room (sans-IO, time as an input) -----------------------------------------------


class DelayLine:
    """Packets wait `delay` seconds each, first in first out, at most `backlog` at a time.

    `push` takes a packet id at `now`; False means the line is full and the caller should
    accept that packet at once. `due(now)` hands out, in arrival order, the ids whose time
    has come; `get_timer()` is when the next one will be due (None when empty). Every packet
    waits the same time, so the order out is the order in.
    """

    def __init__(self, delay: float, backlog: int) -> None:
        if delay < 0:
            raise LinkDelayUsageError(f"delay {delay} s: give 0 or more")
        if backlog < 1:
            raise LinkDelayUsageError(f"backlog {backlog}: give 1 or more packets")
        self.delay = delay
        self.backlog = backlog
        self._waiting: collections.deque[tuple[float, int]] = collections.deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def push(self, packet_id: int, now: float) -> bool:
        if len(self._waiting) >= self.backlog:
            return False
        self._waiting.append((now + self.delay, packet_id))
        return True

    def due(self, now: float) -> list[int]:
        out: list[int] = []
        while self._waiting and self._waiting[0][0] <= now:
            out.append(self._waiting.popleft()[1])
        return out

    def drain(self) -> list[int]:
        """Everything still waiting, in order (closing: accept it all now)."""
        out = [packet_id for _, packet_id in self._waiting]
        self._waiting.clear()
        return out

    def get_timer(self) -> float | None:
        return self._waiting[0][0] if self._waiting else None


# -- the asyncio adapter ------------------------------------------------------------------------


def _refusal(queue_num: int, error: int) -> LinkDelayError:
    code = -error
    if code == errno.EPERM or code == errno.EBUSY:
        return QueueTaken(f"nfqueue {queue_num} is bound by another socket in this namespace "
                          f"({os.strerror(code)}): choose another --queue-num")
    if code in (errno.ENOENT, errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.EINVAL):
        return NfqueueUnavailable(f"the kernel refused to bind nfqueue {queue_num} "
                                  f"({os.strerror(code)}): it needs "
                                  "CONFIG_NETFILTER_NETLINK_QUEUE (module nfnetlink_queue)")
    return LinkDelayError(f"binding nfqueue {queue_num} failed: {os.strerror(code)}")


class LinkDelay:
    """Accepts every packet of one nfqueue `delay_ms` after it arrived, in arrival order.

    Make it with `await LinkDelay.open(...)` on the loop of the thread whose network namespace
    it should serve; use it on that loop only. `close()` accepts whatever still waits, unbinds
    and closes the socket (the kernel would drop queued packets on unbind, so they go first).
    """

    def __init__(self, sock: socket.socket, queue_num: int, delay_ms: float, backlog: int,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.queue_num = queue_num
        self.delay_ms = delay_ms
        self.delayed = 0  # accepted after the delay
        self.dropped = 0  # accepted at once: the line was full
        self.errors = 0  # verdicts the kernel refused, decode errors
        self._sock = sock
        self._loop = loop
        self._line = DelayLine(delay_ms / 1000.0, backlog)
        self._timer: asyncio.TimerHandle | None = None
        self._seq = 1
        self._acks: dict[int, asyncio.Future[int]] = {}
        self._last_overflow_log = float("-inf")
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pending(self) -> int:
        return len(self._line)

    @classmethod
    async def open(cls, queue_num: int, delay_ms: float, *,
                   backlog: int = DEFAULT_BACKLOG) -> LinkDelay:
        _check_queue_num(queue_num)
        if not 0 < delay_ms <= 10_000:
            raise LinkDelayUsageError(f"delay {delay_ms} ms: give more than 0, at most 10000")
        loop = asyncio.get_running_loop()
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as exc:
            raise NfqueueUnavailable(f"no nfnetlink socket ({exc.strerror}): the kernel needs "
                                     "CONFIG_NETFILTER_NETLINK") from None
        try:
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, RECV_BUFFER)  # SO_RCVBUFFORCE (root)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
            sock.bind((0, 0))  # the kernel picks our port id
            delay = cls(sock, queue_num, delay_ms, backlog, loop)
            loop.add_reader(sock.fileno(), delay._on_readable)
            # The kernel counts as queued what still sits unread in our socket buffer too, so
            # its limit has headroom over ours: a burst reaches us and meets our backlog,
            # counted. Past the kernel's limit FAIL_OPEN accepts (uncounted) instead of dropping.
            await delay._request(ConfigRequest(
                queue_num, ConfigCommand.BIND, copy_mode=CopyMode.META,
                queue_maxlen=backlog + KERNEL_HEADROOM, flags=NFQA_CFG_F_FAIL_OPEN))
        except BaseException:
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(sock.fileno())
            sock.close()
            raise
        return delay

    async def _request(self, request: ConfigRequest) -> None:
        seq, self._seq = self._seq, self._seq + 1
        ack: asyncio.Future[int] = self._loop.create_future()
        self._acks[seq] = ack
        try:
            self._sock.send(encode_config(request, seq))
            error = await asyncio.wait_for(ack, ACK_TIMEOUT)
        except TimeoutError:
            raise LinkDelayError(f"the kernel did not answer the config of nfqueue "
                                 f"{self.queue_num} within {ACK_TIMEOUT:g} s") from None
        finally:
            self._acks.pop(seq, None)
        if error:
            raise _refusal(self.queue_num, error)

    def _on_readable(self) -> None:
        for _ in range(RECVS_PER_WAKEUP):
            try:
                data = self._sock.recv(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # our buffer overflowed; FAIL_OPEN accepted them
                    self.errors += 1
                    log.warning("nfqueue %d: receive buffer overflow, packets passed undelayed",
                                self.queue_num)
                    continue
                raise
            try:
                events = parse_messages(data)
            except NfqueueDecodeError as exc:
                self.errors += 1
                log.warning("nfqueue %d: %s", self.queue_num, exc)
                continue
            self._handle(events)

    def _handle(self, events: Sequence[Event]) -> None:
        now = self._loop.time()
        at_once: list[int] = []
        for event in events:
            if isinstance(event, NetlinkAck):
                waiter = self._acks.get(event.seq)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event.error)
                elif not event.ok:
                    self.errors += 1
                    log.warning("nfqueue %d: the kernel refused message %d: %s",
                                self.queue_num, event.seq, os.strerror(-event.error))
            elif event.queue_num == self.queue_num and (
                    self._closed or not self._line.push(event.packet_id, now)):
                at_once.append(event.packet_id)
        if at_once:
            self.dropped += len(at_once)
            if now - self._last_overflow_log >= OVERFLOW_LOG_INTERVAL:
                self._last_overflow_log = now
                log.warning("nfqueue %d: %d packets waiting (the backlog), accepting beyond it "
                            "without delay (%d so far)", self.queue_num, len(self._line),
                            self.dropped)
            self._accept(at_once)
        self._arm()

    def _arm(self) -> None:
        when = self._line.get_timer()
        if when is None:
            self._idle.set()
            return
        self._idle.clear()
        if self._timer is None or self._timer.when() != when:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        ids = self._line.due(self._loop.time())
        self.delayed += len(ids)
        self._accept(ids)
        self._arm()

    def _accept(self, packet_ids: Sequence[int]) -> None:
        # Several verdicts in one send: netlink_rcv_skb walks every message of the buffer.
        for start in range(0, len(packet_ids), 256):
            chunk = packet_ids[start:start + 256]
            data = b"".join(encode_verdict(Verdict(self.queue_num, packet_id))
                            for packet_id in chunk)
            try:
                self._sock.send(data)
            except OSError as exc:
                self.errors += 1
                log.warning("nfqueue %d: verdicts for %d packets not sent (%s); the kernel "
                            "keeps them until unbind", self.queue_num, len(chunk), exc)

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) until nothing waits: the packets in flight get their full delay."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    def close(self) -> None:
        """Accept what still waits, unbind the queue, close the socket (idempotent)."""
        if self._sock.fileno() < 0:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._loop.is_closed():
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(self._sock.fileno())
        rest = self._line.drain()
        self.dropped += len(rest)
        self._accept(rest)
        with contextlib.suppress(OSError, ValueError):
            self._sock.send(encode_config(ConfigRequest(self.queue_num, ConfigCommand.UNBIND),
                                          self._seq, ack=False))
        self._sock.close()
        self._idle.set()


# -- the rule and the handle --------------------------------------------------------------------


def iptables_rule(dev: str, queue_num: int) -> tuple[str, ...]:
    """The rule's spec after `-A`/`-D`: egress of `dev` into nfqueue `queue_num`.

    POSTROUTING sees forwarded and locally sent packets alike; mangle runs before the NAT
    (source NAT at postrouting), so the verdict resumes at NAT and the packet leaves as usual.
    """
    return ("POSTROUTING", "-o", dev, "-j", "NFQUEUE", "--queue-num", str(queue_num),
            "--queue-bypass")


def _iptables(netns: str, action: str, dev: str, queue_num: int,
              runner: Callable[[Sequence[str], str | None], str]) -> None:
    runner(["ip", "netns", "exec", netns, IPTABLES, "-w", "5", "-t", "mangle", action,
            *iptables_rule(dev, queue_num)], None)


@dataclass
class RunningLinkDelay:
    """A delay that runs: `delay_ms` on the egress of `dev` in `netns`. `await close()`."""

    netns: str
    dev: str
    delay_ms: float
    queue_num: int
    _nsloop: NamespaceLoop
    _link: LinkDelay
    _runner: Callable[[Sequence[str], str | None], str] = run_command
    _closed: bool = False

    @property
    def delayed(self) -> int:
        """Packets accepted after the delay."""
        return self._link.delayed

    @property
    def dropped(self) -> int:
        """Packets accepted without the delay: beyond the backlog, or waiting at close."""
        return self._link.dropped

    @property
    def pending(self) -> int:
        return self._link.pending

    async def close(self) -> None:
        """Remove the rule, let the packets in flight finish their delay (bounded), unbind.

        Idempotent. A rule someone removed already is logged, not raised.
        """
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.to_thread(_iptables, self.netns, "-D", self.dev, self.queue_num,
                                    self._runner)
        except CommandFailed as exc:
            log.warning("%s: the delay rule on %s was gone already: %s", self.netns, self.dev,
                        exc.stderr.strip())
        finally:
            link = self._link
            if self._nsloop.running:
                async def finish() -> None:
                    await link.drain(2 * link.delay_ms / 1000.0 + 0.1)
                    link.close()
                await self._nsloop.run(finish)
            else:  # its loop is gone: no callbacks can run, the socket is still ours
                link.close()

    async def __aenter__(self) -> RunningLinkDelay:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


async def start_link_delay(loop: NamespaceLoop, dev: str, delay_ms: float, queue_num: int, *,
                           backlog: int = DEFAULT_BACKLOG,
                           runner: Callable[[Sequence[str], str | None], str] = run_command
                           ) -> RunningLinkDelay:
    """Delay every packet leaving `dev` in `loop`'s namespace by `delay_ms` milliseconds.

    Binds nfqueue `queue_num` (per namespace) from `loop`'s thread, then adds the mangle
    POSTROUTING rule there. Raises ToolMissing (iptables-legacy), QueueTaken, NfqueueUnavailable,
    CommandFailed (the rule refused) or LinkDelayUsageError; nothing is left behind on failure.
    """
    _check_queue_num(queue_num)
    if not dev or len(dev) > 15 or "/" in dev or dev.strip() != dev:
        raise LinkDelayUsageError(f"device {dev!r}: give an interface name (1-15 characters)")
    if shutil.which(IPTABLES) is None:
        raise ToolMissing(IPTABLES, "iptables")
    link = await loop.run(lambda: LinkDelay.open(queue_num, delay_ms, backlog=backlog))
    try:
        await asyncio.to_thread(_iptables, loop.netns, "-A", dev, queue_num, runner)
    except BaseException as exc:
        async def undo() -> None:
            link.close()
        await loop.run(undo)
        if isinstance(exc, CommandFailed) and "No chain/target/match" in exc.stderr:
            raise NfqueueUnavailable(f"{IPTABLES} has no NFQUEUE target here: the kernel needs "
                                     "CONFIG_NETFILTER_XT_TARGET_NFQUEUE") from None
        raise
    return RunningLinkDelay(loop.netns, dev, delay_ms, queue_num, loop, link, runner)


# -- is netem there? ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NetemProbe:
    """Whether `tc ... netem` works here, and how that was found out (a sentence)."""

    available: bool
    reason: str


def _kernel_config(path: Path) -> str | None:
    try:
        with gzip.open(path, "rt") as config:
            for line in config:
                if line.startswith("CONFIG_NET_SCH_NETEM="):
                    return line.strip().split("=", 1)[1]
                if line.startswith("# CONFIG_NET_SCH_NETEM is not set"):
                    return "n"
    except (OSError, EOFError):  # absent, unreadable, not gzip, truncated
        return None
    return "n"


def probe_netem(runner: Callable[[Sequence[str], str | None], str] = run_command, *,
                root: bool | None = None, config: Path = Path("/proc/config.gz")) -> NetemProbe:
    """Ask the kernel: as root, add a netem qdisc on `lo` of a scratch namespace (removed at
    once); otherwise read CONFIG_NET_SCH_NETEM from the kernel's config (`config`)."""
    if root is None:
        root = os.geteuid() == 0 and bool(shutil.which("ip")) and bool(shutil.which("tc"))
    if root:
        scratch = f"uecd-netem-{os.getpid()}"
        try:
            runner(["ip", "netns", "add", scratch], None)
        except CommandFailed as exc:
            return NetemProbe(False, f"no scratch namespace to probe in: {exc}")
        try:
            runner(["tc", "-n", scratch, "qdisc", "add", "dev", "lo", "root", "netem",
                    "delay", "1ms"], None)
            return NetemProbe(True, "tc accepted a netem qdisc")
        except CommandFailed as exc:
            return NetemProbe(False, f"tc refused netem: {exc.stderr.strip()}")
        finally:
            try:
                runner(["ip", "netns", "del", scratch], None)
            except CommandFailed as exc:
                log.warning("scratch namespace %s not removed: %s", scratch, exc)
    value = _kernel_config(config)
    if value is None:
        return NetemProbe(False, f"not root and no {config} to read")
    if value in ("y", "m"):
        return NetemProbe(True, f"CONFIG_NET_SCH_NETEM={value}")
    return NetemProbe(False, "CONFIG_NET_SCH_NETEM is not set")


def netem_available() -> bool:
    """True when `tc qdisc ... netem` works on this kernel (see probe_netem for why not)."""
    return probe_netem().available
