"""The cluster's certificates, and how two regions prove who they are to each other.

What this module owns:

- a cluster CA (``init_ca``): an ECDSA P-256 key and a self-signed certificate
  that may sign region certificates and nothing deeper (``path_length=0``);
- region certificates (``issue``): subject CN = the region name, a
  SubjectAlternativeName ``REGION.crdtdb`` (plus loopback names, or whatever
  hosts the operator gives), usable for both TLS server and client auth;
- the peer proof (``sign_challenge`` / ``verify_peer``);
- the check a daemon makes of its own files before it serves
  (``check_own_files``: readable, CA, certificate, key and region agreeing),
  so that a misconfiguration is refused at start, with its cause, rather
  than seen by the peers as "bad signature" forever;
- what ``crdtdb certs`` (in :mod:`crdtdb.cli`) reports about the files it
  wrote (``summary``).

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

Keys are written atomically with mode 0600 and never overwritten by accident
(``force=True`` replaces them; replacing the CA invalidates every region
certificate it signed). Certificates are backdated by an hour so that a peer
whose clock is a little behind accepts a freshly issued one.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from crdtdb.errors import CrdtdbError, RemoteDataError, StoreError, UsageError
from crdtdb.ids import RegionId, validate_region

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "DEFAULT_HOSTS",
    "NONCE_BYTES",
    "REGION_SUFFIX",
    "CertStoreError",
    "CertificateExistsError",
    "PeerAuthError",
    "TlsFilesError",
    "check_own_files",
    "init_ca",
    "issue",
    "new_nonce",
    "region_of",
    "sign_challenge",
    "summary",
    "verify_peer",
]

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
REGION_SUFFIX = ".crdtdb"
"""A region's certificate names it ``REGION.crdtdb``; clients use that as the TLS server name."""
DEFAULT_HOSTS = ("127.0.0.1", "::1", "localhost")
NONCE_BYTES = 32
"""Length of the nonces ``new_nonce`` makes; ``verify_peer`` accepts 16 to 256 bytes."""

_TRANSCRIPT_LABEL = b"crdtdb-peer-auth-v1/client-proof"
_MIN_NONCE, _MAX_NONCE = 16, 256
_BACKDATE = timedelta(hours=1)
_KEY_MODE, _CERT_MODE = 0o600, 0o644
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)
_SIGNATURE = ec.ECDSA(hashes.SHA256())


class PeerAuthError(RemoteDataError):
    """A peer's certificate or proof was refused; the connection must not be trusted."""

    code = "peer_auth"


class CertStoreError(StoreError):
    """The certificate directory cannot be used as asked (no CA, unreadable CA, ...)."""

    code = "cert_store"


class CertificateExistsError(CertStoreError):
    """A key or certificate is already there; nothing was overwritten."""

    code = "cert_exists"


class TlsFilesError(UsageError):
    """A region's own CA, certificate or key does not fit its config (checked at start)."""

    code = "tls_files"


# -- time, names and files ---------------------------------------------------------------------


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise UsageError("now must be a timezone-aware datetime, e.g. datetime.now(UTC)")
    return now.astimezone(UTC)


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise UsageError(f"days must be a whole number of days >= 1, got {days!r}")


def _region_name(region: object) -> RegionId:
    name = validate_region(region)
    if name in (Path(CA_CERT_FILE).stem, Path(CA_KEY_FILE).stem):
        raise UsageError(f"region name {name!r} is reserved: its files would replace the CA's")
    return name


def _host_name(host: str) -> x509.GeneralName:
    if not isinstance(host, str):  # ip_address() would read 4 or 16 bytes as an address
        raise UsageError(f"hosts must be names or IP addresses as text, got {host!r}")
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.lower()
    if not _HOSTNAME.fullmatch(name) or name.endswith(REGION_SUFFIX):
        raise UsageError(
            f"invalid host {host!r}: give an IP address or a DNS name (letters, digits, '-',"
            f" dots; no wildcards, nothing ending in {REGION_SUFFIX!r}, which names regions)"
        )
    return x509.DNSName(name)


def _subject_alt_names(region: str, hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(region + REGION_SUFFIX)]
    for host in hosts:
        name = _host_name(host)
        if name not in names:
            names.append(name)
    return names


def _refuse_existing(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            raise CertificateExistsError(
                f"{path} already exists: nothing was written (pass --force / force=True to"
                " replace it)"
            )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes, *, mode: int, force: bool) -> None:
    """Write ``path`` atomically with ``mode``; without ``force``, never replace a file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)  # exactly this mode, whatever the umask
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails atomically if a concurrent writer got there first
            except FileExistsError:
                _refuse_existing(path)
                raise
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# -- building certificates ---------------------------------------------------------------------


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _common_name(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePublicKey,
    start: datetime,
    end: datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _BACKDATE)
        .not_valid_after(end)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
    )


def _ca_certificate(
    key: ec.EllipticCurvePrivateKey, name: str, now: datetime, days: int
) -> x509.Certificate:
    subject = _common_name(name)
    builder = (
        _builder(subject, subject, key.public_key(), now, now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
    )
    return builder.sign(key, hashes.SHA256())


def _region_certificate(
    region: str,
    key: ec.EllipticCurvePublicKey,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    names: list[x509.GeneralName],
    validity: tuple[datetime, datetime],
) -> x509.Certificate:
    ca_cert, ca_key = ca
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        _builder(_common_name(region), ca_cert.subject, key, *validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    return builder.sign(ca_key, hashes.SHA256())


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if not cert_path.exists() or not key_path.exists():
        raise CertStoreError(
            f"no cluster CA in {directory} (need {CA_CERT_FILE} and {CA_KEY_FILE}): create one"
            f" with `crdtdb certs init {directory}`"
        )
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertStoreError(f"cannot load the CA in {directory}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise CertStoreError(
            f"{key_path} is not the key of {cert_path}: recreate the CA with"
            f" `crdtdb certs init {directory} --force` (then reissue every region)"
        )
    if not _is_ca(cert):
        raise CertStoreError(f"{cert_path} is not a CA certificate")
    return cert, key


def _validity(ca: x509.Certificate, now: datetime, days: int) -> tuple[datetime, datetime]:
    end = min(now + timedelta(days=days), ca.not_valid_after_utc)
    if end <= now:
        raise CertStoreError(
            f"the cluster CA expired at {ca.not_valid_after_utc.isoformat()}: create a new one"
            " with `crdtdb certs init DIR --force` and reissue every region"
        )
    return now, end


# -- the public API: CA and region certificates ------------------------------------------------


def init_ca(
    directory: Path,
    *,
    name: str = "crdtdb cluster CA",
    days: int = 3650,
    now: datetime | None = None,
    force: bool = False,
) -> Path:
    """Create the cluster CA: ``DIR/ca.key`` (mode 0600) and ``DIR/ca.pem``; return the cert path.

    Refuses (``CertificateExistsError``) if either file exists, unless ``force``.
    """
    when = _utc(now)
    _check_days(days)
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"CA name must be non-empty text, got {name!r}")
    directory = Path(directory)
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if not force:
        _refuse_existing(key_path, cert_path)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _ca_certificate(key, name, when, days)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The key first: a ca.pem on disk then always has its key next to it.
    _write_file(key_path, _key_pem(key), mode=_KEY_MODE, force=force)
    _write_file(cert_path, _cert_pem(cert), mode=_CERT_MODE, force=force)
    return cert_path


def issue(
    directory: Path,
    region: str,
    *,
    days: int = 825,
    now: datetime | None = None,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    force: bool = False,
) -> tuple[Path, Path]:
    """Issue ``DIR/REGION.pem`` and ``DIR/REGION.key`` (0600), signed by the CA in ``DIR``.

    Returns ``(cert_path, key_path)``. The certificate never outlives the CA.
    """
    when = _utc(now)
    _check_days(days)
    name = _region_name(region)
    if isinstance(hosts, str):
        raise UsageError("hosts must be a sequence of names, e.g. ('127.0.0.1', 'localhost')")
    alt_names = _subject_alt_names(name, hosts)
    directory = Path(directory)
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    if not force:
        _refuse_existing(key_path, cert_path)
    ca = _load_ca(directory)
    validity = _validity(ca[0], when, days)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _region_certificate(name, key.public_key(), ca, alt_names, validity)
    _write_file(key_path, _key_pem(key), mode=_KEY_MODE, force=force)
    _write_file(cert_path, _cert_pem(cert), mode=_CERT_MODE, force=force)
    return cert_path, key_path


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


def summary(cert_path: Path) -> dict[str, Any]:
    """A certificate's subject, SubjectAlternativeNames and expiry, as JSON-ready values."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    return {
        "subject": cert.subject.rfc4514_string(),
        "names": [str(name.value) for name in sans],
        "not_valid_after": cert.not_valid_after_utc.isoformat(),
    }


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
