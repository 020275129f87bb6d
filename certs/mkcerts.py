"""Make, keep or renew the mesh's development CA, identity certificates and JWT key.

    python -m certs.mkcerts [--out DIR] [--topology FILE] [--days N] [--renew-within-days N] [--force]

It writes into DIR (default: the topology's certs_dir, certs/out):

    ca.crt, ca.key                 the development CA (EC P-256, about five years)
    <name>.crt, <name>.key         one per identity of the topology (services, gateway, clients)
    users-jwt.key, jwks.json       the signing key for external users' JWTs and its public JWK set
    events-keys.json               AES-256-GCM keys for sensitive event payloads (kept, never renewed)

Running it again keeps what is still good and renews the rest, printing one line per file
(kept / issued / renewed, the reason, and the expiry date). Errors are one line on stderr and
exit code 2. See docs/certificates.md.

The library functions (make_ca, issue_certificate, write_pem_pair, load_ca, ...) live in
certs.pki and are re-exported here.
"""
from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import stat
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Mapping

from certs.pki import *  # noqa: F401,F403  (re-export the library API)
from certs.pki import (
    CA_CERT_FILE,
    CA_DAYS,
    CA_KEY_FILE,
    JWKS_FILE,
    JWT_KEY_FILE,
    LEAF_DAYS,
    CertError,
    _is_p256,
    issue_certificate,
    key_pem,
    load_ca,
    load_pem_pair,
    load_private_key,
    make_ca,
    new_key,
    problem_with_ca,
    problem_with_certificate,
    public_jwks,
    validity,
    write_file_atomic,
    write_pem_pair,
)
from services.runtime.messaging.secure import KEY_FILE as EVENT_KEYS_FILE  # noqa: E402

RENEW_WITHIN_DAYS = 30


@dataclass(frozen=True)
class FileResult:
    """What happened to one file: action is 'kept', 'issued' or 'renewed'."""
    file: str
    action: str
    reason: str = ""
    expires: datetime | None = None

    def line(self) -> str:
        when = f"expires {self.expires:%Y-%m-%d}" if self.expires else "no expiry"
        why = f"  ({self.reason})" if self.reason else ""
        return f"{self.action:<8} {self.file:<24} {when}{why}"


def _loose_key_mode(path: Path) -> str | None:
    """A reason when a key file is readable or writable by group/others (treated as leaked)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    return f"{path.name} had mode {mode:04o}, expected 0600" if mode & 0o077 else None


def _prepare_dir(out: Path) -> None:
    """Create the out directory with mode 0700, or tighten an existing one we own."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.mkdir(mode=0o700)
    if not out.is_dir():
        raise NotADirectoryError(20, "Not a directory", str(out))
    st = out.stat()
    # Never chmod a shared directory (e.g. --out /tmp, sticky) or someone else's.
    if stat.S_IMODE(st.st_mode) & 0o077 and not st.st_mode & stat.S_ISVTX and st.st_uid == os.getuid():
        os.chmod(out, 0o700)
    if not os.access(out, os.W_OK | os.X_OK):
        raise PermissionError(13, "Permission denied", str(out))


def ensure_certificates(out_dir: str | os.PathLike, identities: Mapping[str, str], *, days: int = LEAF_DAYS,
                        renew_within_days: int = RENEW_WITHIN_DAYS, force: bool = False,
                        now: datetime | None = None) -> list[FileResult]:
    """Bring ``out_dir`` up to date for ``identities`` ({short name: SPIFFE id}).

    Keeps every certificate that is signed by the current CA, matches its key, has the
    expected SANs and does not expire within ``renew_within_days``; renews the others. A
    missing, invalid or expiring CA (or ``force``) means a new CA and every certificate
    re-issued. ``now`` (aware datetime) lets tests look into the future. Returns one
    :class:`FileResult` per file, in the order written. Raises OSError when the directory
    cannot be written.
    """
    out = Path(out_dir)
    now = now or datetime.now(timezone.utc)
    window = timedelta(days=renew_within_days)
    _prepare_dir(out)
    lock = os.open(out, os.O_RDONLY)  # one run at a time per directory
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure(out, identities, days, window, force, now)
    finally:
        os.close(lock)


def _ensure(out: Path, identities: Mapping[str, str], days: int, window: timedelta, force: bool,
            now: datetime) -> list[FileResult]:
    results: list[FileResult] = []

    # --- the CA -------------------------------------------------------------------------
    ca_problem: str | None
    ca_cert = ca_key = None
    if force:
        ca_problem = "--force"
    else:
        try:
            ca_cert, ca_key = load_ca(out)
            # The CA must outlive a certificate issued now, and not be inside the renewal window.
            ca_problem = (_loose_key_mode(out / CA_KEY_FILE)
                          or problem_with_ca(ca_cert, ca_key, now, max(window, timedelta(days=days))))
        except CertError as exc:
            ca_problem = "missing" if not (out / CA_CERT_FILE).exists() else str(exc).replace(f"{out}/", "")
    new_ca = ca_problem is not None
    if new_ca:
        had_ca = (out / CA_CERT_FILE).exists()
        not_before, not_after = validity(CA_DAYS, now)
        ca_cert, ca_key = make_ca(not_before=not_before, not_after=not_after)
        write_pem_pair(out, "ca", ca_cert, ca_key)
        action, reason = ("renewed", ca_problem) if had_ca else ("issued", "")
        for f in (CA_CERT_FILE, CA_KEY_FILE):
            results.append(FileResult(f, action, reason, ca_cert.not_valid_after_utc))
    else:
        for f in (CA_CERT_FILE, CA_KEY_FILE):
            results.append(FileResult(f, "kept", "", ca_cert.not_valid_after_utc))

    # --- one certificate per identity ---------------------------------------------------
    for name, spiffe in identities.items():
        crt, key_file = out / f"{name}.crt", out / f"{name}.key"
        had = crt.exists() or key_file.exists()
        if force:
            problem = "--force"
        elif new_ca:
            problem = "new CA"
        else:
            try:
                cert, key = load_pem_pair(out, name)
                problem = (_loose_key_mode(key_file)
                           or problem_with_certificate(cert, key, ca_cert, name, spiffe, now, window))
            except CertError as exc:
                problem = "missing" if not had else str(exc).replace(f"{out}/", "")
        if problem is None:
            for f in (crt.name, key_file.name):
                results.append(FileResult(f, "kept", "", cert.not_valid_after_utc))
            continue
        not_before, not_after = validity(days, now)
        cert, key = issue_certificate(ca_cert, ca_key, name, spiffe, not_before,
                                      min(not_after, ca_cert.not_valid_after_utc))
        write_pem_pair(out, name, cert, key)
        action, reason = ("renewed", problem) if had else ("issued", "")
        for f in (crt.name, key_file.name):
            results.append(FileResult(f, action, reason, cert.not_valid_after_utc))

    # --- the users' JWT signing key and its JWKS ----------------------------------------
    results.extend(_ensure_jwt_key(out, force))
    results.append(_ensure_event_keys(out))
    return results


def _ensure_event_keys(out: Path) -> FileResult:
    """The AES-256-GCM keys that encrypt sensitive event payloads. Kept as they are: rotating
    means adding a key and making it active, never dropping one that old messages still need
    (services.runtime.messaging.secure explains the file)."""
    path = out / EVENT_KEYS_FILE
    try:
        ring = json.loads(path.read_text())
        valid = (isinstance(ring, dict) and ring.get("active") in ring.get("keys", {})
                 and all(len(base64.b64decode(k, validate=True)) == 32 for k in ring["keys"].values()))
    except FileNotFoundError:
        ring, valid = None, False
    except (ValueError, OSError, TypeError, AttributeError):
        ring, valid = "unreadable", False
    if valid and not _loose_key_mode(path):
        return FileResult(EVENT_KEYS_FILE, "kept")
    if ring is not None and ring != "unreadable" and valid:  # readable by others: re-write it private
        write_file_atomic(path, path.read_bytes(), 0o600)
        return FileResult(EVENT_KEYS_FILE, "renewed", "was readable by others")
    if ring is not None:
        raise CertError(f"{path} is not a valid event key ring; fix it by hand (old events need its keys) "
                        "or move it away to start a new one")
    key_id = f"k{int(time.time())}"
    body = {"active": key_id, "keys": {key_id: base64.b64encode(os.urandom(32)).decode()}}
    write_file_atomic(path, (json.dumps(body, indent=2) + "\n").encode(), 0o600)
    return FileResult(EVENT_KEYS_FILE, "issued")


def _ensure_jwt_key(out: Path, force: bool) -> list[FileResult]:
    key_path, jwks_path = out / JWT_KEY_FILE, out / JWKS_FILE
    key = None
    problem: str | None = "--force" if force else None
    if not force:
        try:
            key = load_private_key(key_path)
            problem = _loose_key_mode(key_path) or (None if _is_p256(key) else "key is not EC P-256")
        except CertError as exc:
            problem = "missing" if not key_path.exists() else str(exc).replace(f"{out}/", "")
    results = []
    if problem is None:
        results.append(FileResult(JWT_KEY_FILE, "kept"))
    else:
        had = key_path.exists()
        key = new_key()
        write_file_atomic(key_path, key_pem(key), 0o600)
        results.append(FileResult(JWT_KEY_FILE, "renewed" if had else "issued", problem if had else ""))
    want = public_jwks(key)
    try:
        have = json.loads(jwks_path.read_text())
    except FileNotFoundError:
        have = None
    except (ValueError, OSError):
        have = "unreadable"
    if have == want:
        results.append(FileResult(JWKS_FILE, "kept"))
    else:
        write_file_atomic(jwks_path, (json.dumps(want, indent=2) + "\n").encode(), 0o644)
        if have is None:
            results.append(FileResult(JWKS_FILE, "issued"))
        else:
            reason = "new users-jwt.key" if problem else ("unreadable" if have == "unreadable" else "did not match users-jwt.key")
            results.append(FileResult(JWKS_FILE, "renewed", reason))
    return results


# ---------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m certs.mkcerts",
                                description="Make, keep or renew the mesh's development CA, certificates and JWT key.")
    p.add_argument("--out", metavar="DIR", help="output directory (default: the topology's certs_dir, certs/out)")
    p.add_argument("--topology", metavar="FILE", help="topology file (default: DIBOAS_TOPOLOGY or mesh.yaml)")
    p.add_argument("--days", type=int, default=LEAF_DAYS, metavar="N",
                   help=f"validity of identity certificates in days (default {LEAF_DAYS})")
    p.add_argument("--renew-within-days", type=int, default=RENEW_WITHIN_DAYS, metavar="N",
                   help=f"renew certificates that expire within N days (default {RENEW_WITHIN_DAYS})")
    p.add_argument("--force", action="store_true", help="make a new CA and re-issue everything")
    return p


def _fail(message: str) -> int:
    print(f"mkcerts: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # argparse itself exits 2 with a usage message
    if args.days < 1:
        return _fail(f"--days must be at least 1, got {args.days}")
    if not 0 <= args.renew_within_days < args.days:
        return _fail(f"--renew-within-days must be between 0 and --days - 1 ({args.days - 1}), "
                     f"got {args.renew_within_days}")
    from services.runtime.config import ConfigError, load_topology
    try:
        topology = load_topology(args.topology)
        identities = topology.identities()
    except ConfigError as exc:
        return _fail(str(exc))
    out = Path(args.out) if args.out else topology.certs_dir
    try:
        results = ensure_certificates(out, identities, days=args.days,
                                      renew_within_days=args.renew_within_days, force=args.force)
    except OSError as exc:
        where = exc.filename or out
        return _fail(f"cannot write certificates to {out}: {where}: {exc.strerror or exc}")
    except CertError as exc:
        return _fail(str(exc))
    print(f"certificates in {out}:")
    for r in results:
        print("  " + r.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
