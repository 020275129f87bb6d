"""certs.mkcerts: the development CA, identity certificates, renewal and the users' JWKS."""
from __future__ import annotations

import ipaddress
import json
import stat
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.mkcerts import ensure_certificates, main
from certs.pki import (
    CA_COMMON_NAME,
    issue_certificate,
    load_ca,
    load_pem_pair,
    load_private_key,
    make_ca,
    write_pem_pair,
)
from services.runtime.config import load_topology

REPO = Path(__file__).resolve().parents[2]
IDS = load_topology(REPO / "mesh.yaml", env={}).identities()


def _run(out: Path, **kw):
    return {(r.file): r for r in ensure_certificates(out, IDS, **kw)}


def _snapshot(out: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.iterdir())}


def _cli(*args: str, cwd: Path = REPO):
    return subprocess.run([sys.executable, "-m", "certs.mkcerts", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    d = tmp_path / "certs"
    _run(d)
    return d


def test_writes_every_file(out: Path):
    names = {p.name for p in out.iterdir()}
    expected = {"ca.crt", "ca.key", "users-jwt.key", "jwks.json", "events-keys.json"}
    for name in ("wallet", "transaction", "provider", "blockchain", "compliance", "gateway", "operator"):
        expected |= {f"{name}.crt", f"{name}.key"}
    assert names == expected  # and no stray temporary files


def test_ca_is_a_p256_ca(out: Path):
    ca, key = load_ca(out)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert ca.subject.rfc4514_string() == f"CN={CA_COMMON_NAME}"
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert timedelta(days=5 * 365) <= lifetime <= timedelta(days=5 * 366)


@pytest.mark.parametrize("name", sorted(IDS))
def test_identity_certificate(out: Path, name: str):
    ca, _ = load_ca(out)
    cert, key = load_pem_pair(out, name)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert cert.subject.rfc4514_string() == f"CN={name}"
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [IDS[name]]
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(["localhost", name])
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert ski.digest == x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
    assert aki.key_identifier == ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    now = datetime.now(timezone.utc)
    assert now - timedelta(minutes=2) < cert.not_valid_before_utc < now - timedelta(seconds=30)
    assert abs(cert.not_valid_after_utc - (now + timedelta(days=90))) < timedelta(minutes=2)


def test_spiffe_ids_are_the_expected_ones():
    assert IDS["wallet"] == "spiffe://diboas.local/service/wallet"
    assert IDS["gateway"] == "spiffe://diboas.local/service/gateway"
    assert IDS["operator"] == "spiffe://diboas.local/client/operator"


def test_file_modes(out: Path):
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for p in out.iterdir():
        mode = stat.S_IMODE(p.stat().st_mode)
        secret = p.suffix == ".key" or p.name == "events-keys.json"
        assert mode == (0o600 if secret else 0o644), (p.name, oct(mode))


def test_second_run_keeps_everything(out: Path):
    before = _snapshot(out)
    results = _run(out)
    assert {r.action for r in results.values()} == {"kept"}
    assert _snapshot(out) == before


def test_expiring_certificate_is_renewed(out: Path):
    ca, ca_key = load_ca(out)
    now = datetime.now(timezone.utc)
    cert, key = issue_certificate(ca, ca_key, "wallet", IDS["wallet"], now - timedelta(days=80), now + timedelta(days=10))
    write_pem_pair(out, "wallet", cert, key)
    before = _snapshot(out)
    results = _run(out)
    assert results["wallet.crt"].action == "renewed"
    assert "within 30 days" in results["wallet.crt"].reason
    new, _ = load_pem_pair(out, "wallet")
    assert new.not_valid_after_utc > now + timedelta(days=89)
    changed = {n for n in before if before[n] != _snapshot(out)[n]}
    assert changed == {"wallet.crt", "wallet.key"}


def test_expired_certificate_is_renewed(out: Path):
    ca, ca_key = load_ca(out)
    now = datetime.now(timezone.utc)
    cert, key = issue_certificate(ca, ca_key, "provider", IDS["provider"], now - timedelta(days=100), now - timedelta(days=1))
    write_pem_pair(out, "provider", cert, key)
    results = _run(out)
    assert results["provider.crt"].action == "renewed"
    assert "expired" in results["provider.crt"].reason


def test_renewal_window_and_clock(out: Path):
    # 70 days on, every 90-day certificate is inside the 30-day window; the CA is not.
    later = datetime.now(timezone.utc) + timedelta(days=70)
    assert _run(out, now=later, renew_within_days=5)["wallet.crt"].action == "kept"
    results = _run(out, now=later)
    assert results["ca.crt"].action == "kept"
    assert results["wallet.crt"].action == "renewed"


def test_wrong_spiffe_id_is_renewed(out: Path):
    ca, ca_key = load_ca(out)
    cert, key = issue_certificate(ca, ca_key, "wallet", "spiffe://diboas.local/service/transaction")
    write_pem_pair(out, "wallet", cert, key)
    results = _run(out)
    assert results["wallet.crt"].action == "renewed"
    assert "SANs differ" in results["wallet.crt"].reason
    new, _ = load_pem_pair(out, "wallet")
    san = new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [IDS["wallet"]]


def test_certificate_from_another_ca_is_renewed(out: Path):
    rogue, rogue_key = make_ca("rogue CA")
    cert, key = issue_certificate(rogue, rogue_key, "gateway", IDS["gateway"])
    write_pem_pair(out, "gateway", cert, key)
    results = _run(out)
    assert results["gateway.crt"].action == "renewed"
    assert results["gateway.crt"].reason == "not signed by the current CA"
    load_pem_pair(out, "gateway")[0].verify_directly_issued_by(load_ca(out)[0])


def test_mismatched_key_and_missing_file_are_renewed(out: Path):
    ca, ca_key = load_ca(out)
    cert, _ = load_pem_pair(out, "wallet")
    _, other_key = issue_certificate(ca, ca_key, "wallet", IDS["wallet"])
    write_pem_pair(out, "wallet", cert, other_key)
    (out / "operator.crt").unlink()
    results = _run(out)
    assert results["wallet.crt"].reason == "key does not match certificate"
    assert results["operator.crt"].action == "renewed"


def test_world_readable_key_is_replaced(out: Path):
    (out / "blockchain.key").chmod(0o644)
    results = _run(out)
    assert results["blockchain.key"].action == "renewed"
    assert stat.S_IMODE((out / "blockchain.key").stat().st_mode) == 0o600


def test_missing_ca_reissues_everything(out: Path):
    old_ca, _ = load_ca(out)
    (out / "ca.key").unlink()
    results = _run(out)
    ca, _ = load_ca(out)
    assert ca.serial_number != old_ca.serial_number
    assert results["ca.crt"].action == "renewed"
    for name in IDS:
        assert results[f"{name}.crt"].action == "renewed"
        assert results[f"{name}.crt"].reason == "new CA"
        load_pem_pair(out, name)[0].verify_directly_issued_by(ca)
    # The users' JWT key does not depend on the CA.
    assert results["users-jwt.key"].action == "kept"


def test_expiring_ca_reissues_everything(out: Path):
    now = datetime.now(timezone.utc)
    ca, ca_key = make_ca(not_before=now - timedelta(days=1000), not_after=now + timedelta(days=20))
    write_pem_pair(out, "ca", ca, ca_key)
    results = _run(out)
    assert results["ca.crt"].action == "renewed" and "within" in results["ca.crt"].reason
    assert all(results[f"{n}.crt"].action == "renewed" for n in IDS)


def test_force_reissues_everything(out: Path):
    before = _snapshot(out)
    results = _run(out, force=True)
    # Event keys are never replaced: messages already encrypted with them must stay readable.
    assert results.pop("events-keys.json").action == "kept"
    assert {r.action for r in results.values()} == {"renewed"}
    after = _snapshot(out)
    assert all(before[n][0] != after[n][0] for n in before if n != "events-keys.json")


def test_jwks_matches_the_signing_key(out: Path):
    key = load_private_key(out / "users-jwt.key")
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    jwks = json.loads((out / "jwks.json").read_text())
    (jwk,) = jwks["keys"]
    assert jwk["alg"] == "ES256" and jwk["use"] == "sig" and jwk["kid"] and "d" not in jwk
    token = jwt.encode({"sub": "user-1", "aud": "diboas"}, key, algorithm="ES256", headers={"kid": jwk["kid"]})
    public = jwt.PyJWK(jwk)
    assert jwt.get_unverified_header(token)["kid"] == public.key_id
    claims = jwt.decode(token, public.key, algorithms=["ES256"], audience="diboas")
    assert claims["sub"] == "user-1"
    other = jwt.encode({"sub": "x"}, load_private_key(out / "wallet.key"), algorithm="ES256")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(other, public.key, algorithms=["ES256"])


def test_stale_jwks_is_rewritten(out: Path):
    good = (out / "jwks.json").read_text()
    (out / "jwks.json").write_text('{"keys": []}')
    results = _run(out)
    assert results["users-jwt.key"].action == "kept"
    assert results["jwks.json"].action == "renewed"
    assert (out / "jwks.json").read_text() == good


def test_cli_prints_one_line_per_file(tmp_path: Path):
    first = _cli("--out", str(tmp_path / "o"))
    assert first.returncode == 0, first.stderr
    lines = [line.split() for line in first.stdout.splitlines()[1:]]
    assert len(lines) == 2 * (len(IDS) + 1) + 3
    assert {line[0] for line in lines} == {"issued"}
    second = _cli("--out", str(tmp_path / "o"))
    assert second.returncode == 0
    assert {line.split()[0] for line in second.stdout.splitlines()[1:]} == {"kept"}
    assert "kept     wallet.crt" in second.stdout and "expires 20" in second.stdout


def test_unwritable_directory_exits_2(tmp_path: Path, capsys):
    (tmp_path / "x").write_text("a regular file")
    out = tmp_path / "x" / "certs"
    assert main(["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot write certificates to" in err and str(out) in err and "Traceback" not in err
    proc = _cli("--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.startswith("mkcerts: error: cannot write certificates to")
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_topology_error_exits_2(tmp_path: Path):
    bad = tmp_path / "mesh.yaml"
    bad.write_text("services:\n  wallet: {}\n")
    proc = _cli("--topology", str(bad), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "'address' is missing" in proc.stderr and "Traceback" not in proc.stderr
    proc = _cli("--topology", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_bad_arguments_exit_2(tmp_path: Path):
    proc = _cli("--days", "10", "--renew-within-days", "30", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "--renew-within-days" in proc.stderr and "Traceback" not in proc.stderr


def test_outputs_are_git_ignored():
    paths = ["certs/out/ca.key", "certs/out/wallet.crt", "certs/out/jwks.json", "certs/out/users-jwt.key"]
    proc = subprocess.run(["git", "check-ignore", *paths], cwd=REPO, capture_output=True, text=True)
    if proc.returncode == 128:
        pytest.skip("not a git checkout")
    assert proc.stdout.split() == paths


def test_event_keys_are_kept_tightened_or_refused(out: Path, capsys):
    ring = out / "events-keys.json"
    before = ring.read_bytes()
    ring.chmod(0o644)
    assert _run(out)["events-keys.json"].action == "renewed"
    assert stat.S_IMODE(ring.stat().st_mode) == 0o600 and ring.read_bytes() == before
    ring.write_text('{"active": "k9", "keys": {}}')
    assert main(["--out", str(out)]) == 2
    assert "is not a valid event key ring" in capsys.readouterr().err
