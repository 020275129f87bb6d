"""The mesh's small PKI: a development CA, one certificate per identity, a JWT signing key.

Only the ``cryptography`` package is used (no openssl). Every key is EC P-256: the same
key that authenticates a service in mutual TLS also signs its ES256 service JWTs.

This module is the library; ``certs.mkcerts`` is the command that keeps a directory of
certificates up to date. Tests elsewhere use these functions to craft bad material, e.g.

    ca_cert, ca_key = load_ca(certs_dir)
    expired, key = issue_certificate(ca_cert, ca_key, "wallet", "spiffe://diboas.local/service/wallet",
                                     not_before=now - timedelta(days=10), not_after=now - timedelta(days=1))
    rogue_ca, rogue_key = make_ca("rogue CA")
    foreign, key = issue_certificate(rogue_ca, rogue_key, "wallet", "spiffe://diboas.local/service/wallet")
    write_pem_pair(tmp_path, "wallet", foreign, key)
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_COMMON_NAME = "diBoaS mesh development CA"
CA_DAYS = 5 * 365 + 1          # about five years
LEAF_DAYS = 90
CLOCK_SKEW = timedelta(minutes=1)  # not_before lies this far in the past
CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
JWT_KEY_FILE = "users-jwt.key"
JWKS_FILE = "jwks.json"
LOOPBACK_IPS = ("127.0.0.1", "::1")

__all__ = [
    "CA_COMMON_NAME", "CA_DAYS", "LEAF_DAYS", "CA_CERT_FILE", "CA_KEY_FILE", "JWT_KEY_FILE", "JWKS_FILE",
    "CertError", "new_key", "validity", "make_ca", "issue_certificate", "expected_sans", "certificate_sans",
    "write_pem_pair", "write_file_atomic", "load_certificate", "load_private_key", "load_pem_pair", "load_ca",
    "is_signed_by", "same_key", "problem_with_ca", "problem_with_certificate", "public_jwk", "public_jwks",
    "jwk_thumbprint", "key_pem", "cert_pem",
]


class CertError(Exception):
    """A certificate or key file is missing or cannot be read; the message names the file."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 private key (the only key type the mesh uses)."""
    return ec.generate_private_key(ec.SECP256R1())


def validity(days: float, now: datetime | None = None) -> tuple[datetime, datetime]:
    """(not_before, not_after) for a certificate valid ``days`` from now, with one minute of
    clock-skew tolerance in the past."""
    now = now or _now()
    return now - CLOCK_SKEW, now + timedelta(days=days)


def _ski(public_key) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


def make_ca(common_name: str = CA_COMMON_NAME, not_before: datetime | None = None,
            not_after: datetime | None = None, key: ec.EllipticCurvePrivateKey | None = None):
    """Make a self-signed CA. Returns ``(certificate, private_key)``.

    EC P-256, basicConstraints CA:true pathlen 0 (it signs leaves only), keyUsage
    keyCertSign + cRLSign, SKI and AKI. Validity defaults to now - 1 minute .. about five
    years. Pass ``not_before``/``not_after`` (aware datetimes) to craft expired or
    not-yet-valid CAs, and ``key`` to reuse a key.
    """
    default_nb, default_na = validity(CA_DAYS)
    not_before = not_before or default_nb
    not_after = not_after or default_na
    key = key or new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_ski(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def expected_sans(name: str, spiffe_id: str) -> list[x509.GeneralName]:
    """The SANs of an identity's certificate: URI = SPIFFE id, DNS localhost, DNS <name>,
    IP 127.0.0.1 and ::1."""
    return [
        x509.UniformResourceIdentifier(spiffe_id),
        x509.DNSName("localhost"),
        x509.DNSName(name),
        *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in LOOPBACK_IPS),
    ]


def issue_certificate(ca_cert: x509.Certificate, ca_key, name: str, spiffe_id: str,
                      not_before: datetime | None = None, not_after: datetime | None = None,
                      key: ec.EllipticCurvePrivateKey | None = None,
                      sans: list[x509.GeneralName] | None = None):
    """Issue an identity certificate signed by ``ca_cert``/``ca_key``. Returns ``(certificate, private_key)``.

    CN = ``name``; SANs = :func:`expected_sans` (or ``sans`` to craft a wrong one);
    extendedKeyUsage serverAuth + clientAuth (one certificate serves and calls);
    keyUsage digitalSignature; basicConstraints CA:false; SKI and AKI. Validity defaults to
    now - 1 minute .. 90 days, never past the CA's own expiry. ``key`` reuses a key,
    otherwise a new EC P-256 key is made.
    """
    default_nb, default_na = validity(LEAF_DAYS)
    not_before = not_before or default_nb
    not_after = not_after or min(default_na, ca_cert.not_valid_after_utc)
    key = key or new_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans if sans is not None else expected_sans(name, spiffe_id)),
                       critical=False)
        .add_extension(_ski(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


# ---------------------------------------------------------------------------------------
# Files


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key) -> bytes:
    """PKCS#8 PEM, unencrypted (development keys; the file itself is mode 0600)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_file_atomic(path: str | os.PathLike, data: bytes, mode: int) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same directory, created
    with ``mode`` from the start (a key is never readable by others, not even briefly),
    flushed to disk, then renamed over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_pem_pair(directory: str | os.PathLike, name: str, cert: x509.Certificate, key) -> tuple[Path, Path]:
    """Write ``<name>.key`` (mode 0600) and ``<name>.crt`` (mode 0644) into ``directory``,
    each atomically; the key first, so a certificate never points at a missing key.
    Returns ``(cert_path, key_path)``."""
    directory = Path(directory)
    key_path = write_file_atomic(directory / f"{name}.key", key_pem(key), 0o600)
    cert_path = write_file_atomic(directory / f"{name}.crt", cert_pem(cert), 0o644)
    return cert_path, key_path


def load_certificate(path: str | os.PathLike) -> x509.Certificate:
    """Read a PEM certificate; :class:`CertError` when it is missing or not a certificate."""
    path = Path(path)
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise CertError(f"{path} does not exist") from None
    except (ValueError, OSError) as exc:
        raise CertError(f"{path} is not a readable PEM certificate: {exc}") from None


def load_private_key(path: str | os.PathLike):
    """Read an unencrypted PEM private key; :class:`CertError` when missing or unreadable."""
    path = Path(path)
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise CertError(f"{path} does not exist") from None
    except (ValueError, TypeError, OSError) as exc:
        raise CertError(f"{path} is not a readable PEM private key: {exc}") from None


def load_pem_pair(directory: str | os.PathLike, name: str):
    """Read ``<name>.crt`` and ``<name>.key`` from ``directory``. Returns ``(certificate, private_key)``."""
    directory = Path(directory)
    return load_certificate(directory / f"{name}.crt"), load_private_key(directory / f"{name}.key")


def load_ca(directory: str | os.PathLike):
    """Read the CA (``ca.crt``, ``ca.key``) from ``directory``. Returns ``(certificate, private_key)``;
    raises :class:`CertError` when either file is missing or unreadable."""
    return load_pem_pair(directory, "ca")


# ---------------------------------------------------------------------------------------
# Checks (used to decide what to keep)


def same_key(cert: x509.Certificate, key) -> bool:
    """True when ``key`` is the private key of ``cert``."""
    return cert.public_key().public_numbers() == key.public_key().public_numbers()


def is_signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """True when ``cert`` names ``ca_cert`` as issuer and carries a valid signature by its key."""
    if cert.issuer != ca_cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_p256(key) -> bool:
    return isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)


def _expiry_problem(cert: x509.Certificate, now: datetime, renew_within: timedelta) -> str | None:
    if cert.not_valid_before_utc > now:
        return f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    if cert.not_valid_after_utc <= now:
        return f"expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    if cert.not_valid_after_utc <= now + renew_within:
        return f"expires on {cert.not_valid_after_utc:%Y-%m-%d}, within {renew_within.days} days"
    return None


def problem_with_ca(cert: x509.Certificate, key, now: datetime | None = None,
                    renew_within: timedelta = timedelta(0)) -> str | None:
    """Why this CA cannot be kept (a short reason), or None when it is fine."""
    now = now or _now()
    if not _is_p256(key):
        return "key is not EC P-256"
    if not same_key(cert, key):
        return "ca.key does not match ca.crt"
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return "not a CA certificate (basicConstraints or SKI missing)"
    if not bc.ca:
        return "not a CA certificate (CA:false)"
    if not is_signed_by(cert, cert):
        return "not self-signed"
    return _expiry_problem(cert, now, renew_within)


def certificate_sans(cert: x509.Certificate) -> set[x509.GeneralName]:
    try:
        return set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return set()


def _describe(names) -> str:
    return ", ".join(sorted(f"{type(n).__name__.replace('UniformResourceIdentifier', 'URI').replace('Name', '')}:{n.value}"
                            for n in names))


def problem_with_certificate(cert: x509.Certificate, key, ca_cert: x509.Certificate, name: str,
                             spiffe_id: str, now: datetime | None = None,
                             renew_within: timedelta = timedelta(0)) -> str | None:
    """Why this identity certificate cannot be kept (a short reason), or None when it is
    signed by ``ca_cert``, matches its key, has exactly the expected SANs and usages, and
    does not expire within ``renew_within``."""
    now = now or _now()
    if not _is_p256(key):
        return "key is not EC P-256"
    if not same_key(cert, key):
        return "key does not match certificate"
    if not is_signed_by(cert, ca_cert):
        return "not signed by the current CA"
    if ca_cert.not_valid_after_utc < cert.not_valid_after_utc:
        return "outlives the current CA"
    have, want = certificate_sans(cert), set(expected_sans(name, spiffe_id))
    if have != want:
        parts = []
        if want - have:
            parts.append("missing " + _describe(want - have))
        if have - want:
            parts.append("unexpected " + _describe(have - want))
        return "SANs differ: " + "; ".join(parts)
    try:
        eku = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return "key usages missing"
    if not {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= eku or not ku.digital_signature:
        return "key usages differ (need serverAuth, clientAuth, digitalSignature)"
    return _expiry_problem(cert, now, renew_within)


# ---------------------------------------------------------------------------------------
# JWT signing key for external users (Envoy's jwt_authn verifies with jwks.json)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_jwk(key) -> dict:
    """The public JWK (RFC 7517) of an EC P-256 key, with ``kid`` = its RFC 7638 thumbprint,
    ``alg`` ES256 and ``use`` sig."""
    numbers = key.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }
    jwk["kid"] = jwk_thumbprint(jwk)
    jwk.update(alg="ES256", use="sig")
    return jwk


def jwk_thumbprint(jwk: dict) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of an EC JWK."""
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def public_jwks(key) -> dict:
    """``{"keys": [public_jwk(key)]}``: the document written to jwks.json."""
    return {"keys": [public_jwk(key)]}
