"""Offer/answer (RFC 3264) for the one stream ueconnect negotiates: an `m=application` stream
over UDP whose candidates are ICE candidates (RFC 8839).

The caller's UE builds the offer (`build_offer`), each operator appends candidates of its own
(`add_candidate`: a peer-scoped CGN mapping as `typ srflx`, or a relay as `typ relay`), the
called UE answers (`build_answer`) and the caller reads what was agreed
(`negotiated_endpoints`). All functions are pure: descriptions in, descriptions out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .attribute import Attribute, address_version
from .description import (
    DEFAULT_LIMITS,
    Connection,
    MediaDescription,
    Origin,
    SdpLimits,
    SessionDescription,
)
from .errors import SdpNegotiationError, SdpUsageError
from .ice import (
    CANDIDATE,
    END_OF_CANDIDATES,
    ICE2,
    ICE_MISMATCH,
    ICE_OPTIONS,
    ICE_PWD,
    ICE_UFRAG,
    Candidate,
    CandidateType,
    IceCredentials,
    ice_options,
)

APPLICATION = "application"
# RFC 8866 section 5.14: "udp" is an unspecified protocol over UDP; its formats name media
# subtypes of the m= media type, here application/octet-stream: the game's datagrams are
# opaque to the operators.
UDP_PROTO = "udp"
DEFAULT_FORMAT = "octet-stream"
# RFC 8839 section 4.3.1: the default destination of a section with no candidate yet.
_PLACEHOLDER_PORT = 9

# RFC 8445 section 5.1.4: relayed, then server reflexive, then host as default candidate.
_DEFAULT_ORDER = (CandidateType.RELAY, CandidateType.SRFLX, CandidateType.PRFLX, CandidateType.HOST)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A transport address as SDP writes it (IPv6 without brackets, or an FQDN)."""

    address: str
    port: int

    @property
    def is_fqdn(self) -> bool:
        return address_version(self.address) is None


@dataclass(frozen=True, slots=True)
class NegotiatedStream:
    """What a description says about its application stream.

    `default` is the c=/m= destination (RFC 8839 section 2: what a peer without ICE uses;
    section 4.2.1.2: the default candidate's address and port). `candidates` are those an ICE
    agent can use; `ignored` are the ones RFC 8839 section 5.1 tells it to ignore
    (FQDN addresses, transports other than UDP)."""

    media_index: int
    default: Endpoint
    formats: tuple[str, ...]
    candidates: tuple[Candidate, ...]
    ignored: tuple[Candidate, ...]
    credentials: IceCredentials | None
    ice_options: tuple[str, ...]
    ice_mismatch: bool
    end_of_candidates: bool


def candidates_of(media: MediaDescription) -> tuple[Candidate, ...]:
    """The `a=candidate` lines of a media description, in order."""
    return tuple(Candidate.parse(a.value or "") for a in media.attributes if a.name == CANDIDATE)


def credentials_of(
    description: SessionDescription, media: MediaDescription
) -> IceCredentials | None:
    """ice-ufrag/ice-pwd of `media`, falling back to session level (RFC 8839 section 5.4);
    None when either is missing (no ICE)."""
    ufrag = _attribute(media.attributes, ICE_UFRAG) or _attribute(description.attributes, ICE_UFRAG)
    pwd = _attribute(media.attributes, ICE_PWD) or _attribute(description.attributes, ICE_PWD)
    if ufrag is None or pwd is None:
        return None
    return IceCredentials(ufrag, pwd)


def default_candidate(candidates: Sequence[Candidate], component: int = 1) -> Candidate:
    """The candidate for c=/m=: relay before srflx before host (RFC 8445 section 5.1.4), the
    highest priority within a type."""
    usable = [c for c in candidates if c.component == component and not c.is_fqdn]
    if not usable:
        raise SdpUsageError(f"no IP candidate for component {component}")

    def rank(candidate: Candidate) -> tuple[int, int]:
        order = _DEFAULT_ORDER.index(candidate.type) if candidate.type in _DEFAULT_ORDER else 9
        return order, -candidate.priority

    return min(usable, key=rank)


def application_stream_index(description: SessionDescription) -> int:
    """The index of the first accepted (port not zero) m=application udp stream."""
    for index, media in enumerate(description.media):
        if _is_application_udp(media) and not media.rejected:
            return index
    raise SdpNegotiationError("no accepted m=application udp stream in the description")


def build_offer(
    *,
    origin: Origin,
    credentials: IceCredentials | None,
    candidates: Sequence[Candidate],
    formats: Sequence[str] = (DEFAULT_FORMAT,),
    options: Sequence[str] = (ICE2,),
    end_of_candidates: bool = True,
    session_name: str = "-",
) -> SessionDescription:
    """An offer with one m=application udp stream carrying `candidates`; c=/m= name the
    default candidate. `credentials=None` offers without ICE (only the default destination)."""
    _check_local_candidates(candidates)
    default = default_candidate(candidates)
    media = MediaDescription(
        media=APPLICATION,
        port=default.port,
        proto=UDP_PROTO,
        formats=tuple(formats),
        connections=(Connection.for_address(default.address),),
        attributes=_ice_attributes(credentials, candidates, options, end_of_candidates),
    )
    return SessionDescription(origin=origin, session_name=session_name, media=(media,))


def build_answer(
    offer: SessionDescription,
    *,
    origin: Origin,
    credentials: IceCredentials | None,
    candidates: Sequence[Candidate],
    formats: Sequence[str] = (DEFAULT_FORMAT,),
    options: Sequence[str] = (ICE2,),
    end_of_candidates: bool = True,
) -> SessionDescription:
    """The answer to `offer` (RFC 3264 section 6): one m= line per offered m= line, in order;
    the first m=application udp stream sharing a format with `formats` is accepted with the
    shared formats (a subset of the offered ones, section 6.1) and our candidates; every other
    stream is rejected with port zero. The t= line is the offer's (section 6).

    ICE attributes are left out when the offer has none for the stream (RFC 8839 section
    4.3.2), and replaced by a=ice-mismatch alone when the offer's default destination is none
    of its candidates (section 4.2.5, item 1: then a=candidate must be omitted). Raises
    SdpNegotiationError (488) when nothing is acceptable."""
    _check_local_candidates(candidates)
    default = default_candidate(candidates)
    connection = Connection.for_address(default.address)
    answered: list[MediaDescription] = []
    accepted = False
    for offered in offer.media:
        shared = tuple(f for f in offered.formats if f in formats)
        if accepted or offered.rejected or not _is_application_udp(offered) or not shared:
            answered.append(
                MediaDescription(
                    media=offered.media,
                    port=0,
                    proto=offered.proto,
                    formats=offered.formats,
                    connections=(connection,),
                )
            )
            continue
        accepted = True
        attributes: tuple[Attribute, ...]
        if credentials_of(offer, offered) is None or credentials is None:
            attributes = ()
        elif _ice_mismatch(offer, offered):
            attributes = (Attribute(ICE_MISMATCH),)
        else:
            attributes = _ice_attributes(credentials, candidates, options, end_of_candidates)
        answered.append(
            MediaDescription(
                media=APPLICATION,
                port=default.port,
                proto=offered.proto,
                formats=shared,
                connections=(connection,),
                attributes=attributes,
            )
        )
    if not accepted:
        raise SdpNegotiationError(
            f"the offer has no m={APPLICATION} {UDP_PROTO} stream with a format of "
            f"{', '.join(formats)}"
        )
    return SessionDescription(origin=origin, times=offer.times, media=tuple(answered))


def add_candidate(
    description: SessionDescription,
    candidate: Candidate,
    *,
    media_index: int | None = None,
    make_default: bool = False,
    limits: SdpLimits = DEFAULT_LIMITS,
) -> SessionDescription:
    """`description` with `candidate` appended to its application stream, after the existing
    candidates (before a=end-of-candidates); every other line stays as it was, o= included.

    With `make_default` the stream's c=/m= are moved to the candidate too (what a peer
    without ICE will use), which keeps RFC 8839 section 4.2.5 satisfied: the default
    destination is one of the candidates. A candidate whose transport address is already
    there is redundant (RFC 8445 section 5.1.3) and leaves the description unchanged."""
    if media_index is None:
        media_index = application_stream_index(description)
    if not 0 <= media_index < len(description.media):
        raise SdpUsageError(f"no media description {media_index}")
    media = description.media[media_index]
    if media.rejected:
        raise SdpUsageError(f"media description {media_index} is rejected (port 0)")
    _check_local_candidates([candidate])
    existing = candidates_of(media)
    if len(existing) >= limits.max_candidates:
        raise SdpUsageError(f"media description already has {len(existing)} candidates")
    if not any(candidate.same_transport_address(c) for c in existing):
        media = replace(media, attributes=_insert_candidate(media.attributes, candidate))
    if make_default:
        connection = Connection.for_address(candidate.address)
        media = replace(
            media, port=candidate.port, connections=(connection, *media.connections[1:])
        )
    return description.with_media(media_index, media)


def negotiated_endpoints(
    answer: SessionDescription, *, offer: SessionDescription | None = None
) -> NegotiatedStream:
    """The application stream an answer accepted: default destination and candidates. With
    `offer`, the answer is first checked against it (`check_answer`). Raises
    SdpNegotiationError (488) when the stream was rejected or the answer breaks RFC 3264."""
    if offer is not None:
        check_answer(offer, answer)
    return stream_endpoints(answer, application_stream_index(answer))


def stream_endpoints(description: SessionDescription, media_index: int) -> NegotiatedStream:
    """What one m= section of an offer or answer says about where to send (see
    `NegotiatedStream`)."""
    media = description.media[media_index]
    connection = description.connection_for(media)
    if connection is None:  # the parser and the model both forbid it
        raise SdpUsageError(f"media description {media_index} has no c=")
    usable: list[Candidate] = []
    ignored: list[Candidate] = []
    for candidate in candidates_of(media):
        # RFC 8839 section 5.1: ignore FQDN candidates and transports we do not run.
        (ignored if candidate.is_fqdn or not candidate.is_udp else usable).append(candidate)
    options = _attribute(media.attributes, ICE_OPTIONS) or _attribute(
        description.attributes, ICE_OPTIONS
    )
    return NegotiatedStream(
        media_index=media_index,
        default=Endpoint(connection.address, media.port),
        formats=media.formats,
        candidates=tuple(usable),
        ignored=tuple(ignored),
        credentials=credentials_of(description, media),
        ice_options=ice_options(options) if options else (),
        ice_mismatch=media.has_attribute(ICE_MISMATCH),
        end_of_candidates=media.has_attribute(END_OF_CANDIDATES)
        or any(a.name == END_OF_CANDIDATES for a in description.attributes),
    )


def check_answer(offer: SessionDescription, answer: SessionDescription) -> None:
    """RFC 3264 section 6 rules an answer must keep, else SdpNegotiationError (488)."""
    if len(answer.media) != len(offer.media):
        raise SdpNegotiationError(
            f"answer has {len(answer.media)} m= lines for {len(offer.media)} offered (RFC 3264 §6)"
        )
    if answer.times != offer.times:
        raise SdpNegotiationError("answer t= differs from the offer's (RFC 3264 §6)")
    for index, (offered, answered) in enumerate(zip(offer.media, answer.media, strict=True)):
        if answered.media != offered.media:
            raise SdpNegotiationError(
                f"answer m= line {index + 1} is {answered.media}, offered {offered.media} "
                "(RFC 3264 §6)"
            )
        if answered.rejected:
            continue
        if offered.rejected:
            raise SdpNegotiationError(
                f"answer accepts m= line {index + 1} that the offer rejected (RFC 3264 §6)"
            )
        if not _shares_a_format(offered, answered):
            raise SdpNegotiationError(
                f"answer m= line {index + 1} lists only formats the offer did not list "
                "(RFC 3264 §6.1: an accepted stream keeps at least one offered format)"
            )


def _shares_a_format(offered: MediaDescription, answered: MediaDescription) -> bool:
    """RFC 3264 section 6.1: an accepted stream lists at least one format "from amongst those
    listed in the offer", and MAY list more the offer did not (RFC 4317 section 3.2 answers
    with PCMU to an iLBC-only offer). For RTP, a dynamic payload type names its codec only
    through a=rtpmap, and the answer SHOULD (not MUST) reuse the offer's number: an answer
    renumbering an offered codec still shares it (RFC 4317 section 2.3, 97 -> 99)."""
    if any(f in offered.formats for f in answered.formats):
        return True
    if not answered.proto.upper().startswith("RTP/"):
        return False
    offered_map = _rtpmap(offered)
    offered_codecs = {offered_map[f] for f in offered.formats if f in offered_map}
    answered_map = _rtpmap(answered)
    return any(
        _is_dynamic_payload_type(f) and f in answered_map and answered_map[f] in offered_codecs
        for f in answered.formats
    )


# RFC 3551 section 3: payload types 96-127 are dynamic, bound to a codec by a=rtpmap alone.
_DYNAMIC_PAYLOAD_TYPES = range(96, 128)


def _is_dynamic_payload_type(fmt: str) -> bool:
    return fmt.isdigit() and len(fmt) <= 3 and int(fmt) in _DYNAMIC_PAYLOAD_TYPES


def _rtpmap(media: MediaDescription) -> dict[str, str]:
    """payload type -> "<encoding name>/<clock rate>[/<parameters>]" from the a=rtpmap lines
    (RFC 8866 section 6.6), lower-cased: encoding names are case-insensitive (RFC 4855 §3)."""
    codecs: dict[str, str] = {}
    for value in media.attribute_values("rtpmap"):
        payload_type, _, encoding = (value or "").partition(" ")
        if encoding:
            codecs.setdefault(payload_type, encoding.strip().lower())
    return codecs


def bump_version(description: SessionDescription) -> SessionDescription:
    """The same description with o= sess-version one higher: RFC 3264 section 8 asks it of
    every changed offer or answer in a session."""
    origin = replace(description.origin, sess_version=description.origin.sess_version + 1)
    return replace(description, origin=origin)


def _is_application_udp(media: MediaDescription) -> bool:
    return media.media == APPLICATION and media.proto.lower() == UDP_PROTO


def _attribute(attributes: Sequence[Attribute], name: str) -> str | None:
    for attribute in attributes:
        if attribute.name == name:
            return attribute.value
    return None


def _check_local_candidates(candidates: Sequence[Candidate]) -> None:
    if not candidates:
        raise SdpUsageError("at least one candidate is needed")
    for candidate in candidates:
        # RFC 8839 section 5.1: an agent generating local candidates must not use FQDNs.
        if candidate.is_fqdn:
            raise SdpUsageError(f"candidate address {candidate.address} is an FQDN (RFC 8839 §5.1)")
        if not candidate.is_udp:
            raise SdpUsageError(f"candidate transport {candidate.transport} is not UDP")


def _ice_attributes(
    credentials: IceCredentials | None,
    candidates: Sequence[Candidate],
    options: Sequence[str],
    end_of_candidates: bool,
) -> tuple[Attribute, ...]:
    if credentials is None:
        return ()
    attributes = [*credentials.to_attributes()]
    if options:
        attributes.append(Attribute(ICE_OPTIONS, " ".join(options)))
    attributes += [c.to_attribute() for c in candidates]
    if end_of_candidates:
        attributes.append(Attribute(END_OF_CANDIDATES))
    return tuple(attributes)


def _ice_mismatch(description: SessionDescription, media: MediaDescription) -> bool:
    """RFC 8839 section 4.2.5: the default destination must be one of the candidates of
    component 1; the placeholder 0.0.0.0/:: port 9 (item 2) and an FQDN (item 4) are not a
    mismatch."""
    connection = description.connection_for(media)
    candidates = [c for c in candidates_of(media) if c.component == 1]
    if connection is None or not candidates:
        return False
    if connection.address in ("0.0.0.0", "::") and media.port == _PLACEHOLDER_PORT:
        return False
    default = Endpoint(connection.address, media.port)
    if default.is_fqdn:
        return False
    return not any(
        c.port == default.port and c.ip is not None and str(c.ip) == _canonical(default.address)
        for c in candidates
    )


def _canonical(address: str) -> str:
    return str(ipaddress.ip_address(address))


def _insert_candidate(
    attributes: tuple[Attribute, ...], candidate: Candidate
) -> tuple[Attribute, ...]:
    names = [a.name for a in attributes]
    if CANDIDATE in names:
        at = len(names) - names[::-1].index(CANDIDATE)
    elif END_OF_CANDIDATES in names:
        at = names.index(END_OF_CANDIDATES)
    else:
        at = len(names)
    return (*attributes[:at], candidate.to_attribute(), *attributes[at:])
