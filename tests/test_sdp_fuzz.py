"""Property tests: the SDP parser only ever raises its own error; valid descriptions
round-trip (parse(serialize(x)) == x)."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ims.sdp import (
    Attribute,
    Bandwidth,
    Candidate,
    Connection,
    MediaDescription,
    Origin,
    RepeatTime,
    SdpProtocolError,
    SessionDescription,
    TimeDescription,
    ZoneAdjustment,
    parse_sdp,
    serialize_sdp,
)

from .test_sdp import RFC8866_EXAMPLE
from .test_sdp_ice import RFC8839_EXAMPLE

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = [RFC8866_EXAMPLE, RFC8839_EXAMPLE]


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_sdp_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(SdpProtocolError):
        parse_sdp(data)


@FUZZ
@given(st.sampled_from(SEEDS), st.data())
def test_mutated_descriptions_raise_only_sdp_protocol_errors(
    seed: bytes, data: st.DataObject
) -> None:
    pos = data.draw(st.integers(0, len(seed)))
    cut = data.draw(st.integers(0, 6))
    insert = data.draw(
        st.binary(max_size=8) | st.sampled_from([b" ", b"\r\n", b"=", b"/", b":", b"a=x\r\n"])
    )
    mutated = seed[:pos] + insert + seed[pos + cut :]
    try:
        description = parse_sdp(mutated)
    except SdpProtocolError:
        return
    assert parse_sdp(serialize_sdp(description)) == description


@FUZZ
@given(st.text(max_size=120))
def test_arbitrary_text_lines_raise_only_sdp_protocol_errors(line: str) -> None:
    with contextlib.suppress(SdpProtocolError):
        parse_sdp(RFC8839_EXAMPLE.decode() + line + "\r\n")


token = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`{|}~",
    min_size=1,
    max_size=10,
)
text = st.text(
    st.characters(exclude_characters="\x00\r\n", exclude_categories=["Cs"]), min_size=1, max_size=20
)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
fqdn = st.from_regex(r"\A[a-z][a-z0-9]{3,8}(\.[a-z][a-z0-9]{0,6}){0,2}\Z")
ntp = st.integers(10**9, 10**12)
typed_time = st.from_regex(r"\A[0-9]{1,6}[dhms]?\Z")


@st.composite
def connections(draw: st.DrawFn) -> Connection:
    kind = draw(st.sampled_from(["ip4", "ip6", "fqdn", "mc4", "other"]))
    if kind == "ip4":
        return Connection.for_address(draw(ipv4.filter(lambda a: not a.startswith(("22", "23")))))
    if kind == "ip6":
        return Connection("IN", "IP6", draw(ipv6.filter(lambda a: not a.startswith("ff"))))
    if kind == "fqdn":
        return Connection("IN", draw(st.sampled_from(["IP4", "IP6"])), draw(fqdn))
    if kind == "mc4":
        count = draw(st.none() | st.integers(1, 9))
        return Connection(
            "IN", "IP4", f"233.252.0.{draw(st.integers(0, 255))}", draw(st.integers(0, 255)), count
        )
    return Connection(draw(token), draw(token), draw(st.from_regex(r"\A[a-z0-9.:]{1,12}\Z")))


@st.composite
def candidates(draw: st.DrawFn) -> Candidate:
    cand_type = draw(st.sampled_from(["host", "srflx", "prflx", "relay"]))
    related = cand_type != "host"
    return Candidate(
        foundation=draw(st.from_regex(r"\A[A-Za-z0-9+/]{1,32}\Z")),
        component=draw(st.integers(1, 256)),
        transport=draw(st.sampled_from(["UDP", "udp", "TCP"])),
        priority=draw(st.integers(1, 2**31 - 1)),
        address=draw(ipv4 | ipv6 | fqdn),
        port=draw(st.integers(1, 65535)),
        type=cand_type,
        related_address=draw(ipv4 | ipv6) if related else None,
        related_port=draw(st.integers(0, 65535)) if related else None,
        extensions=tuple(
            draw(
                st.lists(
                    st.tuples(
                        st.sampled_from(["generation", "network-id", "x"]),
                        st.from_regex(r"\A[!-~]{1,6}\Z"),
                    ),
                    max_size=2,
                )
            )
        ),
    )


attributes = st.one_of(
    st.builds(
        Attribute,
        token.filter(lambda n: not n.startswith(("ice", "candidate", "end-of", "remote"))),
        st.none() | text,
    ),
    candidates().map(Candidate.to_attribute),
    st.just(Attribute("end-of-candidates")),
)


@st.composite
def media_descriptions(draw: st.DrawFn, need_connection: bool) -> MediaDescription:
    return MediaDescription(
        media=draw(token),
        port=draw(st.integers(0, 65535)),
        proto=draw(st.sampled_from(["udp", "RTP/AVP", "UDP/TLS/RTP/SAVPF"])),
        formats=tuple(draw(st.lists(token, min_size=1, max_size=3))),
        number_of_ports=draw(st.none() | st.integers(1, 4)),
        information=draw(st.none() | text),
        connections=tuple(draw(st.lists(connections(), min_size=int(need_connection), max_size=2))),
        bandwidths=tuple(
            draw(st.lists(st.builds(Bandwidth, token, st.integers(0, 10**9)), max_size=2))
        ),
        key=draw(st.none() | st.just("prompt")),
        attributes=tuple(draw(st.lists(attributes, max_size=5))),
    )


@st.composite
def descriptions(draw: st.DrawFn) -> SessionDescription:
    connection = draw(st.none() | connections())
    times = draw(
        st.lists(
            st.builds(
                TimeDescription,
                start=st.just(0) | ntp,
                stop=st.just(0),
                repeats=st.lists(
                    st.builds(
                        RepeatTime,
                        st.from_regex(r"\A[1-9][0-9]{0,4}[dhms]?\Z"),
                        typed_time,
                        st.lists(typed_time, min_size=1, max_size=2).map(tuple),
                    ),
                    max_size=2,
                ).map(tuple),
                zone_adjustments=st.lists(
                    st.builds(ZoneAdjustment, ntp, st.from_regex(r"\A-?[0-9]{1,4}[dhms]?\Z")),
                    max_size=2,
                ).map(tuple),
            ),
            min_size=1,
            max_size=2,
        )
    )
    return SessionDescription(
        origin=Origin(
            draw(st.from_regex(r"\A[!-~]{1,8}\Z")),
            str(draw(st.integers(0, 2**64))),
            draw(st.integers(0, 2**63)),
            "IN",
            "IP4",
            draw(ipv4),
        ),
        session_name=draw(text | st.just("")),
        information=draw(st.none() | text),
        uri=draw(st.none() | st.just("http://www.example.com/seminars/sdp.pdf")),
        emails=tuple(draw(st.lists(st.just("j.doe@example.com (Jane Doe)"), max_size=1))),
        phones=tuple(
            draw(
                st.lists(st.sampled_from(["+1 617 555-6011", "Jane <+1 617 555-6011>"]), max_size=2)
            )
        ),
        connection=connection,
        bandwidths=tuple(
            draw(st.lists(st.builds(Bandwidth, token, st.integers(0, 10**9)), max_size=2))
        ),
        times=tuple(times),
        key=draw(st.none() | st.just("clear:secret key")),
        attributes=tuple(
            draw(
                st.lists(
                    st.builds(
                        Attribute,
                        token.filter(lambda n: not n.startswith(("ice", "candidate", "remote"))),
                        st.none() | text,
                    ),
                    max_size=3,
                )
            )
        ),
        media=tuple(draw(st.lists(media_descriptions(connection is None), max_size=3))),
    )


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(descriptions())
def test_generated_descriptions_round_trip(description: SessionDescription) -> None:
    assert parse_sdp(serialize_sdp(description)) == description


@settings(max_examples=200, deadline=None)
@given(candidates())
def test_generated_candidates_round_trip(candidate: Candidate) -> None:
    assert Candidate.parse(str(candidate)) == candidate
