"""PCP numbers: version, port, opcodes, result codes, option codes (RFC 6887 sections 7 and 19).

Kept apart from the codec so the error family can name result codes without importing it.
"""

from __future__ import annotations

from enum import IntEnum

# RFC 6887 section 19.1: PCP is version 2 (version 1 was pre-RFC; 0 is NAT-PMP, RFC 6886).
VERSION = 2
NAT_PMP_VERSION = 0
# RFC 6887 section 19.1: the server listens on UDP 5351; section 14.1.1: ANNOUNCE to 5350.
SERVER_PORT = 5351
# RFC 6887 section 7: a PCP message is at most 1100 octets, a multiple of 4, header 24.
MAX_MESSAGE = 1100
HEADER_LENGTH = 24
NONCE_LENGTH = 12
# RFC 6887 section 7.1: the R bit marks a response.
RESPONSE_BIT = 0x80

# IANA protocol numbers the codec knows by name (the field carries any 0-255).
PROTOCOL_ANY = 0
PROTOCOL_TCP = 6
PROTOCOL_UDP = 17


class Opcode(IntEnum):
    """RFC 6887 section 19.2."""

    ANNOUNCE = 0
    MAP = 1
    PEER = 2


class ResultCode(IntEnum):
    """RFC 6887 section 7.4."""

    SUCCESS = 0
    UNSUPP_VERSION = 1
    NOT_AUTHORIZED = 2
    MALFORMED_REQUEST = 3
    UNSUPP_OPCODE = 4
    UNSUPP_OPTION = 5
    MALFORMED_OPTION = 6
    NETWORK_FAILURE = 7
    NO_RESOURCES = 8
    UNSUPP_PROTOCOL = 9
    USER_EX_QUOTA = 10
    CANNOT_PROVIDE_EXTERNAL = 11
    ADDRESS_MISMATCH = 12
    EXCESSIVE_REMOTE_PEERS = 13


# RFC 6887 section 7.4: these are "short lifetime errors" (a condition that may clear soon,
# answered with a Lifetime of about 30 s); every other error is a long lifetime error (~30 min).
SHORT_LIFETIME_ERRORS = frozenset({
    ResultCode.NETWORK_FAILURE,
    ResultCode.NO_RESOURCES,
    ResultCode.USER_EX_QUOTA,
    ResultCode.CANNOT_PROVIDE_EXTERNAL,
})


class OptionCode(IntEnum):
    """RFC 6887 section 19.3 (codes 0-127 mandatory to process, 128-255 optional)."""

    THIRD_PARTY = 1
    PREFER_FAILURE = 2
    FILTER = 3


# RFC 6887 section 7.3: an option the server does not know is an error only when its code
# is in the mandatory-to-process range.
FIRST_OPTIONAL_OPTION = 128
