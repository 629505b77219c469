"""Parse + serialize throughput of the SIP core, messages per second (single core)."""

from __future__ import annotations

import argparse
import time

from bench import Benchmark
from ims.sip.checks import check_message
from ims.sip.message import Message, parse_message, serialize

# A typical IMS INVITE with an SDP body, and its 200 OK, as a proxy sees them.
INVITE = (
    b"INVITE sip:+15550100002@ims.mnc002.mcc001.3gppnetwork.org;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.1.1:5100;branch=z9hG4bK-524287-1---2b9e2e2f4a8c;rport\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:40000;received=127.0.0.1;rport=40000;branch=z9hG4bK-1\r\n"
    b"Max-Forwards: 69\r\n"
    b"Record-Route: <sip:127.0.1.1:5100;lr>\r\n"
    b"Route: <sip:127.0.1.2:5102;lr>\r\n"
    b'Contact: <sip:bill@127.0.0.1:40000;ob>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"\r\n'
    b"To: <tel:+15550100002>\r\n"
    b'From: "Bill" <sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org>;tag=4fa3\r\n'
    b"Call-ID: 0ha0isndaksdj@127.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"P-Asserted-Identity: <sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org>\r\n"
    b"Supported: 100rel, timer, path\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 142\r\n"
    b"\r\n"
    b"v=0\r\no=bill 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=application 40002 UDP/DTLS 0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghij0\r\n"
)


def run(seconds: float = 2.0) -> dict[str, float]:
    """Parse, check and serialize the INVITE repeatedly; return messages per second."""
    results: dict[str, float] = {}
    for label, work in (
        ("parse", lambda: parse_message(INVITE)),
        ("parse+serialize", lambda: serialize(parse_message(INVITE))),
        ("parse+check+serialize", lambda: serialize(_checked(INVITE))),
    ):
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            for _ in range(200):
                work()
            count += 200
        results[label] = count / (time.perf_counter() - start)
    return results


def _checked(data: bytes) -> Message:
    message = parse_message(data)
    check_message(message)
    return message


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=2.0, help="time per figure")


def main(args: argparse.Namespace) -> int:
    print("SIP core throughput on one core, a 1 kB IMS INVITE with SDP (messages per second)")
    for label, rate in run(args.seconds).items():
        print(f"  {label:24s} {rate:10.0f} msg/s")
    return 0


BENCHMARK = Benchmark(
    name="sip_parse",
    help="parse, check and serialize throughput of the SIP core",
    add_arguments=add_arguments,
    run=main,
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
