"""TLS: the certificate every listener uses, and the SSL contexts made from it.

Unless ``tls.cert``/``tls.key`` are configured, a self-signed certificate is made on first
start in ``DATA_DIR/tls/`` (EC P-256: instant to generate, accepted by every client) and
made again when it nears its end.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agora.core.fsutil import write_atomically

log = logging.getLogger("agora.tls")

SELF_SIGNED_VALIDITY = timedelta(days=825)
RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True)
class CertificatePaths:
    cert: Path
    key: Path
    self_signed: bool


def make_self_signed(cert_path: Path, key_path: Path, hostnames: list[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0] if hostnames else "localhost"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Agora (self-signed)")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + SELF_SIGNED_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_atomically(key_path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), mode=0o600)
    write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _expires_soon(cert_path: Path) -> bool:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.not_valid_after_utc - datetime.now(timezone.utc) < RENEW_BEFORE


def ensure_certificate(data_dir: Path, cert: str, key: str, hostnames: list[str]) -> CertificatePaths:
    if cert and key:
        return CertificatePaths(Path(cert).expanduser(), Path(key).expanduser(), self_signed=False)
    folder = data_dir / "tls"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    if not (cert_path.is_file() and key_path.is_file()) or _expires_soon(cert_path):
        log.info("making a self-signed TLS certificate in %s", folder)
        make_self_signed(cert_path, key_path, hostnames)
    return CertificatePaths(cert_path, key_path, self_signed=True)


def server_context(paths: CertificatePaths) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(paths.cert, paths.key)
    return context
