"""TLS for the SMTP listeners: a hardened server context and development certificates.

The context follows RFC 8314 4.1 and RFC 8996: TLS 1.2 at the least, the
ssl module's secure cipher defaults, no compression, no renegotiation.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

from mailgate import MailgateError

__all__ = ["TLSConfigError", "ensure_self_signed", "server_context"]

_SELF_SIGNED_DAYS = 825


class TLSConfigError(MailgateError):
    """A certificate or key could not be used; the message is one line."""


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side context for ``cert`` and ``key`` (PEM files).

    Raises ``TLSConfigError`` naming the file when either is missing or bad.
    """
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not path.is_file():
            raise TLSConfigError(f"{flag}: {path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as error:
        raise TLSConfigError(
            f"--tls-cert/--tls-key: {cert}, {key}: not a matching PEM certificate and key "
            f"({error.reason or error})"
        ) from error
    except OSError as error:
        raise TLSConfigError(f"--tls-cert/--tls-key: {error.strerror}: {error.filename}") from error
    return context


def ensure_self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """Make (once) and keep a self-signed certificate for ``hostname``.

    Returns the certificate and key paths.  For development only: clients
    must be told to trust it.  Raises ``TLSConfigError`` when the
    ``cryptography`` package is missing or the directory is not writable.
    """
    cert_path = directory / "tls" / "self-signed.crt"
    key_path = directory / "tls" / "self-signed.key"
    if cert_path.is_file() and key_path.is_file():
        return cert_path, key_path
    try:
        from cryptography import x509  # noqa: PLC0415 - only needed on first use
        from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
        from cryptography.x509.oid import NameOID  # noqa: PLC0415
    except ImportError as error:  # pragma: no cover - cryptography is a dependency
        raise TLSConfigError("--tls-self-signed needs the 'cryptography' package") from error
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
    alt_names: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost")]
    alt_names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    try:
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        key_bytes = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_bytes)
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    except OSError as error:
        raise TLSConfigError(
            f"--tls-self-signed: cannot write {error.filename}: {error.strerror}"
        ) from error
    return cert_path, key_path
