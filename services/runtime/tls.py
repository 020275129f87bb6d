"""Loading an identity's certificate material and turning it into gRPC credentials."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import grpc
from cryptography import x509

from services.config_files import ConfigError
from services.domain.clock import utcnow


@dataclass(frozen=True)
class IdentityFiles:
    """PEM bytes of the mesh CA and of one identity's certificate and private key."""

    name: str
    ca: bytes
    cert: bytes
    key: bytes


def load_identity(certs_dir: Path, name: str) -> IdentityFiles:
    """Read ca.crt, NAME.crt and NAME.key; a missing or expired file is a ConfigError saying what to run."""
    paths = {"ca": certs_dir / "ca.crt", "cert": certs_dir / f"{name}.crt", "key": certs_dir / f"{name}.key"}
    data = {}
    for kind, path in paths.items():
        try:
            data[kind] = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"{path} is missing: run `make certs` (or set DIBOAS_CERTS_DIR)") from None
        except PermissionError:
            raise ConfigError(f"{path} is not readable by this user") from None
    now = utcnow()
    for kind in ("ca", "cert"):
        try:
            cert = x509.load_pem_x509_certificate(data[kind])
        except ValueError:
            raise ConfigError(f"{paths[kind]} is not a PEM certificate: run `make certs`") from None
        if cert.not_valid_after_utc <= now:
            raise ConfigError(f"{paths[kind]} expired on {cert.not_valid_after_utc:%Y-%m-%d}: run `make certs` to renew it")
    return IdentityFiles(name, data["ca"], data["cert"], data["key"])


def server_credentials(files: IdentityFiles) -> grpc.ServerCredentials:
    """mTLS only: the client must present a certificate signed by the mesh CA."""
    return grpc.ssl_server_credentials([(files.key, files.cert)], root_certificates=files.ca, require_client_auth=True)


def channel_credentials(files: IdentityFiles) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=files.ca, private_key=files.key, certificate_chain=files.cert)


def mesh_channel(address: str, files: IdentityFiles, server_name: str,
                 options: Sequence[tuple[str, object]] = ()) -> grpc.aio.Channel:
    """An mTLS channel to `address` as the identity of `files`: the server's certificate must be
    signed by the mesh CA and name `server_name` (a service's name, its DNS SAN): we check who
    answers."""
    return grpc.aio.secure_channel(address, channel_credentials(files),
                                   options=[("grpc.ssl_target_name_override", server_name), *options])
