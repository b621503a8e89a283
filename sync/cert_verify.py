"""Checking certificates: how two regions prove who they are, and a daemon's own files.

What this module owns (:mod:`.certs` makes the certificates, and re-exports
everything here):

- the peer proof (``sign_challenge`` / ``verify_peer``) and ``region_of``;
- the check a daemon makes of its own files before it serves
  (``check_own_files``: readable, CA, certificate, key and region agreeing),
  so that a misconfiguration is refused at start, with its cause, rather
  than seen by the peers as "bad signature" forever.

How peers authenticate (mutually), and why it is built this way:

1. The server is authenticated by TLS 1.3 inside QUIC (aioquic). The client
   verifies the server's certificate against the cluster CA (``cafile``) and
   the region-specific server name ``REGION.crdtdb``; a certificate for
   another region, or from another CA, fails the handshake.
2. aioquic's server does not verify client certificates (its client-auth path
   is test-only), so the client proves itself on the established connection:
   both sides send a fresh random nonce in their Hello messages, and the client
   then sends its region certificate and an ECDSA signature, made with its
   region key, over a domain-separated, length-prefixed transcript of
   ``(server region, client region, server nonce, client nonce)``. The server
   checks the certificate against the cluster CA, that the certificate's region
   is the one the client claims, and the signature (``verify_peer``).
3. The proof is bound to this connection: the server's nonce is fresh, so a
   proof recorded on another connection (a replay) fails; the server's region
   is in the transcript, and the client only signs after TLS has shown it is
   talking to that region, so a proof relayed from a connection to some other
   region fails too. (A TLS exporter, RFC 5705 / RFC 9266, would bind the proof
   to the TLS session itself; aioquic has no public API for one, and the nonce
   plus the TLS-authenticated server region give the same guarantee here.)
4. Until the proof is verified, the server neither answers reads nor accepts
   writes: a process without a CA-signed region key can neither read nor write.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from crdtdb.errors import CrdtdbError, RemoteDataError, UsageError
from crdtdb.ids import RegionId, validate_region

__all__ = [
    "NONCE_BYTES",
    "REGION_SUFFIX",
    "PeerAuthError",
    "TlsFilesError",
    "check_own_files",
    "new_nonce",
    "region_of",
    "sign_challenge",
    "verify_peer",
    "verify_region_certificate",
]

REGION_SUFFIX = ".crdtdb"
"""A region's certificate names it ``REGION.crdtdb``; clients use that as the TLS server name."""
NONCE_BYTES = 32
"""Length of the nonces ``new_nonce`` makes; ``verify_peer`` accepts 16 to 256 bytes."""

_TRANSCRIPT_LABEL = b"crdtdb-peer-auth-v1/client-proof"
_MIN_NONCE, _MAX_NONCE = 16, 256
_SIGNATURE = ec.ECDSA(hashes.SHA256())


class PeerAuthError(RemoteDataError):
    """A peer's certificate or proof was refused; the connection must not be trusted."""

    code = "peer_auth"


class TlsFilesError(UsageError):
    """A region's own CA, certificate or key does not fit its config (checked at start)."""

    code = "tls_files"


# -- time and CA certificates ------------------------------------------------------------------


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise UsageError("now must be a timezone-aware datetime, e.g. datetime.now(UTC)")
    return now.astimezone(UTC)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


# -- the peer proof ----------------------------------------------------------------------------


def new_nonce() -> bytes:
    """A fresh random nonce for a Hello message (one per connection, never reused)."""
    return secrets.token_bytes(NONCE_BYTES)


def _nonce_problem(name: str, nonce: object) -> str | None:
    if not isinstance(nonce, bytes):
        return f"{name} must be bytes, got {type(nonce).__name__}"
    if not _MIN_NONCE <= len(nonce) <= _MAX_NONCE:
        return f"{name} must be {_MIN_NONCE} to {_MAX_NONCE} bytes, got {len(nonce)}"
    return None


def _transcript(
    server_region: str, client_region: str, server_nonce: bytes, client_nonce: bytes
) -> bytes:
    # Every field length-prefixed, so no two different inputs give the same bytes.
    fields = (
        _TRANSCRIPT_LABEL,
        server_region.encode(),
        client_region.encode(),
        server_nonce,
        client_nonce,
    )
    return b"".join(len(field).to_bytes(4, "big") + field for field in fields)


def sign_challenge(
    key_pem: bytes,
    *,
    server_nonce: bytes,
    client_nonce: bytes,
    client_region: str,
    server_region: str,
) -> bytes:
    """Prove, with the client region's key, that it is on this connection to ``server_region``."""
    for label, nonce in (("server_nonce", server_nonce), ("client_nonce", client_nonce)):
        if problem := _nonce_problem(label, nonce):
            raise UsageError(problem)
    client, server = validate_region(client_region), validate_region(server_region)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise UsageError("the region key is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError("the region key is not an ECDSA key: issue it with `crdtdb certs issue`")
    return key.sign(_transcript(server, client, server_nonce, client_nonce), _SIGNATURE)


def _load_cas(ca_pem: bytes) -> list[x509.Certificate]:
    try:
        cas = x509.load_pem_x509_certificates(ca_pem)
    except (ValueError, TypeError):
        raise PeerAuthError("the cluster CA is not a PEM certificate: check ca.pem") from None
    if not all(_is_ca(ca) for ca in cas):
        raise PeerAuthError("the cluster CA file holds a certificate that is not a CA")
    return cas


def _load_peer_cert(cert_pem: bytes) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        _ = cert.extensions  # parsed lazily: surface malformed extensions here
    except (ValueError, TypeError):
        raise PeerAuthError("the peer's certificate is not a well-formed PEM certificate") from None
    return cert


def _check_issuer(cert: x509.Certificate, cas: list[x509.Certificate]) -> x509.Certificate:
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca
    raise PeerAuthError(
        f"the peer's certificate ({cert.subject.rfc4514_string()}, issued by"
        f" {cert.issuer.rfc4514_string()}) is not signed by this cluster's CA"
    )


def _check_dates(cert: x509.Certificate, what: str, now: datetime, renew: str) -> None:
    if now < cert.not_valid_before_utc:
        raise PeerAuthError(
            f"{what} is not yet valid (from {cert.not_valid_before_utc.isoformat()}, now"
            f" {now.isoformat()}): check the clocks, or reissue it"
        )
    if now > cert.not_valid_after_utc:
        raise PeerAuthError(
            f"{what} expired at {cert.not_valid_after_utc.isoformat()} (now {now.isoformat()}):"
            f" {renew}"
        )


def _common_name_of(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if len(names) == 1 else None
    if not isinstance(value, str):
        raise PeerAuthError("the certificate does not have exactly one text common name (CN)")
    return value


def _region_dns_names(cert: x509.Certificate) -> list[str]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PeerAuthError("the certificate has no SubjectAlternativeName") from None
    names = sans.get_values_for_type(x509.DNSName)
    return [name for name in names if name.lower().endswith(REGION_SUFFIX)]


def _region_of(cert: x509.Certificate) -> RegionId:
    cn = _common_name_of(cert)
    try:
        region = validate_region(cn)
    except CrdtdbError:
        raise PeerAuthError(f"the certificate's CN {cn!r} is not a region name") from None
    dns_names = _region_dns_names(cert)
    if dns_names != [region + REGION_SUFFIX]:
        raise PeerAuthError(
            f"the certificate's CN is {region!r} but its region names are {dns_names!r},"
            f" not exactly [{region + REGION_SUFFIX!r}]"
        )
    return region


def region_of(cert_pem: bytes) -> str:
    """The region a certificate is for: its CN, which must agree with its ``REGION.crdtdb`` name.

    This only reads the certificate; it does not check who signed it (``verify_peer`` does).
    """
    return _region_of(_load_peer_cert(cert_pem))


def _check_policy(cert: x509.Certificate, cas: list[x509.Certificate], now: datetime) -> None:
    # The checks above say precisely what is wrong; this one is the full RFC 5280 path
    # validation for a TLS client certificate (key usage, EKU clientAuth, critical extensions...)
    verifier = PolicyBuilder().store(Store(cas)).time(now).max_chain_depth(0)
    try:
        verifier.build_client_verifier().verify(cert, [])
    except VerificationError as exc:
        raise PeerAuthError(f"the peer's certificate fails path validation: {exc}") from None


def _check_signature(cert: x509.Certificate, signature: bytes, transcript: bytes) -> None:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(signature, bytes):
        raise PeerAuthError("the peer's proof is not an ECDSA signature by an ECDSA key")
    try:
        key.verify(signature, transcript, _SIGNATURE)
    except InvalidSignature:
        raise PeerAuthError(
            "bad signature: the proof was not made with this certificate's key over this"
            " connection's nonces and regions (replayed, relayed or forged)"
        ) from None


def _checked_inputs(
    claimed_region: str, server_region: str, server_nonce: bytes, client_nonce: bytes
) -> tuple[RegionId, RegionId]:
    for label, nonce in (("server_nonce", server_nonce), ("client_nonce", client_nonce)):
        if problem := _nonce_problem(label, nonce):
            raise PeerAuthError(problem)
    try:
        return validate_region(claimed_region), validate_region(server_region)
    except CrdtdbError as exc:
        raise PeerAuthError(str(exc)) from None


def verify_peer(
    ca_pem: bytes,
    cert_pem: bytes,
    signature: bytes,
    *,
    claimed_region: str,
    server_nonce: bytes,
    client_nonce: bytes,
    server_region: str,
    now: datetime | None = None,
) -> None:
    """Accept the peer only if every check passes; otherwise raise ``PeerAuthError``.

    The certificate must be signed by the cluster CA (``ca_pem``, one or more CA
    certificates), be valid at ``now``, not be a CA itself, be for ``claimed_region``;
    and ``signature`` must be its key's ``sign_challenge`` proof for this connection.
    """
    when = _utc(now)
    claimed, server = _checked_inputs(claimed_region, server_region, server_nonce, client_nonce)
    cas, cert = _load_cas(ca_pem), _load_peer_cert(cert_pem)
    ca = _check_issuer(cert, cas)
    if _is_ca(cert):
        raise PeerAuthError("the peer presented a CA certificate, not a region certificate")
    renew_ca = "create a new CA with `crdtdb certs init --force` and reissue every region"
    _check_dates(ca, "the cluster CA certificate", when, renew_ca)
    _check_dates(cert, "the peer's certificate", when, "issue it anew with `crdtdb certs issue`")
    region = _region_of(cert)
    if region != claimed:
        raise PeerAuthError(f"certificate is for region {region!r} but the peer claims {claimed!r}")
    _check_policy(cert, cas, when)
    _check_signature(cert, signature, _transcript(server, claimed, server_nonce, client_nonce))


def verify_region_certificate(
    ca_pem: bytes, cert_pem: bytes
) -> tuple[RegionId, ec.EllipticCurvePublicKey]:
    """The region and ECDSA key of a region certificate the cluster CA signed.

    For the keys that seal records (:mod:`.signing`), relayed from any peer:
    signed by the CA, not a CA itself, for exactly one region, an ECDSA key.
    Its dates are not checked: a record sealed while the certificate was
    valid stays verifiable after it expires or is replaced (a replaced key
    is retired through membership, by fingerprint, not by date).
    """
    cas, cert = _load_cas(ca_pem), _load_peer_cert(cert_pem)
    _check_issuer(cert, cas)
    if _is_ca(cert):
        raise PeerAuthError("a CA certificate was presented as a region's record key")
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise PeerAuthError("a region certificate's key must be an ECDSA key")
    return _region_of(cert), key


# -- a daemon's own files, checked before it serves --------------------------------------------


def _read_pem(path: Path, key: str, region: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise TlsFilesError(
            f"[tls] {key}: no file at {path} (the cluster CA and each region's certificate"
            f" and key are made by `crdtdb certs init DIR` and `crdtdb certs issue DIR {region}`)"
        ) from None
    except OSError as exc:
        raise TlsFilesError(f"[tls] {key}: cannot read {path}: {exc.strerror or exc}") from None


def _own_cert(pem: bytes, path: Path) -> x509.Certificate:
    try:
        return _load_peer_cert(pem)
    except PeerAuthError:
        raise TlsFilesError(f"[tls] cert: {path} is not a PEM certificate") from None


def _own_key(pem: bytes, path: Path, cert: x509.Certificate, cert_path: Path) -> None:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise TlsFilesError(f"[tls] key: {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsFilesError(
            f"[tls] key: {path} is not an ECDSA key: issue one with `crdtdb certs issue`"
        )
    if key.public_key() != cert.public_key():
        raise TlsFilesError(
            f"[tls] key: {path} is not the key of the certificate {cert_path}: point cert and"
            " key at the two files one `crdtdb certs issue` made"
        )


def _own_identity(cert: x509.Certificate, cert_path: Path, region: str) -> None:
    try:
        found = _region_of(cert)
    except PeerAuthError as exc:
        raise TlsFilesError(f"[tls] cert: {cert_path}: {exc}") from None
    if found != region:
        raise TlsFilesError(
            f"[tls] cert: {cert_path} is for region {found!r}, but this config's region is"
            f" {region!r}: point cert and key at {region}'s files (`crdtdb certs issue DIR"
            f" {region}` makes them)"
        )


def check_own_files(
    *, region: str, ca: Path, cert: Path, key: Path, now: datetime | None = None
) -> dict[str, str]:
    """Check a region's own TLS files before its daemon serves; raise ``TlsFilesError``.

    Each file must be readable; ``ca`` must hold CA certificates; ``cert`` must be
    a region certificate signed by one of them, valid now, for ``region``, and
    ``key`` its key. Returns what was found (region, issuer, expiry), for humans.
    """
    when = _utc(now)
    ca_pem, cert_pem, key_pem = (
        _read_pem(path, name, region) for name, path in (("ca", ca), ("cert", cert), ("key", key))
    )
    try:
        cas = _load_cas(ca_pem)
    except PeerAuthError as exc:
        raise TlsFilesError(f"[tls] ca: {ca}: {exc}") from None
    certificate = _own_cert(cert_pem, cert)
    _own_key(key_pem, key, certificate, cert)
    if _is_ca(certificate):
        raise TlsFilesError(f"[tls] cert: {cert} is a CA certificate, not a region's")
    try:
        issuer = _check_issuer(certificate, cas)
    except PeerAuthError:
        raise TlsFilesError(
            f"[tls] cert: {cert} (issued by {certificate.issuer.rfc4514_string()}) is not"
            f" signed by the CA in {ca}: the peers would refuse it; issue it from the"
            " cluster's CA, or point ca at the CA the other regions use"
        ) from None
    try:
        _check_dates(issuer, f"the cluster CA {ca}", when, "create a new CA and reissue")
        _check_dates(certificate, f"the certificate {cert}", when, "issue it anew")
    except PeerAuthError as exc:
        raise TlsFilesError(f"[tls] {exc}") from None
    _own_identity(certificate, cert, region)
    try:
        _check_policy(certificate, cas, when)
    except PeerAuthError as exc:
        raise TlsFilesError(f"[tls] cert: {cert}: {exc}") from None
    return {
        "region": region,
        "issuer": issuer.subject.rfc4514_string(),
        "not_valid_after": certificate.not_valid_after_utc.isoformat(),
    }
