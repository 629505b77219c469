"""SDP for the application stream (RFC 8866), its ICE attributes (RFC 8839) and offer/answer
(RFC 3264). Sans-IO: text in, frozen objects out, and back; no socket, no clock, randomness
injected.

- `description`: the model, `parse_sdp`, `serialize_sdp` (line grammar and order, bounds)
- `ice`: `Candidate`, `IceCredentials`, priority and foundation (RFC 8445 section 5.1)
- `offer_answer`: `build_offer`, `build_answer`, `add_candidate`, `negotiated_endpoints`
- `errors`: `SdpProtocolError` (the peer's fault; 400/488) vs `SdpUsageError` (ours)
"""

from .attribute import Attribute, address_version, is_fqdn
from .description import (
    DEFAULT_LIMITS,
    Bandwidth,
    Connection,
    MediaDescription,
    Origin,
    RepeatTime,
    SdpLimits,
    SessionDescription,
    TimeDescription,
    ZoneAdjustment,
    parse_sdp,
    serialize_sdp,
)
from .errors import (
    SdpError,
    SdpNegotiationError,
    SdpParseError,
    SdpProtocolError,
    SdpTooLarge,
    SdpUsageError,
)
from .ice import (
    Candidate,
    CandidateType,
    IceCredentials,
    candidate_foundation,
    candidate_priority,
)
from .offer_answer import (
    APPLICATION,
    DEFAULT_FORMAT,
    UDP_PROTO,
    Endpoint,
    NegotiatedStream,
    add_candidate,
    application_stream_index,
    build_answer,
    build_offer,
    bump_version,
    candidates_of,
    check_answer,
    credentials_of,
    default_candidate,
    negotiated_endpoints,
    stream_endpoints,
)

__all__ = [
    "APPLICATION",
    "DEFAULT_FORMAT",
    "DEFAULT_LIMITS",
    "UDP_PROTO",
    "Attribute",
    "Bandwidth",
    "Candidate",
    "CandidateType",
    "Connection",
    "Endpoint",
    "IceCredentials",
    "MediaDescription",
    "NegotiatedStream",
    "Origin",
    "RepeatTime",
    "SdpError",
    "SdpLimits",
    "SdpNegotiationError",
    "SdpParseError",
    "SdpProtocolError",
    "SdpTooLarge",
    "SdpUsageError",
    "SessionDescription",
    "TimeDescription",
    "ZoneAdjustment",
    "add_candidate",
    "address_version",
    "application_stream_index",
    "build_answer",
    "build_offer",
    "bump_version",
    "candidate_foundation",
    "candidate_priority",
    "candidates_of",
    "check_answer",
    "credentials_of",
    "default_candidate",
    "is_fqdn",
    "negotiated_endpoints",
    "parse_sdp",
    "serialize_sdp",
    "stream_endpoints",
]
