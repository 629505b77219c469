"""The NFQUEUE link delay: the nfnetlink_queue codec, the delay line, and real delay on veths.

The codec fixtures are bytes this kernel sent and accepted (captured in a scratch namespace:
a BIND with its ACK, a second BIND refused EPERM, an NFQNL_MSG_PACKET in copy mode META and one
with 28 bytes of payload, a verdict, and the ENOENT for a verdict on an unknown id). netlink
headers are in host byte order, so those fixtures need a little-endian host.

The root tests build two namespaces of their own (`uecd-<pid>-a`, `uecd-<pid>-b`, one veth
between them, 198.18.0.0/24 of RFC 2544's benchmarking range) and remove them afterwards, also
after a failure. RTTs are compared with generous windows: a test of behaviour, not a benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ims.testbed.builder import run_command
from ims.testbed.delay import (
    NF_ACCEPT,
    NFQA_CFG_F_FAIL_OPEN,
    ConfigCommand,
    ConfigRequest,
    CopyMode,
    DelayLine,
    LinkDelay,
    LinkDelayUsageError,
    NetlinkAck,
    NfqueueDecodeError,
    NfqueueUnavailable,
    PacketQueued,
    QueueTaken,
    RunningLinkDelay,
    Verdict,
    encode_config,
    encode_verdict,
    iptables_rule,
    parse_messages,
    probe_netem,
    start_link_delay,
)
from ims.testbed.errors import CommandFailed
from ims.testbed.netns import NamespaceLoop

little_endian = pytest.mark.skipif(sys.byteorder != "little",
                                   reason="the fixtures hold netlink headers in little-endian "
                                          "host order")

# BIND queue 7, copy META, queue maxlen 64, flags FAIL_OPEN under mask FAIL_OPEN; seq 1, ACK.
BIND_7 = bytes.fromhex(
    "4000000002030500010000000000000000000007080001000100000009000200000000000100000008000300"
    "0000004008000500000000010800040000000001")
ACK_1 = bytes.fromhex(
    "240000000200000101000000a86b00000000000040000000020305000100000000000000")
REFUSED_EPERM = bytes.fromhex(
    "540000000200000001000000af4190c0ffffffff40000000020305000100000000000000000000070800010001"
    "000000090002000000000001000000080003000000004008000500000000010800040000000001")
# NFQNL_MSG_PACKET, AF_INET, queue 7: id 1, ethertype 0x0800, hook 3 (LOCAL_OUT), outdev 1,
# NFQA_SKB_INFO; copy mode META, so no payload.
PACKET_META = bytes.fromhex(
    "30000000000300000000000000000000020000070b0001000000000108000300080006000000000108000e00"
    "00000001")
# The same with copy mode PACKET, range 28: 28 bytes of a 33-byte UDP datagram, CAP_LEN 33.
PACKET_28 = bytes.fromhex(
    "50000000000300000000000000000000020000070b0001000000000208000300080006000000000108000d00"
    "0000002120000a0045000021e3e74000401158e27f0000017f000001e7480009000dd6ad")
VERDICT_7_1 = bytes.fromhex("20000000010301000000000000000000000000070c0002000000000100000001")
UNKNOWN_ID = bytes.fromhex(
    "340000000200000005000000a86b0000feffffff20000000010301000500000000000000000000070c000200"
    "00000001000003e7")


# -- the codec ----------------------------------------------------------------------------------


@little_endian
def test_bind_config_is_one_message_with_command_params_maxlen_and_flags() -> None:
    request = ConfigRequest(7, ConfigCommand.BIND, copy_mode=CopyMode.META, queue_maxlen=64,
                            flags=NFQA_CFG_F_FAIL_OPEN)
    assert encode_config(request, seq=1) == BIND_7


@little_endian
def test_config_without_ack_and_with_only_a_command() -> None:
    unbind = encode_config(ConfigRequest(7, ConfigCommand.UNBIND), seq=9, ack=False)
    # nlmsghdr: len 28, type QUEUE<<8|CONFIG, flags REQUEST only, seq 9; nfgenmsg res_id 7
    # (big-endian); NFQA_CFG_CMD {UNBIND, pad, pf 0}.
    assert unbind == bytes.fromhex("1c000000020301000900000000000000000000070800010002000000")


@little_endian
def test_copy_range_is_big_endian_and_params_pad_to_four() -> None:
    params = encode_config(ConfigRequest(3, copy_mode=CopyMode.PACKET, copy_range=0x1234),
                           seq=2)
    # nlattr len 9 (4 + packed 5 bytes), type PARAMS, be32 range, u8 mode, 3 bytes padding.
    assert params[20:] == bytes.fromhex("090002000000123402000000")
    assert len(params) == int.from_bytes(params[:4], "little") == 32


@little_endian
def test_verdict_accept_names_the_packet_id_big_endian() -> None:
    assert encode_verdict(Verdict(7, 1)) == VERDICT_7_1
    assert NF_ACCEPT == 1
    assert encode_verdict(Verdict(7, 0x01020304))[-4:] == b"\x01\x02\x03\x04"


@little_endian
def test_ack_and_refusal_name_the_request_by_its_seq() -> None:
    assert parse_messages(ACK_1) == (NetlinkAck(seq=1, error=0),)
    (refused,) = parse_messages(REFUSED_EPERM)
    assert refused == NetlinkAck(seq=1, error=-1) and not refused.ok  # EPERM: queue taken
    assert parse_messages(UNKNOWN_ID) == (NetlinkAck(seq=5, error=-2),)  # ENOENT


@little_endian
def test_packet_in_copy_mode_meta_carries_the_id_and_no_payload() -> None:
    assert parse_messages(PACKET_META) == (PacketQueued(queue_num=7, packet_id=1,
                                                        hw_protocol=0x0800, hook=3, outdev=1),)


@little_endian
def test_packet_in_copy_mode_packet_carries_the_cut_payload_and_its_length() -> None:
    (packet,) = parse_messages(PACKET_28)
    assert isinstance(packet, PacketQueued)
    assert packet.packet_id == 2 and packet.cap_len == 33
    assert len(packet.payload) == 28 and packet.payload[0] == 0x45  # IPv4, IHL 5


@little_endian
def test_several_messages_in_one_datagram_come_out_in_order() -> None:
    events = parse_messages(ACK_1 + PACKET_META + PACKET_28)
    assert [type(e).__name__ for e in events] == ["NetlinkAck", "PacketQueued", "PacketQueued"]
    assert [e.packet_id for e in events if isinstance(e, PacketQueued)] == [1, 2]


@little_endian
def test_verdicts_and_other_types_are_skipped_not_misread() -> None:
    assert parse_messages(VERDICT_7_1) == ()
    assert parse_messages(b"") == ()


@little_endian
@pytest.mark.parametrize("data, where", [
    (PACKET_META[:-4], "claims length"),  # header says 48, 44 bytes there
    (bytes.fromhex("08000000") + PACKET_META[4:], "claims length 8"),  # shorter than a header
    (PACKET_META[:10], "10 stray bytes"),
    (PACKET_META + b"\0\0", "stray bytes"),
    (PACKET_META[:20] + bytes.fromhex("ff00") + PACKET_META[22:], "attribute at offset 0"),
    (bytes.fromhex("1c0000000003000000000000000000000200000708000600" "00000001"),
     "NFQA_PACKET_HDR"),  # a packet message without its header attribute
])
def test_malformed_input_raises_the_decode_error_naming_the_defect(data: bytes,
                                                                   where: str) -> None:
    with pytest.raises(NfqueueDecodeError, match=where):
        parse_messages(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.sampled_from([PACKET_META, PACKET_28, ACK_1]).flatmap(
    lambda base: st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)).map(
        lambda edit: base[:edit[0]] + bytes([edit[1]]) + base[edit[0] + 1:])))
def test_fuzz_parse_or_raise_the_decode_error(data: bytes) -> None:
    with contextlib.suppress(NfqueueDecodeError):
        parse_messages(data)


def test_queue_number_outside_16_bits_is_refused_before_any_bytes() -> None:
    with pytest.raises(LinkDelayUsageError, match="queue number 65536"):
        encode_verdict(Verdict(65536, 1))
    with pytest.raises(LinkDelayUsageError, match="queue number -1"):
        encode_config(ConfigRequest(-1, ConfigCommand.BIND), seq=1)


# -- the delay line (fake clock) ----------------------------------------------------------------


def test_delay_line_releases_each_packet_after_the_delay_in_arrival_order() -> None:
    line = DelayLine(delay=0.010, backlog=10)
    assert line.get_timer() is None
    assert line.push(5, now=100.000) and line.push(6, now=100.004) and line.push(7, now=100.004)
    assert line.get_timer() == pytest.approx(100.010)
    assert line.due(100.009) == []
    assert line.due(100.010) == [5]
    assert line.get_timer() == pytest.approx(100.014)
    assert line.due(100.100) == [6, 7]
    assert line.get_timer() is None and len(line) == 0


def test_delay_line_beyond_the_backlog_says_accept_now_and_keeps_the_rest() -> None:
    line = DelayLine(delay=1.0, backlog=2)
    assert [line.push(i, now=0.0) for i in range(4)] == [True, True, False, False]
    assert line.due(0.5) == [] and len(line) == 2
    assert line.due(1.0) == [0, 1]
    assert line.push(9, now=1.0)  # room again


def test_delay_line_drain_hands_out_everything_in_order() -> None:
    line = DelayLine(delay=5.0, backlog=8)
    for i in (3, 1, 2):
        line.push(i, now=0.0)
    assert line.drain() == [3, 1, 2] and line.get_timer() is None


def test_delay_line_and_link_delay_refuse_nonsense_arguments() -> None:
    with pytest.raises(LinkDelayUsageError, match="backlog 0"):
        DelayLine(delay=0.01, backlog=0)

    async def open_zero() -> None:
        await LinkDelay.open(0, 0)

    with pytest.raises(LinkDelayUsageError, match="delay 0 ms"):
        asyncio.run(open_zero())


def test_the_rule_queues_the_egress_of_the_device_and_bypasses_without_a_listener() -> None:
    assert iptables_rule("eth0", 3) == ("POSTROUTING", "-o", "eth0", "-j", "NFQUEUE",
                                        "--queue-num", "3", "--queue-bypass")


# -- is netem there? ----------------------------------------------------------------------------


def _config_gz(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "config.gz"
    with gzip.open(path, "wt") as out:
        out.write(f"CONFIG_NET_SCHED=y\n{line}\nCONFIG_NETFILTER_NETLINK_QUEUE=y\n")
    return path


@pytest.mark.parametrize("line, available", [
    ("# CONFIG_NET_SCH_NETEM is not set", False),
    ("CONFIG_NET_SCH_NETEM=m", True),
    ("CONFIG_NET_SCH_NETEM=y", True),
])
def test_without_root_netem_is_read_from_the_kernel_config(tmp_path: Path, line: str,
                                                           available: bool) -> None:
    probe = probe_netem(root=False, config=_config_gz(tmp_path, line))
    assert probe.available is available and "CONFIG_NET_SCH_NETEM" in probe.reason
    missing = probe_netem(root=False, config=tmp_path / "absent.gz")
    assert not missing.available and "absent.gz" in missing.reason


def _recording_runner(fail_tc: str | None) -> tuple[list[list[str]],
                                                    Callable[[Sequence[str], str | None], str]]:
    calls: list[list[str]] = []

    def runner(argv: Sequence[str], stdin: str | None) -> str:
        calls.append(list(argv))
        if argv[0] == "tc" and fail_tc is not None:
            raise CommandFailed(argv, 2, fail_tc)
        return ""
    return calls, runner


def test_as_root_netem_is_probed_in_a_scratch_namespace_that_is_removed_either_way() -> None:
    calls, runner = _recording_runner("Error: Specified qdisc kind is unknown.\n")
    probe = probe_netem(runner, root=True)
    assert not probe.available and "qdisc kind is unknown" in probe.reason
    scratch = calls[0][-1]
    assert scratch.startswith("uecd-") and calls[0][:3] == ["ip", "netns", "add"]
    assert calls[1][:3] == ["tc", "-n", scratch] and "netem" in calls[1]
    assert calls[-1] == ["ip", "netns", "del", scratch]
    calls, runner = _recording_runner(None)
    assert probe_netem(runner, root=True).available
    assert calls[-1][:3] == ["ip", "netns", "del"]


# -- real delay on a veth (root) ----------------------------------------------------------------

A_ADDR, B_ADDR, PORT = "198.18.0.1", "198.18.0.2", 7001
DELAY_MS = 10


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables, nfnetlink_queue)"
    for tool, package in (("ip", "iproute2"), ("iptables-legacy", "iptables")):
        if shutil.which(tool) is None:
            return f"needs {tool} (Debian package {package})"
    return None


def _sh(*argv: str) -> str:
    return run_command(list(argv))


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    """Two namespaces of ours joined by a veth: a (a0 198.18.0.1) <-> b (b0 198.18.0.2)."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    a, b = f"uecd-{os.getpid()}-a", f"uecd-{os.getpid()}-b"
    try:
        try:
            _sh("ip", "netns", "add", a)
        except CommandFailed as exc:
            pytest.skip(f"cannot create network namespaces here: {exc}")
        _sh("ip", "netns", "add", b)
        _sh("ip", "-n", a, "link", "add", "a0", "type", "veth", "peer", "name", "b0", "netns", b)
        for ns, dev, addr in ((a, "a0", A_ADDR), (b, "b0", B_ADDR)):
            _sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=10,
                           capture_output=True)


def _queue_rules(ns: str) -> list[str]:
    out = _sh("ip", "netns", "exec", ns, "iptables-legacy", "-w", "5", "-t", "mangle", "-S",
              "POSTROUTING")
    return [line for line in out.splitlines() if "NFQUEUE" in line]


class _Echo(asyncio.DatagramProtocol):
    """Answers every datagram with itself (`reply`), or only records it."""

    def __init__(self, reply: bool) -> None:
        self.reply = reply
        self.seen: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.seen.append(data)
        if self.reply and self.transport is not None:
            self.transport.sendto(data, addr)


class _Pinger(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.got.put_nowait(data)


async def _open_echo(reply: bool) -> tuple[asyncio.DatagramTransport, _Echo]:
    return await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _Echo(reply), local_addr=(B_ADDR, PORT))


async def _ping_rtts(count: int) -> list[float]:
    """`count` sequential ping-pongs from a to b's echo; each RTT in ms (bounded waits)."""
    loop = asyncio.get_running_loop()
    transport, pinger = await loop.create_datagram_endpoint(_Pinger, remote_addr=(B_ADDR, PORT))
    rtts: list[float] = []
    try:
        for i in range(count):
            sent = loop.time()
            transport.sendto(b"ping %d" % i)
            while await asyncio.wait_for(pinger.got.get(), 2.0) != b"ping %d" % i:
                pass
            rtts.append((loop.time() - sent) * 1000)
    finally:
        transport.close()
    return rtts


async def _burst(count: int, wait: float) -> list[int]:
    """`count` numbered datagrams back to back; the numbers echoed back, in arrival order."""
    loop = asyncio.get_running_loop()
    transport, pinger = await loop.create_datagram_endpoint(_Pinger, remote_addr=(B_ADDR, PORT))
    got: list[int] = []
    try:
        for i in range(count):
            transport.sendto(b"%d" % i)
        with pytest.raises(TimeoutError):
            while len(got) <= count:  # until nothing more comes for `wait` seconds
                got.append(int(await asyncio.wait_for(pinger.got.get(), wait)))
    finally:
        transport.close()
    return got


async def _start(loop: NamespaceLoop, dev: str, queue_num: int = 0,
                 **kwargs: Any) -> RunningLinkDelay:
    try:
        return await start_link_delay(loop, dev, DELAY_MS, queue_num, **kwargs)
    except NfqueueUnavailable as exc:
        pytest.skip(f"this kernel cannot queue to userspace: {exc}")


def _median(values: list[float]) -> float:
    return statistics.median(values)


@pytest.mark.root
def test_rtt_rises_by_the_delay_of_both_directions_and_falls_back_after_close(
        pair: tuple[str, str]) -> None:
    a, b = pair

    async def main() -> None:
        async with NamespaceLoop(a) as la, NamespaceLoop(b) as lb:
            echo, _ = await lb.run(lambda: _open_echo(reply=True))
            try:
                before = _median(await la.run(lambda: _ping_rtts(10)))
                delays = [await _start(la, "a0"), await _start(lb, "b0", queue_num=3)]
                try:
                    assert _queue_rules(a) == [
                        "-A POSTROUTING -o a0 -j NFQUEUE --queue-num 0 --queue-bypass"]
                    assert len(_queue_rules(b)) == 1
                    during = _median(await la.run(lambda: _ping_rtts(10)))
                finally:
                    for delay in delays:
                        await delay.close()
                # 10 ms on a's egress and 10 ms on b's: one RTT gains about 20 ms.
                print(f"median RTT {before:.2f} ms, with the delays {during:.2f} ms")
                assert 18.0 <= during - before <= 40.0, (before, during)
                assert all(d.delayed >= 10 and d.dropped == 0 for d in delays)
                assert _queue_rules(a) == [] and _queue_rules(b) == []
                after = _median(await la.run(lambda: _ping_rtts(10)))
                assert after < before + 5.0, (before, after)
                await delays[0].close()  # idempotent
            finally:
                await lb.run(_async_close(echo))

    asyncio.run(main())


def _async_close(transport: asyncio.BaseTransport) -> Callable[[], Any]:
    async def close() -> None:
        transport.close()
    return close


@pytest.mark.root
def test_a_burst_keeps_its_order_through_both_delays(pair: tuple[str, str]) -> None:
    a, b = pair

    async def main() -> list[int]:
        async with NamespaceLoop(a) as la, NamespaceLoop(b) as lb:
            echo, _ = await lb.run(lambda: _open_echo(reply=True))
            delays = [await _start(la, "a0"), await _start(lb, "b0")]
            try:
                return await la.run(lambda: _burst(200, wait=0.5))
            finally:
                for delay in delays:
                    await delay.close()
                await lb.run(_async_close(echo))

    assert asyncio.run(main()) == list(range(200))


@pytest.mark.root
def test_beyond_the_backlog_packets_pass_at_once_and_are_counted_not_lost(
        pair: tuple[str, str], caplog: pytest.LogCaptureFixture) -> None:
    a, b = pair

    async def main() -> tuple[RunningLinkDelay, list[bytes]]:
        async with NamespaceLoop(a) as la, NamespaceLoop(b) as lb:
            sink, protocol = await lb.run(lambda: _open_echo(reply=False))
            delay = await _start(la, "a0", backlog=8)
            try:
                async def send() -> None:
                    loop = asyncio.get_running_loop()
                    transport, _ = await loop.create_datagram_endpoint(
                        asyncio.DatagramProtocol, remote_addr=(B_ADDR, PORT))
                    for i in range(100):
                        transport.sendto(b"%d" % i)
                    transport.close()
                await la.run(send)
                for _ in range(100):  # bounded: until all arrived or 2 s
                    if len(protocol.seen) >= 100:
                        break
                    await asyncio.sleep(0.02)
            finally:
                await delay.close()
                await lb.run(_async_close(sink))
            return delay, protocol.seen

    with caplog.at_level(logging.WARNING, logger="ims.testbed.delay"):
        delay, seen = asyncio.run(main())
    assert sorted(int(x) for x in seen) == list(range(100))  # none lost
    assert delay.dropped > 0 and delay.delayed >= 8
    assert delay.delayed + delay.dropped == 100  # every IPv4 packet a sent went through us
    assert any("accepting beyond it" in r.getMessage() for r in caplog.records)


@pytest.mark.root
def test_a_queue_bound_by_another_socket_is_refused_and_adds_no_rule(
        pair: tuple[str, str]) -> None:
    a, _ = pair

    async def main() -> None:
        async with NamespaceLoop(a) as la:
            first = await _start(la, "a0", queue_num=5)
            try:
                with pytest.raises(QueueTaken, match="nfqueue 5 is bound"):
                    await start_link_delay(la, "a0", DELAY_MS, 5)
                assert len(_queue_rules(a)) == 1
            finally:
                await first.close()
            assert _queue_rules(a) == []

    asyncio.run(main())


@pytest.mark.root
def test_close_after_the_rule_was_removed_by_hand_logs_and_still_unbinds(
        pair: tuple[str, str], caplog: pytest.LogCaptureFixture) -> None:
    a, _ = pair

    async def main() -> None:
        async with NamespaceLoop(a) as la:
            delay = await _start(la, "a0", queue_num=2)
            _sh("ip", "netns", "exec", a, "iptables-legacy", "-w", "5", "-t", "mangle", "-D",
                *iptables_rule("a0", 2))
            with caplog.at_level(logging.WARNING, logger="ims.testbed.delay"):
                await delay.close()
            again = await _start(la, "a0", queue_num=2)  # the queue is free again
            await again.close()

    asyncio.run(main())
    assert any("gone already" in r.getMessage() for r in caplog.records)


@pytest.mark.root
def test_the_netem_probe_agrees_with_the_kernel_config() -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    if shutil.which("tc") is None:
        pytest.skip("needs tc (Debian package iproute2)")
    config = Path("/proc/config.gz")
    if not config.exists():
        pytest.skip("no /proc/config.gz to compare the probe with")
    probed = probe_netem(root=True)
    assert probed.available == probe_netem(root=False, config=config).available, probed
    assert not any(n.startswith("uecd-netem-") for n in _sh("ip", "netns", "list").split())
