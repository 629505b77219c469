"""Tests for ims.sip.digest: RFC vectors, client/server round trips, replay, parsing."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ims.sip.digest import (
    SUPPORTED_ALGORITHMS,
    CredentialsRejected,
    DigestAlgorithm,
    DigestChallenge,
    DigestClient,
    DigestCredentials,
    DigestError,
    DigestProtocolError,
    DigestServer,
    DigestServerConfig,
    DigestSyntaxError,
    DigestUsageError,
    DuplicateDigestParam,
    Failed,
    FailureReason,
    InvalidDigestParam,
    MissingDigestParam,
    NotDigestScheme,
    Ok,
    Password,
    Stale,
    StoredHA1,
    UnsupportedChallenge,
    compute_ha1,
    compute_response,
    format_challenge,
    format_credentials,
    parse_challenges,
    parse_credentials,
)

# Demo world (docs: ARCHITECTURE.md): Bill at MNO Alpha.
ALPHA_REALM = "ims.mnc001.mcc001.3gppnetwork.org"
BILL = "+15550100001@ims.mnc001.mcc001.3gppnetwork.org"
BILL_PASSWORD = "bill-secret"
REGISTER_URI = "sip:ims.mnc001.mcc001.3gppnetwork.org"
KEY = b"0123456789abcdef0123456789abcdef"
T0 = 1_700_000_000.0


def fixed(value: str) -> Callable[[], str]:
    return lambda: value


def counter_cnonce() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"cnonce{next(counter)}"


def fixed_random(n: int) -> bytes:
    return bytes(range(n))


def make_server(**overrides: object) -> DigestServer:
    config = {"realm": ALPHA_REALM, "secret_key": KEY, "nonce_lifetime": 60.0, **overrides}
    return DigestServer(DigestServerConfig(**config))  # type: ignore[arg-type]


def bill(**kwargs: object) -> DigestClient:
    return DigestClient(BILL, BILL_PASSWORD, cnonce_source=counter_cnonce(), **kwargs)  # type: ignore[arg-type]


# ---- RFC 7616 section 3.9.1 ------------------------------------------------------------------
# Values of the RFC's example (password "Circle of Life", lower-case "of", errata 4495).

RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_SHA256_RESPONSE = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
RFC7616_MD5_RESPONSE = "8ca523f5e9506fed4657c9700eebdbec"
# The two WWW-Authenticate values, folded across lines as printed in the RFC.
RFC7616_CHALLENGES = tuple(
    "Digest\r\n"
    '    realm="http-auth@example.org",\r\n'
    '    qop="auth, auth-int",\r\n'
    f"    algorithm={algorithm},\r\n"
    f'    nonce="{RFC7616_NONCE}",\r\n'
    f'    opaque="{RFC7616_OPAQUE}"'
    for algorithm in ("SHA-256", "MD5")
)


def test_rfc7616_3_9_1_request_digests() -> None:
    for algorithm, expected in (
        (DigestAlgorithm.SHA_256, RFC7616_SHA256_RESPONSE),
        (DigestAlgorithm.MD5, RFC7616_MD5_RESPONSE),
    ):
        ha1 = compute_ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life")
        response = compute_response(
            algorithm,
            ha1,
            nonce=RFC7616_NONCE,
            method="GET",
            digest_uri="/dir/index.html",
            qop="auth",
            nc=1,
            cnonce=RFC7616_CNONCE,
        )
        assert response == expected


def test_rfc7616_3_9_1_client_answers_sha256_challenge_first() -> None:
    challenges = parse_challenges(*RFC7616_CHALLENGES)
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
    assert challenges[0].qop == ("auth", "auth-int")
    assert challenges[0].opaque == RFC7616_OPAQUE
    client = DigestClient("Mufasa", "Circle of Life", cnonce_source=fixed(RFC7616_CNONCE))
    creds = parse_credentials(
        client.authorize(challenges, method="GET", digest_uri="/dir/index.html")
    )
    assert creds == DigestCredentials(
        username="Mufasa",
        realm="http-auth@example.org",
        nonce=RFC7616_NONCE,
        uri="/dir/index.html",
        response=RFC7616_SHA256_RESPONSE,
        algorithm="SHA-256",
        cnonce=RFC7616_CNONCE,
        opaque=RFC7616_OPAQUE,
        qop="auth",
        nc=1,
    )


def test_rfc7616_3_9_1_md5_only_client_answers_md5_challenge() -> None:
    challenges = parse_challenges(*RFC7616_CHALLENGES)
    client = DigestClient(
        "Mufasa",
        "Circle of Life",
        cnonce_source=fixed(RFC7616_CNONCE),
        algorithms=[DigestAlgorithm.MD5],
    )
    creds = parse_credentials(
        client.authorize(challenges, method="GET", digest_uri="/dir/index.html")
    )
    assert creds.algorithm == "MD5"
    assert creds.response == RFC7616_MD5_RESPONSE


def test_rfc7616_3_4_2_sess_a1_includes_nonce_and_cnonce() -> None:
    # Spelled out with hashlib: A1 = H(user:realm:pass) ":" nonce ":" cnonce for -sess.
    def h(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    ha1 = h("Mufasa:http-auth@example.org:Circle of Life")
    sess = h(f"{ha1}:{RFC7616_NONCE}:{RFC7616_CNONCE}")
    ha2 = h("GET:/dir/index.html")
    expected = h(f"{sess}:{RFC7616_NONCE}:00000001:{RFC7616_CNONCE}:auth:{ha2}")
    response = compute_response(
        DigestAlgorithm.SHA_256_SESS,
        compute_ha1(
            DigestAlgorithm.SHA_256_SESS, "Mufasa", "http-auth@example.org", "Circle of Life"
        ),
        nonce=RFC7616_NONCE,
        method="GET",
        digest_uri="/dir/index.html",
        qop="auth",
        nc=1,
        cnonce=RFC7616_CNONCE,
    )
    assert response == expected


# ---- RFC 2617 section 3.5 and RFC 2069 compatibility -----------------------------------------

RFC2617_CHALLENGE = (
    'Digest realm="testrealm@host.com", qop="auth,auth-int", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)


def test_rfc2617_3_5_example() -> None:
    client = DigestClient("Mufasa", "Circle Of Life", cnonce_source=fixed("0a4f113b"))
    value = client.authorize(
        parse_challenges(RFC2617_CHALLENGE), method="GET", digest_uri="/dir/index.html"
    )
    creds = parse_credentials(value)
    assert creds.response == "6629fae49393a05397450978507c4ef1"
    assert (creds.qop, creds.nc, creds.cnonce) == ("auth", 1, "0a4f113b")
    assert creds.opaque == "5ccc069c403ebaf9f0171e9517f40e41"
    assert creds.algorithm is None  # the challenge had none, so the answer has none
    assert "nc=00000001" in value and "qop=auth," in value


def test_rfc2617_3_2_2_1_no_qop_is_rfc2069_md5() -> None:
    # Without qop: response = KD(H(A1), nonce ":" H(A2)). Value of the RFC 2069 example
    # (password "CircleOfLife"), also reproduced by independent implementations.
    challenge = parse_challenges(
        'Digest realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    client = DigestClient("Mufasa", "CircleOfLife", cnonce_source=fixed("unused"))
    creds = parse_credentials(
        client.authorize(challenge, method="GET", digest_uri="/dir/index.html")
    )
    assert creds.response == "1949323746fe6a43ef61f9606e7febea"
    assert (creds.qop, creds.nc, creds.cnonce) == (None, None, None)


def test_rfc2069_mode_refused_for_sha256_and_sess() -> None:
    for algorithm in ("SHA-256", "MD5-sess"):
        challenge = parse_challenges(f'Digest realm="r", nonce="n", algorithm={algorithm}')
        with pytest.raises(UnsupportedChallenge):
            bill().authorize(challenge, method="REGISTER", digest_uri=REGISTER_URI)


# ---- client choice (RFC 8760) ----------------------------------------------------------------


def _challenge(algorithm: str | None, realm: str = ALPHA_REALM, nonce: str = "n1") -> str:
    alg = f", algorithm={algorithm}" if algorithm else ""
    return f'Digest realm="{realm}", nonce="{nonce}", qop="auth"{alg}'


def test_rfc8760_client_picks_strongest_supported() -> None:
    values = [_challenge("MD5"), _challenge("SHA-256"), _challenge("MD5-sess")]
    chosen = bill().choose(parse_challenges(*values))
    assert chosen.algorithm == "SHA-256"
    sha512 = [_challenge("SHA-512-256"), _challenge(None)]
    chosen = bill(algorithms=[DigestAlgorithm.MD5]).choose(parse_challenges(*sha512))
    assert chosen.algorithm is None  # absent algorithm means MD5


def test_rfc7616_3_3_unknown_algorithm_and_qop_ignored() -> None:
    values = [
        _challenge("SHA-3-whatever"),
        'Digest realm="x", nonce="y", qop="auth-conf"',
        _challenge("MD5"),
    ]
    assert bill().choose(parse_challenges(*values)).algorithm == "MD5"
    with pytest.raises(UnsupportedChallenge, match="SHA-3-whatever"):
        bill().choose(parse_challenges(*values[:2]))


def test_client_realm_filter() -> None:
    values = [_challenge("SHA-256", realm="evil.example"), _challenge("MD5")]
    assert bill(realm=ALPHA_REALM).choose(parse_challenges(*values)).realm == ALPHA_REALM
    with pytest.raises(UnsupportedChallenge):
        bill(realm=ALPHA_REALM).choose(parse_challenges(values[0]))


def test_client_nonce_count_increases_per_nonce_and_resets_on_new_nonce() -> None:
    client = bill()
    first = parse_credentials(
        client.authorize(
            parse_challenges(_challenge("SHA-256")), method="REGISTER", digest_uri=REGISTER_URI
        )
    )
    again = client.authorize_again(ALPHA_REALM, method="REGISTER", digest_uri=REGISTER_URI)
    assert again is not None
    assert (first.nc, parse_credentials(again).nc) == (1, 2)
    assert parse_credentials(again).cnonce != first.cnonce
    fresh = parse_credentials(
        client.authorize(
            parse_challenges(_challenge("SHA-256", nonce="n2")),
            method="REGISTER",
            digest_uri=REGISTER_URI,
        )
    )
    assert (fresh.nonce, fresh.nc) == ("n2", 1)
    assert client.authorize_again("other.realm", method="REGISTER", digest_uri=REGISTER_URI) is None


def test_client_auth_int_preference() -> None:
    both = parse_challenges('Digest realm="r", nonce="n", qop="auth,auth-int", algorithm=SHA-256')
    only_int = parse_challenges('Digest realm="r", nonce="n", qop="auth-int", algorithm=SHA-256')
    uri = "sip:r"
    assert parse_credentials(bill().authorize(both, method="MESSAGE", digest_uri=uri)).qop == "auth"
    preferring = bill(prefer_auth_int=True)
    assert (
        parse_credentials(preferring.authorize(both, method="MESSAGE", digest_uri=uri)).qop
        == "auth-int"
    )
    assert (
        parse_credentials(bill().authorize(only_int, method="MESSAGE", digest_uri=uri)).qop
        == "auth-int"
    )


# ---- client <-> server round trips -----------------------------------------------------------

ROUND_TRIPS = [
    (a, q)
    for a in sorted(SUPPORTED_ALGORITHMS, key=lambda a: a.value)
    for q in ("auth", "auth-int")
]


@pytest.mark.parametrize(
    ("algorithm", "qop"), ROUND_TRIPS, ids=[f"{a.value}-{q}" for a, q in ROUND_TRIPS]
)
@pytest.mark.parametrize("stored", ["password", "ha1"])
def test_round_trip(algorithm: DigestAlgorithm, qop: str, stored: str) -> None:
    server = make_server(algorithms=(algorithm,), qop=(qop,))
    client = bill()
    body = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
    value = client.authorize(
        parse_challenges(*server.challenge_values(T0)),
        method="INVITE",
        digest_uri=REGISTER_URI,
        body=body,
    )
    secret = (
        Password(BILL_PASSWORD)
        if stored == "password"
        else StoredHA1.from_password(BILL, ALPHA_REALM, BILL_PASSWORD)
    )
    verdict = server.verify(
        parse_credentials(value),
        method="INVITE",
        request_uri=REGISTER_URI,
        body=body,
        secret=secret,
        now=T0 + 1,
    )
    assert verdict == Ok(BILL, algorithm, qop)
    if qop == "auth-int":
        # RFC 7616 section 3.4.3: auth-int covers the body; a changed body fails.
        again = client.authorize_again(
            ALPHA_REALM, method="INVITE", digest_uri=REGISTER_URI, body=body
        )
        assert again is not None
        tampered = server.verify(
            parse_credentials(again),
            method="INVITE",
            request_uri=REGISTER_URI,
            body=body + b"x",
            secret=secret,
            now=T0 + 2,
        )
        assert isinstance(tampered, Failed) and tampered.reason is FailureReason.WRONG_RESPONSE


def test_rfc2069_round_trip_and_single_use_nonce() -> None:
    server = make_server(algorithms=(DigestAlgorithm.MD5,), qop=(), accept_rfc2069=True)
    challenges = server.challenges(T0)
    assert challenges[0].qop is None
    value = bill().authorize(challenges, method="REGISTER", digest_uri=REGISTER_URI)
    creds = parse_credentials(value)
    assert _verify(server, creds, T0) == Ok(BILL, DigestAlgorithm.MD5, None)
    # No nonce-count without qop, so the nonce is single-use.
    assert _verify(server, creds, T0) == Stale(BILL)


def test_server_without_rfc2069_requires_qop() -> None:
    server = make_server(algorithms=(DigestAlgorithm.MD5,))
    nonce = server.new_nonce(T0)
    no_qop = parse_challenges(f'Digest realm="{ALPHA_REALM}", nonce="{nonce}"')
    creds = parse_credentials(bill().authorize(no_qop, method="REGISTER", digest_uri=REGISTER_URI))
    verdict = server.verify(
        creds, method="REGISTER", request_uri=REGISTER_URI, secret=Password(BILL_PASSWORD), now=T0
    )
    assert isinstance(verdict, Failed) and verdict.reason is FailureReason.QOP_REQUIRED


def test_rfc8760_server_offers_one_challenge_per_algorithm_sha256_first() -> None:
    server = make_server(algorithms=(DigestAlgorithm.MD5, DigestAlgorithm.SHA_256))
    values = server.challenge_values(T0)
    assert len(values) == 2
    parsed = parse_challenges(*values)
    assert [c.algorithm for c in parsed] == ["SHA-256", "MD5"]
    assert parsed[0].nonce == parsed[1].nonce
    assert all(c.realm == ALPHA_REALM and c.qop == ("auth", "auth-int") for c in parsed)
    # An MD5-only UA (a stock phone) still gets in.
    md5_ua = DigestClient(BILL, BILL_PASSWORD, algorithms=[DigestAlgorithm.MD5])
    creds = parse_credentials(md5_ua.authorize(parsed, method="REGISTER", digest_uri=REGISTER_URI))
    verdict = server.verify(
        creds, method="REGISTER", request_uri=REGISTER_URI, secret=Password(BILL_PASSWORD), now=T0
    )
    assert verdict == Ok(BILL, DigestAlgorithm.MD5, "auth")


# ---- server: stale, restart, replay, failures ------------------------------------------------


def _register(server: DigestServer, client: DigestClient, now: float) -> DigestCredentials:
    value = client.authorize(
        parse_challenges(*server.challenge_values(now)), method="REGISTER", digest_uri=REGISTER_URI
    )
    return parse_credentials(value)


def _verify(server: DigestServer, creds: DigestCredentials, now: float, **kw: object) -> object:
    args: dict[str, object] = {
        "method": "REGISTER",
        "request_uri": REGISTER_URI,
        "secret": Password(BILL_PASSWORD),
        "now": now,
        **kw,
    }
    return server.verify(creds, **args)  # type: ignore[arg-type]


def test_rfc7616_3_3_expired_nonce_is_stale_and_client_recovers_without_prompt() -> None:
    server = make_server()
    client = bill()
    creds = _register(server, client, T0)
    assert _verify(server, creds, T0 + 61) == Stale(BILL)
    stale = parse_challenges(*server.challenge_values(T0 + 61, stale=True))
    assert all(c.stale for c in stale)
    # Same client object, no new password: it simply answers the fresh nonce.
    value = client.authorize(
        stale, method="REGISTER", digest_uri=REGISTER_URI, had_credentials=True
    )
    assert _verify(server, parse_credentials(value), T0 + 62) == Ok(
        BILL, DigestAlgorithm.SHA_256, "auth"
    )


def test_nonce_from_the_future_is_stale() -> None:
    server = make_server()
    creds = _register(server, bill(), T0 + 3600)
    assert _verify(server, creds, T0) == Stale(BILL)


def test_restarted_server_with_same_key_verifies_nonce() -> None:
    creds = _register(make_server(), bill(), T0)
    assert isinstance(_verify(make_server(), creds, T0 + 1), Ok)
    other_key = make_server(secret_key=b"another key of 16+ bytes")
    # Right password, but a nonce this server cannot vouch for: stale, not a failure.
    assert _verify(other_key, creds, T0 + 1) == Stale(BILL)


def test_tampered_or_foreign_nonce_is_never_ok() -> None:
    server = make_server()
    client = bill()
    for nonce in ("A" * 48, "not-a-nonce", server.new_nonce(T0)[:-2] + "AA"):
        challenge = parse_challenges(
            f'Digest realm="{ALPHA_REALM}", nonce="{nonce}", qop="auth", algorithm=SHA-256'
        )
        creds = parse_credentials(
            client.authorize(challenge, method="REGISTER", digest_uri=REGISTER_URI)
        )
        assert _verify(server, creds, T0) == Stale(BILL)


def test_rfc7616_3_4_replayed_nonce_count_rejected() -> None:
    server = make_server()
    client = bill()
    creds = _register(server, client, T0)
    assert isinstance(_verify(server, creds, T0 + 1), Ok)
    replay = _verify(server, creds, T0 + 2)
    assert isinstance(replay, Failed) and replay.reason is FailureReason.REPLAYED_NONCE_COUNT
    nxt = client.authorize_again(ALPHA_REALM, method="REGISTER", digest_uri=REGISTER_URI)
    assert nxt is not None
    assert isinstance(_verify(server, parse_credentials(nxt), T0 + 3), Ok)
    # An older count after a newer one is a replay as well.
    assert isinstance(_verify(server, creds, T0 + 4), Failed)


def test_wrong_response_does_not_consume_nonce_count() -> None:
    server = make_server()
    creds = _register(server, bill(), T0)
    wrong = _verify(server, creds, T0, secret=Password("guess"))
    assert isinstance(wrong, Failed) and wrong.reason is FailureReason.WRONG_RESPONSE
    assert isinstance(_verify(server, creds, T0), Ok)


def test_replay_state_is_bounded_and_eviction_never_reopens_a_nonce() -> None:
    server = make_server(max_tracked_nonces=2)
    first = _register(server, bill(), T0)
    assert isinstance(_verify(server, first, T0), Ok)
    for i in range(1, 4):
        assert isinstance(_verify(server, _register(server, bill(), T0 + i), T0 + i), Ok)
    assert server.tracked_nonces == 2
    # first's state was evicted while its nonce is still valid: a replay must not pass.
    assert _verify(server, first, T0 + 4) == Stale(BILL)
    server.expire(T0 + 1000)
    assert server.tracked_nonces == 0


def test_expired_state_is_dropped_on_use() -> None:
    server = make_server()
    for i in range(5):
        assert isinstance(_verify(server, _register(server, bill(), T0 + i), T0 + i), Ok)
    assert server.tracked_nonces == 5
    assert isinstance(_verify(server, _register(server, bill(), T0 + 200), T0 + 200), Ok)
    assert server.tracked_nonces == 1


def test_wrong_password_then_client_reports_rejection() -> None:
    server = make_server()
    client = DigestClient(BILL, "wrong", cnonce_source=counter_cnonce())
    creds = _register(server, client, T0)
    verdict = _verify(server, creds, T0)
    assert isinstance(verdict, Failed) and verdict.reason is FailureReason.WRONG_RESPONSE
    with pytest.raises(CredentialsRejected, match="check username and password"):
        client.authorize(
            parse_challenges(*server.challenge_values(T0)),
            method="REGISTER",
            digest_uri=REGISTER_URI,
            had_credentials=True,
        )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"request_uri": "sip:other.example"}, FailureReason.URI_MISMATCH),
        ({"secret": None}, FailureReason.UNKNOWN_USER),
        ({"secret": StoredHA1({})}, FailureReason.NO_SECRET_FOR_ALGORITHM),
    ],
)
def test_verify_failures(change: dict[str, object], reason: FailureReason) -> None:
    server = make_server()
    verdict = _verify(server, _register(server, bill(), T0), T0, **change)
    assert isinstance(verdict, Failed) and verdict.reason is reason


def test_rfc2617_3_2_2_5_digest_uri_must_match_request_uri() -> None:
    server = make_server()
    creds = _register(server, bill(), T0)
    verdict = _verify(server, creds, T0, request_uri=REGISTER_URI + ";transport=udp")
    assert isinstance(verdict, Failed) and verdict.reason is FailureReason.URI_MISMATCH
    lenient = _verify(
        server,
        creds,
        T0,
        request_uri=REGISTER_URI.upper(),
        uri_matches=lambda a, b: a.lower() == b.lower(),
    )
    assert isinstance(lenient, Ok)


def test_realm_algorithm_and_qop_must_have_been_offered() -> None:
    server = make_server(algorithms=(DigestAlgorithm.SHA_256,), qop=("auth",))
    nonce = server.new_nonce(T0)
    cases = [
        (
            f'Digest realm="other", nonce="{nonce}", qop="auth", algorithm=SHA-256',
            FailureReason.REALM_MISMATCH,
        ),
        (
            f'Digest realm="{ALPHA_REALM}", nonce="{nonce}", qop="auth", algorithm=MD5',
            FailureReason.ALGORITHM_NOT_OFFERED,
        ),
        (
            f'Digest realm="{ALPHA_REALM}", nonce="{nonce}", qop="auth-int", algorithm=SHA-256',
            FailureReason.QOP_NOT_OFFERED,
        ),
    ]
    for challenge, reason in cases:
        creds = parse_credentials(
            bill().authorize(
                parse_challenges(challenge), method="REGISTER", digest_uri=REGISTER_URI
            )
        )
        verdict = _verify(server, creds, T0)
        assert isinstance(verdict, Failed) and verdict.reason is reason, challenge


def test_hand_built_credentials_with_odd_response_fail_cleanly() -> None:
    server = make_server()
    creds = _register(server, bill(), T0)
    for response in ("é" * 64, "", "00"):
        odd = DigestCredentials(
            creds.username,
            creds.realm,
            creds.nonce,
            creds.uri,
            response,
            creds.algorithm,
            creds.cnonce,
            creds.opaque,
            creds.qop,
            creds.nc,
        )
        verdict = _verify(server, odd, T0)
        assert isinstance(verdict, Failed) and verdict.reason is FailureReason.WRONG_RESPONSE


def test_select_credentials_for_this_realm() -> None:
    server = make_server()
    mine = DigestCredentials(BILL, ALPHA_REALM, "n", REGISTER_URI, "00")
    other = DigestCredentials(BILL, "beta", "n", REGISTER_URI, "00")
    assert server.select([other, mine]) is mine
    assert server.select([other]) is None


def test_server_config_validation() -> None:
    bad: list[dict[str, object]] = [
        {"secret_key": b"short"},
        {"nonce_lifetime": 0},
        {"nonce_lifetime": float("nan")},
        {"algorithms": ()},
        {"algorithms": (DigestAlgorithm.MD5, DigestAlgorithm.MD5)},
        {"qop": ("auth-conf",)},
        {"qop": ()},
        {"realm": "bad\r\nrealm"},
        {"max_tracked_nonces": 0},
    ]
    for overrides in bad:
        with pytest.raises(DigestUsageError):
            make_server(**overrides)
    with pytest.raises(DigestUsageError):
        make_server().challenges(float("inf"))


def test_server_nonce_uses_injected_randomness() -> None:
    a = DigestServer(DigestServerConfig(ALPHA_REALM, KEY), random_bytes=fixed_random)
    b = DigestServer(DigestServerConfig(ALPHA_REALM, KEY), random_bytes=fixed_random)
    assert a.new_nonce(T0) == b.new_nonce(T0)
    assert a.new_nonce(T0) != a.new_nonce(T0 + 1)


# ---- parsing -------------------------------------------------------------------------------


def test_quoted_pair_unescaped_and_round_tripped() -> None:
    creds = parse_credentials(
        r'Digest username="a\"b\\c", realm="r", nonce="n", uri="sip:x", response="ab"'
    )
    assert creds.username == 'a"b\\c'
    assert parse_credentials(format_credentials(creds)) == creds


def test_spaces_around_equals_case_insensitive_names_and_scheme() -> None:
    (challenge,) = parse_challenges(
        'digest  REALM = "r" ,Nonce=  "n",  QOP = "Auth" , stale = TRUE'
    )
    assert challenge == DigestChallenge(realm="r", nonce="n", qop=("auth",), stale=True)


def test_tokens_and_quoted_strings_both_accepted() -> None:
    (challenge,) = parse_challenges('Digest realm=r, nonce=abc, algorithm="SHA-256", qop=auth')
    assert (challenge.realm, challenge.nonce, challenge.algorithm, challenge.qop) == (
        "r",
        "abc",
        "SHA-256",
        ("auth",),
    )


def test_multiple_challenges_in_one_value_equal_several_values() -> None:
    one = parse_challenges(f"{_challenge('SHA-256')}, {_challenge('MD5')}")
    several = parse_challenges(_challenge("SHA-256"), _challenge("MD5"))
    assert one == several
    assert [c.algorithm for c in one] == ["SHA-256", "MD5"]


def test_other_schemes_skipped() -> None:
    mixed = parse_challenges(f'Basic realm="x", {_challenge("MD5")}', 'Bearer realm="y", scope="z"')
    assert [c.algorithm for c in mixed] == ["MD5"]
    with pytest.raises(NotDigestScheme, match="'Basic'"):
        parse_challenges('Basic realm="x"')
    with pytest.raises(NotDigestScheme):
        parse_credentials('Basic realm="x"')


def test_unknown_params_preserved() -> None:
    (challenge,) = parse_challenges('Digest realm="r", nonce="n", userhash=true, X-Ext="a b"')
    assert challenge.params == (("userhash", "true"), ("x-ext", "a b"))
    assert parse_challenges(format_challenge(challenge)) == (challenge,)
    creds = parse_credentials(
        'Digest username="u", realm="r", nonce="n", uri="u", response="00", Foo=bar'
    )
    assert creds.params == (("foo", "bar"),)


def test_lws_with_line_folding_accepted() -> None:
    creds = parse_credentials(
        'Digest username="u",\r\n realm="r",\r\n\tnonce="n", uri="u",response="0F"'
    )
    assert (creds.realm, creds.nonce, creds.response) == ("r", "n", "0F")


@pytest.mark.parametrize(
    ("value", "error", "phrase"),
    [
        (
            'Digest realm="r", nonce="n", REALM="s"',
            DuplicateDigestParam,
            "Duplicate Digest Parameter realm",
        ),
        ('Digest nonce="n"', MissingDigestParam, "Missing Digest Parameter realm"),
        ('Digest realm="r"', MissingDigestParam, "Missing Digest Parameter nonce"),
        ('Digest realm="r", nonce=""', InvalidDigestParam, "Invalid Digest Parameter nonce"),
        (
            'Digest realm="r", nonce="n", qop="auth,"',
            InvalidDigestParam,
            "Invalid Digest Parameter qop",
        ),
        ('Digest realm="r", nonce="n",', DigestSyntaxError, "Malformed Digest Challenge"),
        ('Digest realm="r, nonce="n"', DigestSyntaxError, "Malformed Digest Challenge"),
        ('Digest realm="r" nonce="n"', DigestSyntaxError, "Malformed Digest Challenge"),
        ('Digest realm "r"', DigestSyntaxError, "Malformed Digest Challenge"),
        ('Digest realm="a\\', DigestSyntaxError, "Malformed Digest Challenge"),
        ('Digest realm="r"\r\nnonce="n"', DigestSyntaxError, "Malformed Digest Challenge"),
        ('Digest realm="r\x01", nonce="n"', DigestSyntaxError, "Malformed Digest Challenge"),
        ("Digest", DigestSyntaxError, "Malformed Digest Challenge"),
        ("   ", DigestSyntaxError, "Malformed Digest Challenge"),
        ("Digest,realm=r", DigestSyntaxError, "Malformed Digest Challenge"),
    ],
)
def test_challenge_parse_errors(value: str, error: type[DigestProtocolError], phrase: str) -> None:
    with pytest.raises(error) as info:
        parse_challenges(value)
    assert info.value.status_code == 400
    assert info.value.reason == phrase
    assert phrase in str(info.value)


CRED_BASE = 'Digest username="u", realm="r", nonce="n", uri="sip:x", response="0a"'


@pytest.mark.parametrize(
    ("value", "error", "name"),
    [
        (CRED_BASE + ', qop=auth, cnonce="c"', MissingDigestParam, "nc"),
        (CRED_BASE + ", qop=auth, nc=00000001", MissingDigestParam, "cnonce"),
        (CRED_BASE + ', qop=auth, nc=1, cnonce="c"', InvalidDigestParam, "nc"),
        (CRED_BASE + ', qop=auth, nc=0000000g, cnonce="c"', InvalidDigestParam, "nc"),
        (CRED_BASE + ', cnonce="c"', InvalidDigestParam, "cnonce"),
        (CRED_BASE + ", nc=00000001", InvalidDigestParam, "nc"),
        (CRED_BASE.replace('"0a"', '"zz"'), InvalidDigestParam, "response"),
        (CRED_BASE.replace(', uri="sip:x"', ""), MissingDigestParam, "uri"),
        (CRED_BASE + ', Username="v"', DuplicateDigestParam, "username"),
        (CRED_BASE + ', qop="auth int", nc=00000001, cnonce="c"', InvalidDigestParam, "qop"),
    ],
)
def test_credentials_parse_errors(value: str, error: type[DigestProtocolError], name: str) -> None:
    with pytest.raises(error) as info:
        parse_credentials(value)
    assert info.value.name == name  # type: ignore[attr-defined]
    assert info.value.status_code == 400


def test_two_credentials_in_one_value_rejected() -> None:
    with pytest.raises(DigestProtocolError, match="more than one"):
        parse_credentials(f'{CRED_BASE}, Digest username="v", realm="r"')


def test_credentials_nc_and_qop_parsed() -> None:
    creds = parse_credentials(CRED_BASE + ', qop="AUTH", nc=0000000A, cnonce="c"')
    assert (creds.qop, creds.nc, creds.cnonce) == ("auth", 10, "c")


def test_formatting_refuses_header_injection() -> None:
    creds = DigestCredentials("u\r\nVia: evil", "r", "n", "sip:x", "00")
    with pytest.raises(DigestUsageError):
        format_credentials(creds)
    client = DigestClient("u", "p", cnonce_source=fixed(""))
    with pytest.raises(DigestUsageError):
        client.authorize(parse_challenges(_challenge("MD5")), method="REGISTER", digest_uri="sip:x")


def test_compute_response_misuse() -> None:
    with pytest.raises(DigestUsageError):
        compute_response(
            DigestAlgorithm.MD5, "00", nonce="n", method="M", digest_uri="u", qop="auth"
        )
    with pytest.raises(DigestUsageError):
        compute_response(
            DigestAlgorithm.MD5_SESS, "00", nonce="n", method="M", digest_uri="u", qop=None
        )
    with pytest.raises(DigestUsageError):
        compute_response(
            DigestAlgorithm.MD5, "00", nonce="n", method="M", digest_uri="u", qop="auth-conf"
        )


def test_error_reason_phrases_are_valid_sip_reason_phrases() -> None:
    # Reason-Phrase excludes CR, LF and '"' (RFC 3261 section 25.1).
    for value in (
        'Digest realm="r", nonce="n", "x"=1',
        'Digest realm="r", nonce="n", a`b="1", a`b="2"',
    ):
        with pytest.raises(DigestProtocolError) as info:
            parse_challenges(value)
        assert not set(info.value.reason) & set('"\r\n`%')


# ---- fuzz: parse or raise the module's own error, nothing else --------------------------------

GRAMMAR_ALPHABET = 'Digest realm="nonce,qop=auth\\ \t\r\nMD5-x\x00\xe9'


def _parse_or_own_error(text: str) -> None:
    for parse in (parse_challenges, parse_credentials):
        try:
            parse(text)
        except DigestProtocolError as exc:
            assert isinstance(exc, DigestError)
            assert exc.status_code == 400 and "\r" not in exc.reason and "\n" not in exc.reason


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text(text: str) -> None:
    _parse_or_own_error(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=GRAMMAR_ALPHABET, max_size=120))
def test_fuzz_grammar_alphabet(text: str) -> None:
    _parse_or_own_error(text)
    _parse_or_own_error("Digest " + text)


@settings(max_examples=200, deadline=None)
@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x7f"),
        min_size=0,
        max_size=30,
    ),
    st.integers(min_value=1, max_value=0xFFFFFFFF),
)
def test_credentials_format_parse_round_trip(text: str, nc: int) -> None:
    creds = DigestCredentials(
        username=text,
        realm=text,
        nonce="n" + text,
        uri="sip:" + text,
        response="0123abcd",
        algorithm="SHA-256",
        cnonce=text,
        opaque=text,
        qop="auth",
        nc=nc,
    )
    assert parse_credentials(format_credentials(creds)) == creds


def test_errors_belong_to_the_sip_error_family() -> None:
    from ims.sip.errors import LocalProtocolError, ParseError, SipError

    with pytest.raises(ParseError) as info:
        parse_challenges('Digest realm="r", realm="s", nonce="n"')
    assert str(info.value).startswith("400 Duplicate Digest Parameter realm: ")
    with pytest.raises(LocalProtocolError):
        make_server(secret_key=b"")
    assert issubclass(UnsupportedChallenge, SipError) and issubclass(CredentialsRejected, SipError)
