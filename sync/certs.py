"""The cluster's certificates, and how two regions prove who they are to each other.

What this module owns:

- a cluster CA (``init_ca``): an ECDSA P-256 key and a self-signed certificate
  that may sign region certificates and nothing deeper (``path_length=0``);
- region certificates (``issue``): subject CN = the region name, a
  SubjectAlternativeName ``REGION.crdtdb`` (plus loopback names, or whatever
  hosts the operator gives), usable for both TLS server and client auth;
- what ``crdtdb certs`` (in :mod:`crdtdb.cli`) reports about the files it
  wrote (``summary``).

How two regions prove who they are to each other (the peer proof,
``sign_challenge`` / ``verify_peer``), and the check a daemon makes of its own
files before it serves (``check_own_files``), are in :mod:`.cert_verify`; this
module re-exports them, so ``crdtdb.sync.certs`` still offers the whole API.

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
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crdtdb.errors import StoreError, UsageError
from crdtdb.ids import RegionId, validate_region

from .cert_verify import (
    NONCE_BYTES,
    REGION_SUFFIX,
    PeerAuthError,
    TlsFilesError,
    _is_ca,
    _utc,
    check_own_files,
    new_nonce,
    region_of,
    sign_challenge,
    verify_peer,
)

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
DEFAULT_HOSTS = ("127.0.0.1", "::1", "localhost")

_BACKDATE = timedelta(hours=1)
_KEY_MODE, _CERT_MODE = 0o600, 0o644
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)


class CertStoreError(StoreError):
    """The certificate directory cannot be used as asked (no CA, unreadable CA, ...)."""

    code = "cert_store"


class CertificateExistsError(CertStoreError):
    """A key or certificate is already there; nothing was overwritten."""

    code = "cert_exists"


# -- time, names and files ---------------------------------------------------------------------


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
