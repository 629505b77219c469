"""SIP over TLS (RFC 3261 sections 18 and 26.2, RFC 5630, RFC 5922): the asyncio TLS endpoint
with mutual authentication, the identity check, and `openssl s_client` as a real TLS peer.

Certificates are made at test time with the `openssl` command line in tmp_path. Everything
listens on 127.0.16.1 only."""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import subprocess
import warnings
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ims.sip.address import Address
from ims.sip.message import Message, Request, make_response, parse_message
from ims.sip.transport import (
    PeerCertificate,
    TlsRefused,
    TlsTransport,
    certificate_fingerprint,
    identity_problem,
    tls_context,
)

HOST = "127.0.16.1"
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(
    OPENSSL is None, reason="the openssl command line is missing (Debian package openssl)")


@dataclass(frozen=True)
class Cert:
    certificate: Path
    key: Path

    @property
    def der(self) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.certificate.read_text())

    @property
    def fingerprint(self) -> str:
        return certificate_fingerprint(self.der)


def _openssl(*args: str) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], check=True, capture_output=True, timeout=30)


def make_cert(directory: Path, name: str, san: str, *, ca: Cert | None = None,
              is_ca: bool = False) -> Cert:
    """A P-256 certificate for `name` with subjectAltName `san` ("DNS:x", "URI:sip:x"):
    self-signed, or issued by `ca`."""
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    subject = f"/CN={name}"
    constraints = "basicConstraints=critical,CA:TRUE" if is_ca else "basicConstraints=CA:FALSE"
    common = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
              "-keyout", str(key), "-subj", subject, "-addext", f"subjectAltName={san}",
              "-addext", constraints]
    if ca is None:
        _openssl("req", "-x509", *common, "-days", "2", "-out", str(cert))
    else:
        csr = directory / f"{name}.csr"
        _openssl("req", "-new", *common, "-out", str(csr))
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.certificate), "-CAkey",
                 str(ca.key), "-CAcreateserial", "-days", "2", "-copy_extensions", "copy",
                 "-out", str(cert))
    return Cert(cert, key)


class Pinned:
    """A TlsPolicy for tests: presents `own`, accepts certificates chaining to `trust` (as
    a server) and pins the other side's certificate by `fingerprint`, expects `domain`."""

    def __init__(self, own: Cert, trust: Cert, *, fingerprint: str | None,
                 domain: str | None = None) -> None:
        self.fingerprint, self.domain = fingerprint, domain
        self.server = tls_context(ssl.Purpose.CLIENT_AUTH, str(own.certificate), str(own.key))
        self.server.verify_mode = ssl.CERT_REQUIRED
        self.server.load_verify_locations(cafile=str(trust.certificate))
        self.client = tls_context(ssl.Purpose.SERVER_AUTH, str(own.certificate), str(own.key))
        self.client.check_hostname = False
        self.client.load_verify_locations(cafile=str(trust.certificate))
        self.checked: list[tuple[Address, bool]] = []

    def server_context(self) -> ssl.SSLContext:
        return self.server

    def client_context(self, destination: Address) -> tuple[ssl.SSLContext, str | None]:
        return self.client, self.domain

    def check(self, remote: Address, certificate: PeerCertificate, *, outgoing: bool) -> str | None:
        self.checked.append((remote, outgoing))
        return identity_problem(certificate, fingerprint=self.fingerprint, domain=self.domain)

    def describe(self, remote: Address) -> str:
        return f"test peer at {remote}"


OPTIONS = (
    "OPTIONS sip:beta.example SIP/2.0\r\n"
    "Via: SIP/2.0/TLS {host}:{port};branch=z9hG4bK-tls-1\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:alpha.example>;tag=a1\r\n"
    "To: <sip:beta.example>\r\n"
    "Call-ID: tls-test-1\r\n"
    "CSeq: 1 OPTIONS\r\n"
    "Content-Length: 0\r\n\r\n"
)


def _options(port: int) -> Request:
    message = parse_message(OPTIONS.format(host=HOST, port=port).encode())
    assert isinstance(message, Request)
    return message


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Cert]:
    if OPENSSL is None:
        pytest.skip("the openssl command line is missing (Debian package openssl)")
    ca = make_cert(tmp_path, "interconnect-ca", "DNS:ca.invalid", is_ca=True)
    return {
        "ca": ca,
        "alpha": make_cert(tmp_path, "alpha", "DNS:alpha.example", ca=ca),
        "beta": make_cert(tmp_path, "beta", "DNS:beta.example", ca=ca),
        "self": make_cert(tmp_path, "self", "DNS:beta.example"),
    }


class Endpoint:
    """A TLS endpoint that answers every request 200 and keeps what it received."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[Message, Address]] = asyncio.Queue()
        self.transport: TlsTransport | None = None

    def on_message(self, message: Message, source: Address) -> None:
        self.received.put_nowait((message, source))
        if isinstance(message, Request) and self.transport is not None:
            answer = make_response(message, 200, "OK")
            asyncio.get_running_loop().create_task(self.transport.send(answer, source))


async def _open(endpoint: Endpoint, policy: Pinned) -> TlsTransport:
    endpoint.transport = await TlsTransport.open(HOST, 0, endpoint.on_message, tls=policy)
    return endpoint.transport


def test_mutual_tls_request_and_response_rfc3261_26_2_1(certs: dict[str, Cert]) -> None:
    """Both sides present certificates; the request and its response cross one TLS connection
    (RFC 3261 section 18.2.2: the response returns on the request's connection)."""
    async def scenario() -> None:
        a, b = Endpoint(), Endpoint()
        alpha_policy = Pinned(certs["alpha"], certs["ca"], fingerprint=certs["beta"].fingerprint,
                              domain="beta.example")
        beta_policy = Pinned(certs["beta"], certs["ca"], fingerprint=None, domain="alpha.example")
        alpha, beta = await _open(a, alpha_policy), await _open(b, beta_policy)
        try:
            assert alpha.local.transport == "TLS"
            await alpha.send(_options(alpha.local.port), beta.local)
            request, source = await asyncio.wait_for(b.received.get(), 5)
            assert isinstance(request, Request) and request.method == "OPTIONS"
            assert source.transport == "TLS" and source.host == HOST
            response, _ = await asyncio.wait_for(a.received.get(), 5)
            assert not isinstance(response, Request) and response.status_code == 200
            assert alpha.connection_count == 1 and beta.connection_count == 1
            assert alpha_policy.checked[0][1] is True  # alpha checked beta as a client
            assert beta_policy.checked[0][1] is False  # beta checked alpha as a server
        finally:
            await alpha.close()
            await beta.close()

    run(scenario())


def test_wrong_fingerprint_refused_and_logged_rfc8122_5(
        certs: dict[str, Cert], caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        a, b = Endpoint(), Endpoint()
        wrong = "SHA-256 " + ":".join(["AB"] * 32)
        alpha = await _open(a, Pinned(certs["alpha"], certs["ca"], fingerprint=wrong))
        beta = await _open(b, Pinned(certs["beta"], certs["ca"], fingerprint=None))
        try:
            with pytest.raises(TlsRefused, match="does not match the pinned"):
                await alpha.send(_options(alpha.local.port), beta.local)
            assert b.received.empty() and alpha.connection_count == 0
        finally:
            await alpha.close()
            await beta.close()

    with caplog.at_level(logging.WARNING, logger="ims.sip.transport"):
        run(scenario())
    assert any("TLS with test peer at" in r.getMessage() and "does not match" in r.getMessage()
               for r in caplog.records)


def test_untrusted_server_certificate_fails_the_handshake(
        certs: dict[str, Cert], caplog: pytest.LogCaptureFixture) -> None:
    """A server certificate that does not chain to the expected CA: a handshake failure, a
    TlsRefused with OpenSSL's verify message, never a traceback."""
    async def scenario() -> None:
        a, b = Endpoint(), Endpoint()
        alpha = await _open(a, Pinned(certs["alpha"], certs["ca"], fingerprint=None,
                                      domain="beta.example"))
        beta = await _open(b, Pinned(certs["self"], certs["ca"], fingerprint=None))
        try:
            with pytest.raises(TlsRefused, match="TLS handshake failed: certificate verify"):
                await alpha.send(_options(alpha.local.port), beta.local)
        finally:
            await alpha.close()
            await beta.close()

    with caplog.at_level(logging.WARNING, logger="ims.sip.transport"):
        run(scenario())
    assert any("handshake failed" in r.getMessage() for r in caplog.records)


def test_server_requires_a_client_certificate(
        certs: dict[str, Cert], caplog: pytest.LogCaptureFixture) -> None:
    """Mutual TLS: a client that shows no certificate is cut off at the handshake and the
    listener logs who and why."""
    async def scenario() -> None:
        b = Endpoint()
        beta = await _open(b, Pinned(certs["beta"], certs["ca"], fingerprint=None))
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.load_verify_locations(cafile=str(certs["ca"].certificate))
        try:
            reader, writer = await asyncio.open_connection(
                HOST, beta.local.port, ssl=client, server_hostname="beta.example")
            # TLS 1.3: the server's refusal arrives after the client's handshake completes.
            writer.write(OPTIONS.format(host=HOST, port=5061).encode())
            with pytest.raises((ssl.SSLError, ConnectionError)):
                data = await asyncio.wait_for(reader.read(100), 5)
                if not data:
                    raise ConnectionResetError("closed")
            writer.close()
            assert b.received.empty() and beta.connection_count == 0
        finally:
            await beta.close()

    with caplog.at_level(logging.WARNING, logger="ims.sip.transport"):
        run(scenario())
    assert any("TLS handshake failed" in r.getMessage() and "not a peer" not in r.getMessage()
               for r in caplog.records)


def test_identity_rfc5922_7_1_subject_alt_name_and_7_2_no_wildcards() -> None:
    cert = PeerCertificate(b"der", True, (), ("beta.example",))
    assert identity_problem(cert, fingerprint=None, domain="BETA.example.") is None
    wildcard = PeerCertificate(b"der", True, (), ("*.example",))
    assert "not beta.example" in str(identity_problem(wildcard, fingerprint=None,
                                                      domain="beta.example"))
    # 7.1: a URI sip: entry, when present, is the identity; DNS entries are then not used.
    uri_first = PeerCertificate(b"der", True, ("gamma.example",), ("beta.example",))
    assert identity_problem(uri_first, fingerprint=None, domain="beta.example") is not None
    unverified = PeerCertificate(b"der", False)
    assert "does not chain" in str(identity_problem(unverified, fingerprint=None,
                                                    domain="beta.example"))
    assert identity_problem(PeerCertificate(None), fingerprint=None, domain="x") == \
        "presented no certificate"
    assert identity_problem(cert, fingerprint=None, domain=None) is not None


def test_fingerprint_is_rfc8122_5_form(certs: dict[str, Cert]) -> None:
    fingerprint = certs["alpha"].fingerprint
    assert fingerprint.startswith("SHA-256 ") and len(fingerprint) == 8 + 32 * 3 - 1
    assert identity_problem(PeerCertificate(certs["alpha"].der), fingerprint=fingerprint,
                            domain=None) is None
    # Lower-case hex in the configuration compares equal (RFC 8122: hex is case-insensitive).
    assert identity_problem(PeerCertificate(certs["alpha"].der),
                            fingerprint=fingerprint.lower().replace("sha-256", "SHA-256"),
                            domain=None) is None


@needs_openssl
def test_openssl_s_client_sends_options_over_mutual_tls(certs: dict[str, Cert]) -> None:
    """A real TLS client: `openssl s_client` verifies our certificate against the CA and
    presents its own; the OPTIONS it writes is answered 200 on the same connection."""
    async def scenario() -> None:
        b = Endpoint()
        beta = await _open(b, Pinned(certs["beta"], certs["ca"], fingerprint=None,
                                     domain="alpha.example"))
        assert OPENSSL is not None
        process = await asyncio.create_subprocess_exec(
            OPENSSL, "s_client", "-connect", f"{HOST}:{beta.local.port}", "-quiet",
            "-verify_return_error", "-CAfile", str(certs["ca"].certificate),
            "-verify_hostname", "beta.example", "-servername", "beta.example",
            "-cert", str(certs["alpha"].certificate), "-key", str(certs["alpha"].key),
            "-ign_eof",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(OPTIONS.format(host=HOST, port=5061).encode())
            await process.stdin.drain()
            status = await asyncio.wait_for(process.stdout.readline(), 10)
            assert status.startswith(b"SIP/2.0 200"), status
            request, source = await asyncio.wait_for(b.received.get(), 5)
            assert isinstance(request, Request) and source.transport == "TLS"
            # add_received on TLS as on TCP: sent-by port 5061 is not the source port.
            assert request.top_via.transport == "TLS"
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
            await beta.close()

    run(scenario())


@needs_openssl
def test_openssl_s_client_without_certificate_is_refused(certs: dict[str, Cert]) -> None:
    async def scenario() -> None:
        b = Endpoint()
        beta = await _open(b, Pinned(certs["beta"], certs["ca"], fingerprint=None))
        assert OPENSSL is not None
        process = await asyncio.create_subprocess_exec(
            OPENSSL, "s_client", "-connect", f"{HOST}:{beta.local.port}", "-quiet",
            "-CAfile", str(certs["ca"].certificate),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            out, _ = await asyncio.wait_for(
                process.communicate(OPTIONS.format(host=HOST, port=5061).encode()), 10)
            assert b"SIP/2.0" not in out
            assert b.received.empty()
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
            await beta.close()

    run(scenario())


def test_tls_1_1_client_refused_tls_1_2_is_the_floor(
        certs: dict[str, Cert], caplog: pytest.LogCaptureFixture) -> None:
    """RFC 8996: TLS 1.0 and 1.1 are not negotiated; the listener logs the failed handshake."""
    async def scenario() -> None:
        b = Endpoint()
        beta = await _open(b, Pinned(certs["beta"], certs["ca"], fingerprint=None))
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        old.set_ciphers("DEFAULT@SECLEVEL=0")  # let the client offer what it should not
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # deprecated: the point here
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.load_cert_chain(str(certs["alpha"].certificate), str(certs["alpha"].key))
        try:
            with pytest.raises((ssl.SSLError, ConnectionResetError)):
                await asyncio.open_connection(HOST, beta.local.port, ssl=old)
            await asyncio.sleep(0.05)
            assert beta.connection_count == 0
        finally:
            await beta.close()

    with caplog.at_level(logging.WARNING, logger="ims.sip.transport"):
        run(scenario())
    assert any("TLS handshake failed: unsupported protocol" in r.getMessage()
               for r in caplog.records)
