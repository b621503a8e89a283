"""Cluster CA, region certificates, the peer proof, `crdtdb certs`, and a real QUIC handshake."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import stat
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtdb.cli import main
from crdtdb.errors import CrdtdbError, InvalidRegionError, RemoteDataError, UsageError
from crdtdb.sync.certs import (
    DEFAULT_HOSTS,
    CertificateExistsError,
    CertStoreError,
    PeerAuthError,
    init_ca,
    issue,
    new_nonce,
    region_of,
    sign_challenge,
    verify_peer,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
SERVER_NONCE = b"s" * 32
CLIENT_NONCE = b"c" * 32


@dataclass(frozen=True)
class Cluster:
    dir: Path
    ca_pem: bytes

    def cert(self, region: str) -> bytes:
        return (self.dir / f"{region}.pem").read_bytes()

    def key(self, region: str) -> bytes:
        return (self.dir / f"{region}.key").read_bytes()


def make_cluster(directory: Path, *regions: str, now: datetime = NOW) -> Cluster:
    ca = init_ca(directory, now=now)
    for region in regions:
        issue(directory, region, now=now)
    return Cluster(directory, ca.read_bytes())


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    return make_cluster(tmp_path / "certs", "eu", "us")


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    """For property tests, which must not mutate it."""
    return make_cluster(tmp_path_factory.mktemp("certs"), "eu", "us")


def proof(key_pem: bytes, client: str, server: str = "us", nonce: bytes = SERVER_NONCE) -> bytes:
    return sign_challenge(
        key_pem,
        server_nonce=nonce,
        client_nonce=CLIENT_NONCE,
        client_region=client,
        server_region=server,
    )


def verify(
    cluster: Cluster,
    cert_pem: bytes,
    signature: bytes,
    claimed: str,
    *,
    server: str = "us",
    nonce: bytes = SERVER_NONCE,
    now: datetime = NOW,
    ca_pem: bytes | None = None,
) -> None:
    verify_peer(
        cluster.ca_pem if ca_pem is None else ca_pem,
        cert_pem,
        signature,
        claimed_region=claimed,
        server_nonce=nonce,
        client_nonce=CLIENT_NONCE,
        server_region=server,
        now=now,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# -- files --------------------------------------------------------------------------------------


def test_init_ca_writes_a_p256_ca_with_a_private_key(tmp_path: Path) -> None:
    cert_path = init_ca(tmp_path / "certs", now=NOW)
    assert cert_path == tmp_path / "certs" / "ca.pem"
    assert mode(tmp_path / "certs" / "ca.key") == 0o600
    assert mode(tmp_path / "certs") == 0o700
    ca = load(cert_path)
    ca.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert ca.signature_hash_algorithm is not None
    assert ca.signature_hash_algorithm.name == "sha256"
    key = ca.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert ca.not_valid_after_utc - NOW == timedelta(days=3650)
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == ["ca.key", "ca.pem"]


def test_issue_writes_a_region_cert_that_chains_to_the_ca(cluster: Cluster) -> None:
    cert = load(cluster.dir / "eu.pem")
    assert mode(cluster.dir / "eu.key") == 0o600
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "eu"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["eu.crdtdb", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca = x509.load_pem_x509_certificate(cluster.ca_pem)
    cert.verify_directly_issued_by(ca)
    policy = PolicyBuilder().store(Store([ca])).time(NOW)
    policy.build_client_verifier().verify(cert, [])
    policy.build_server_verifier(x509.DNSName("eu.crdtdb")).verify(cert, [])
    assert region_of(cluster.cert("eu")) == "eu"
    assert not [p for p in cluster.dir.iterdir() if p.name.startswith(".")]  # no temp files


def test_issue_takes_hosts_and_never_outlives_the_ca(tmp_path: Path) -> None:
    init_ca(tmp_path, days=10, now=NOW)
    cert_path, key_path = issue(tmp_path, "us-east", now=NOW, hosts=["10.0.0.7", "DB.example"])
    assert key_path == tmp_path / "us-east.key"
    cert = load(cert_path)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(name.value) for name in sans] == ["us-east.crdtdb", "10.0.0.7", "db.example"]
    assert cert.not_valid_after_utc == load(tmp_path / "ca.pem").not_valid_after_utc


def test_existing_files_are_never_overwritten_without_force(cluster: Cluster) -> None:
    before = {p.name: p.read_bytes() for p in cluster.dir.iterdir()}
    with pytest.raises(CertificateExistsError, match=r"ca\.key already exists.*--force"):
        init_ca(cluster.dir, now=NOW)
    with pytest.raises(CertificateExistsError, match=r"eu\.key already exists"):
        issue(cluster.dir, "eu", now=NOW)
    assert {p.name: p.read_bytes() for p in cluster.dir.iterdir()} == before

    issue(cluster.dir, "eu", now=NOW, force=True)
    assert cluster.cert("eu") != before["eu.pem"]
    assert mode(cluster.dir / "eu.key") == 0o600
    init_ca(cluster.dir, now=NOW, force=True)
    assert (cluster.dir / "ca.pem").read_bytes() != before["ca.pem"]
    assert mode(cluster.dir / "ca.key") == 0o600


def test_issue_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(CertStoreError, match=r"no cluster CA.*crdtdb certs init"):
        issue(tmp_path, "eu", now=NOW)
    init_ca(tmp_path, now=NOW)
    with pytest.raises(InvalidRegionError):
        issue(tmp_path, "EU west", now=NOW)
    with pytest.raises(UsageError, match="reserved"):
        issue(tmp_path, "ca", now=NOW, force=True)
    with pytest.raises(UsageError, match="invalid host"):
        issue(tmp_path, "eu", now=NOW, hosts=["us.crdtdb"])  # would let eu pose as us
    with pytest.raises(UsageError, match="invalid host"):
        issue(tmp_path, "eu", now=NOW, hosts=["*.example"])
    with pytest.raises(UsageError, match="timezone-aware"):
        issue(tmp_path, "eu", now=datetime(2030, 1, 1))
    with pytest.raises(CertStoreError, match="expired"):
        issue(tmp_path, "eu", now=NOW + timedelta(days=4000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.key", "ca.pem"]


# -- the peer proof -----------------------------------------------------------------------------


def test_a_good_proof_is_accepted(cluster: Cluster) -> None:
    verify(cluster, cluster.cert("eu"), proof(cluster.key("eu"), "eu"), "eu")
    nonce = new_nonce()
    assert len(nonce) == 32 and nonce != new_nonce()


def refused(
    cluster: Cluster, match: str, cert: bytes, signature: bytes, claimed: str, **kw: Any
) -> None:
    with pytest.raises(PeerAuthError, match=match) as info:
        verify(cluster, cert, signature, claimed, **kw)
    assert info.value.code == "peer_auth"
    assert isinstance(info.value, CrdtdbError) and isinstance(info.value, RemoteDataError)


def test_a_cert_from_another_ca_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    other = make_cluster(tmp_path / "other", "eu")
    good = proof(other.key("eu"), "eu")
    refused(cluster, "not signed by this cluster's CA", other.cert("eu"), good, "eu")


def test_an_expired_or_future_cert_is_refused(cluster: Cluster) -> None:
    cert, good = cluster.cert("eu"), proof(cluster.key("eu"), "eu")
    later = NOW + timedelta(days=826)
    refused(cluster, "peer's certificate expired at 2032", cert, good, "eu", now=later)
    earlier = NOW - timedelta(days=1)
    refused(cluster, "not yet valid.*check the clocks", cert, good, "eu", now=earlier)


def test_a_cert_under_an_expired_ca_is_refused(cluster: Cluster) -> None:
    cert, good = cluster.cert("eu"), proof(cluster.key("eu"), "eu")
    later = NOW + timedelta(days=3651)
    refused(
        cluster, "cluster CA certificate expired.*certs init --force", cert, good, "eu", now=later
    )


def test_a_cert_without_client_auth_fails_path_validation(cluster: Cluster) -> None:
    ca_key = serialization.load_pem_private_key((cluster.dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eu")]))
        .issuer_name(x509.load_pem_x509_certificate(cluster.ca_pem).subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("eu.crdtdb")]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    refused(cluster, "fails path validation", cert_pem, proof(key_pem, "eu"), "eu")


def test_a_cert_for_another_region_is_refused(cluster: Cluster) -> None:
    us_proof = proof(cluster.key("us"), "eu")  # us's own key, but it claims to be eu
    message = "certificate is for region 'us' but the peer claims 'eu'"
    refused(cluster, f"^{message}$", cluster.cert("us"), us_proof, "eu")


def test_a_proof_from_another_connection_is_refused(cluster: Cluster) -> None:
    replayed = proof(cluster.key("eu"), "eu", nonce=b"x" * 32)
    refused(cluster, "bad signature", cluster.cert("eu"), replayed, "eu")
    relayed = proof(cluster.key("eu"), "eu", server="ap")  # made for a connection to ap
    refused(cluster, "bad signature", cluster.cert("eu"), relayed, "eu")


def test_a_proof_made_with_another_regions_key_is_refused(cluster: Cluster) -> None:
    forged = proof(cluster.key("us"), "eu")
    refused(cluster, "bad signature", cluster.cert("eu"), forged, "eu")
    refused(cluster, "bad signature", cluster.cert("eu"), b"\x30\x00", "eu")


def test_garbage_is_refused(cluster: Cluster) -> None:
    good = proof(cluster.key("eu"), "eu")
    refused(cluster, "not a well-formed PEM", b"garbage", good, "eu")
    refused(cluster, "not a well-formed PEM", cluster.cert("eu")[:200], good, "eu")
    refused(cluster, "cluster CA is not a PEM", cluster.cert("eu"), good, "eu", ca_pem=b"?")
    refused(cluster, "not a CA", cluster.cert("eu"), good, "eu", ca_pem=cluster.cert("us"))
    refused(
        cluster,
        "server_nonce must be 16 to 256 bytes",
        cluster.cert("eu"),
        good,
        "eu",
        nonce=b"short",
    )
    refused(cluster, "invalid region", cluster.cert("eu"), good, "EU")
    with pytest.raises(PeerAuthError, match="not a well-formed PEM"):
        region_of(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_the_ca_cert_itself_is_refused_as_a_peer(cluster: Cluster) -> None:
    ca_key = (cluster.dir / "ca.key").read_bytes()
    refused(cluster, "CA certificate, not a region", cluster.ca_pem, proof(ca_key, "eu"), "eu")


def test_sign_challenge_refuses_bad_keys_and_nonces(cluster: Cluster) -> None:
    with pytest.raises(UsageError, match="not an unencrypted PEM private key"):
        proof(b"nope", "eu")
    with pytest.raises(UsageError, match="client_nonce must be bytes"):
        sign_challenge(
            cluster.key("eu"),
            server_nonce=SERVER_NONCE,
            client_nonce="x" * 32,  # type: ignore[arg-type]
            client_region="eu",
            server_region="us",
        )


@dataclass(frozen=True)
class Hello:
    """What one connection's Hello messages carry into the transcript (client: eu)."""

    server_nonce: bytes
    client_nonce: bytes
    server_region: str = "us"


def accepted(cluster: Cluster, signature: bytes, hello: Hello) -> bool:
    try:
        verify_peer(
            cluster.ca_pem,
            cluster.cert("eu"),
            signature,
            claimed_region="eu",
            server_nonce=hello.server_nonce,
            client_nonce=hello.client_nonce,
            server_region=hello.server_region,
            now=NOW,
        )
    except PeerAuthError as exc:
        assert "bad signature" in str(exc)
        return False
    return True


@settings(max_examples=40, deadline=None)
@given(
    server_nonce=st.binary(min_size=16, max_size=64),
    client_nonce=st.binary(min_size=16, max_size=64),
    other=st.binary(min_size=16, max_size=64),
)
def test_a_proof_verifies_only_for_its_own_connection(
    shared_cluster: Cluster, server_nonce: bytes, client_nonce: bytes, other: bytes
) -> None:
    hello = Hello(server_nonce, client_nonce)
    signature = sign_challenge(
        shared_cluster.key("eu"),
        server_nonce=server_nonce,
        client_nonce=client_nonce,
        client_region="eu",
        server_region="us",
    )
    assert accepted(shared_cluster, signature, hello)
    others = [
        replace(hello, server_nonce=other),
        replace(hello, client_nonce=other),
        replace(hello, server_region="ap"),
    ]
    if len(client_nonce) > 16:  # moving a byte across the fields' boundary changes the transcript
        others.append(Hello(server_nonce + client_nonce[:1], client_nonce[1:]))
    for changed in others:
        if changed != hello:
            assert not accepted(shared_cluster, signature, changed)


# -- crdtdb certs -------------------------------------------------------------------------------


def certs_main(argv: list[str]) -> int:
    """``crdtdb certs ARGV``, run in this process by the one CLI."""
    return main(["certs", *argv])


def test_certs_main_init_and_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "certs"
    assert certs_main(["init", str(directory)]) == 0
    wrote = json.loads(capsys.readouterr().out)
    assert wrote["ca_cert"] == str(directory / "ca.pem")
    assert wrote["ca_key"] == str(directory / "ca.key")
    assert wrote["subject"] == "CN=crdtdb cluster CA"

    assert certs_main(["issue", str(directory), "eu", "--host", "10.1.2.3"]) == 0
    wrote = json.loads(capsys.readouterr().out)
    assert wrote["region"] == "eu" and wrote["key"] == str(directory / "eu.key")
    assert wrote["names"] == ["eu.crdtdb", "10.1.2.3"]
    assert mode(directory / "eu.key") == 0o600


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["init", "{dir}"], 1, "ca.key already exists"),
        (["issue", "{dir}", "eu"], 1, "eu.key already exists"),
        (["issue", "{dir}/nowhere", "us"], 1, "no cluster CA"),
        (["issue", "{dir}", "Not A Region"], 2, "invalid region name"),
        (["issue", "{dir}"], 2, "the following arguments are required: REGION"),
        (["frobnicate"], 2, "invalid choice"),
        (["init", "{dir}/ca.pem/sub"], 1, "Not a directory"),
    ],
)
def test_certs_main_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    make_cluster(tmp_path, "eu")
    assert certs_main([arg.format(dir=tmp_path) for arg in argv]) == code
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_certs_main_force_and_help(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_cluster(tmp_path, "eu")
    assert certs_main(["issue", str(tmp_path), "eu", "--force"]) == 0
    assert certs_main(["init", str(tmp_path), "--force"]) == 0
    capsys.readouterr()
    assert certs_main(["--help"]) == 0
    assert "issue" in capsys.readouterr().out


def test_certs_issue_help_names_the_default_hosts(capsys: pytest.CaptureFixture[str]) -> None:
    assert certs_main(["issue", "--help"]) == 0
    assert f"(default: {' '.join(DEFAULT_HOSTS)})" in " ".join(capsys.readouterr().out.split())


# -- a real QUIC handshake over UDP on loopback ---------------------------------------------------


async def quic_handshake(cluster: Cluster, region: str, *, cafile: Path, server_name: str) -> None:
    from aioquic.asyncio.client import connect
    from aioquic.asyncio.server import serve
    from aioquic.quic.configuration import QuicConfiguration

    server_config = QuicConfiguration(is_client=False, alpn_protocols=["crdtdb/1"])
    server_config.load_cert_chain(cluster.dir / f"{region}.pem", cluster.dir / f"{region}.key")
    client_config = QuicConfiguration(
        is_client=True, alpn_protocols=["crdtdb/1"], server_name=server_name
    )
    client_config.load_verify_locations(cafile=str(cafile))
    server = await serve("127.0.0.1", 0, configuration=server_config)
    try:
        # serve() has no public way to report the port it bound; the transport knows it.
        assert server._transport is not None
        port = server._transport.get_extra_info("sockname")[1]
        async with (
            asyncio.timeout(5),
            connect("127.0.0.1", port, configuration=client_config) as client,
        ):
            await client.ping()
    finally:
        server.close()


@pytest.mark.parametrize("region", ["eu", "us_west"])
def test_quic_handshake_verifies_the_region_server_cert(
    tmp_path: Path, region: str, caplog: pytest.LogCaptureFixture
) -> None:
    now = datetime.now(UTC)  # aioquic checks validity against the real clock
    cluster = make_cluster(tmp_path / "certs", region, now=now)
    other = make_cluster(tmp_path / "other", now=now)
    ca, name = cluster.dir / "ca.pem", f"{region}.crdtdb"
    caplog.set_level(logging.WARNING, logger="quic")

    asyncio.run(quic_handshake(cluster, region, cafile=ca, server_name=name))
    assert not caplog.records
    with pytest.raises(ConnectionError):
        asyncio.run(quic_handshake(cluster, region, cafile=other.dir / "ca.pem", server_name=name))
    assert "unable to get local issuer certificate" in caplog.text  # the CA, not the name
    caplog.clear()
    with pytest.raises(ConnectionError):
        asyncio.run(quic_handshake(cluster, region, cafile=ca, server_name="ap.crdtdb"))
    assert "hostname 'ap.crdtdb' doesn't match" in caplog.text
