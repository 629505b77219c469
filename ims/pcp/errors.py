"""The PCP layer's error family.

As in h11 and ims.sip: `PcpProtocolError` is "the peer broke RFC 6887" (each leaf carries the
result code a server answers with, or None when the RFC says drop silently), `PcpUsageError` is
"we misused the API", `PcpRefused` is a well-formed error response from a server (one leaf per
result code, what a client acts on), `PcpTimeout` is no answer, `NftError` is the data plane.
"""

from __future__ import annotations

from ims.pcp.constants import SHORT_LIFETIME_ERRORS, ResultCode


class PcpError(Exception):
    """Base of every error raised by ims.pcp."""


# -- the peer broke the protocol ---------------------------------------------------------------


class PcpProtocolError(PcpError):
    """Bytes that are not a valid PCP message.

    `result_code` is what a server answers with (RFC 6887 section 8.2); None means the RFC
    says to drop the packet silently (it is too short to answer, or is itself a response).
    """

    result_code: ResultCode | None = ResultCode.MALFORMED_REQUEST

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PacketDropped(PcpProtocolError):
    """RFC 6887 section 8.2: shorter than 2 octets, or the R bit says it is not a request."""

    result_code = None


class UnsupportedVersion(PcpProtocolError):
    """RFC 6887 section 9: a version other than 2 (`version` is the one received)."""

    result_code = ResultCode.UNSUPP_VERSION

    def __init__(self, version: int) -> None:
        super().__init__(f"PCP version {version} is not supported (this implementation speaks 2)")
        self.version = version


class UnsupportedOpcode(PcpProtocolError):
    """RFC 6887 section 8.2: an opcode this codec does not know."""

    result_code = ResultCode.UNSUPP_OPCODE


class MalformedRequest(PcpProtocolError):
    """RFC 6887 section 8.2: wrong length, alignment or opcode-specific data."""

    result_code = ResultCode.MALFORMED_REQUEST


class MalformedOption(PcpProtocolError):
    """RFC 6887 section 7.3: an option that overruns the packet, repeats, or has a bad body."""

    result_code = ResultCode.MALFORMED_OPTION


class MalformedResponse(PcpProtocolError):
    """A response a client cannot use (it is dropped; a client never answers a response)."""

    result_code = None


# -- we misused the API ------------------------------------------------------------------------


class PcpUsageError(PcpError, ValueError):
    """A value the caller passed cannot be put on the wire or is not a valid configuration."""


# -- a server refused --------------------------------------------------------------------------


class PcpRefused(PcpError):
    """A PCP server answered with an error result code (RFC 6887 section 7.4).

    `retry_after` is the response's Lifetime: how long the same request will get the same
    error. `transient` is True for the RFC's short lifetime errors, worth retrying soon.
    """

    result_code: ResultCode = ResultCode.NOT_AUTHORIZED
    advice: str = ""

    def __init__(self, lifetime: int, server: str = "PCP server") -> None:
        name = self.result_code.name
        super().__init__(f"{server} refused the mapping: {name} ({int(self.result_code)}): "
                         f"{self.advice}; same answer for {lifetime} s")
        self.retry_after = lifetime
        self.server = server

    @property
    def transient(self) -> bool:
        return self.result_code in SHORT_LIFETIME_ERRORS


class RefusedUnsupportedVersion(PcpRefused):
    result_code = ResultCode.UNSUPP_VERSION
    advice = "the server does not speak PCP version 2 (it may be a NAT-PMP-only gateway)"


class RefusedNotAuthorized(PcpRefused):
    result_code = ResultCode.NOT_AUTHORIZED
    advice = ("policy forbids this request (another client owns the mapping with a different "
              "nonce, or this client may not ask for it)")


class RefusedMalformedRequest(PcpRefused):
    result_code = ResultCode.MALFORMED_REQUEST
    advice = "the server could not parse the request (a client bug)"


class RefusedUnsupportedOpcode(PcpRefused):
    result_code = ResultCode.UNSUPP_OPCODE
    advice = "the server does not implement this opcode (try MAP instead of PEER)"


class RefusedUnsupportedOption(PcpRefused):
    result_code = ResultCode.UNSUPP_OPTION
    advice = ("the server does not support a mandatory option in the request (THIRD_PARTY is "
              "often disabled)")


class RefusedMalformedOption(PcpRefused):
    result_code = ResultCode.MALFORMED_OPTION
    advice = "an option in the request was malformed or not valid for this opcode"


class RefusedNetworkFailure(PcpRefused):
    result_code = ResultCode.NETWORK_FAILURE
    advice = "the server cannot install mappings right now (its data plane failed)"


class RefusedNoResources(PcpRefused):
    result_code = ResultCode.NO_RESOURCES
    advice = "the server has no free external ports or table space"


class RefusedUnsupportedProtocol(PcpRefused):
    result_code = ResultCode.UNSUPP_PROTOCOL
    advice = "the server does not map this transport protocol (or 'all ports')"


class RefusedUserExceededQuota(PcpRefused):
    result_code = ResultCode.USER_EX_QUOTA
    advice = "the subscriber already holds as many mappings as its quota allows (RFC 6888 REQ-4)"


class RefusedCannotProvideExternal(PcpRefused):
    result_code = ResultCode.CANNOT_PROVIDE_EXTERNAL
    advice = "the suggested external address or port is not available (PREFER_FAILURE was set)"


class RefusedAddressMismatch(PcpRefused):
    result_code = ResultCode.ADDRESS_MISMATCH
    advice = ("the source address of the request differs from the PCP Client's IP Address "
              "field (a NAT between client and server)")


class RefusedExcessiveRemotePeers(PcpRefused):
    result_code = ResultCode.EXCESSIVE_REMOTE_PEERS
    advice = "the server cannot install this many FILTERs for one mapping"


REFUSALS: dict[ResultCode, type[PcpRefused]] = {
    cls.result_code: cls
    for cls in (
        RefusedUnsupportedVersion, RefusedNotAuthorized, RefusedMalformedRequest,
        RefusedUnsupportedOpcode, RefusedUnsupportedOption, RefusedMalformedOption,
        RefusedNetworkFailure, RefusedNoResources, RefusedUnsupportedProtocol,
        RefusedUserExceededQuota, RefusedCannotProvideExternal, RefusedAddressMismatch,
        RefusedExcessiveRemotePeers,
    )
}


class RefusedUnknownResult(PcpRefused):
    """A result code RFC 6887 does not define (a later RFC's, or a broken server)."""

    def __init__(self, code: int, lifetime: int, server: str = "PCP server") -> None:
        PcpError.__init__(self, f"{server} refused the mapping with unknown result code {code}; "
                                f"same answer for {lifetime} s")
        self.code = code
        self.retry_after = lifetime
        self.server = server

    @property
    def transient(self) -> bool:
        return False


def refusal_for(code: int, lifetime: int, server: str = "PCP server") -> PcpRefused:
    """The typed outcome of an error response (RFC 6887 section 7.4)."""
    try:
        return REFUSALS[ResultCode(code)](lifetime, server)
    except (ValueError, KeyError):
        return RefusedUnknownResult(code, lifetime, server)


class PcpTimeout(PcpError):
    """No response from the server within the caller's deadline."""


# -- the data plane ----------------------------------------------------------------------------


class NftError(PcpError):
    """`nft` failed: the message names the command and quotes nft's own error."""
