"""TLS for the SMTP listeners: a hardened server context, development
certificates, and the TLS layer a session runs over its plain transport.

The context follows RFC 8314 4.1 and RFC 8996: TLS 1.2 at the least, the
ssl module's secure cipher defaults, no compression, no renegotiation.

Sessions do TLS themselves, over memory buffers (``TLSLayer``), rather than
through asyncio's TLS transport: that transport discards whatever the
application writes once the client has sent its close_notify or shut down
its side, and an SMTP client that pipelines ``QUIT`` behind the end of a
message and half-closes (Exim does) is still owed the ``250`` for it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

from mailgate import MailgateError
from mailgate.server._counters import SMTPCounters

__all__ = ["TLSConfigError", "TLSLayer", "ensure_self_signed", "server_context"]

_SELF_SIGNED_DAYS = 825
_READ_OCTETS = 64 * 1024


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


class TLSLayer:
    """The server side of TLS on one connection, sans I/O.

    Ciphertext from the socket goes in through ``receive`` and plaintext
    comes out; plaintext goes in through ``send`` and ``data_to_send`` gives
    the ciphertext for the socket (handshake records included).  ``eof``
    turns true once the client has ended its side (close_notify, or the
    connection's end); replies may still be sent after that, until ``close``.

    The handshake's outcome is counted in ``counters`` (``tls_handshakes``):
    ``ok`` with its version, or ``failed`` when it raised, or was still
    unfinished at ``close`` (it timed out, the server is stopping).
    """

    def __init__(self, context: ssl.SSLContext, counters: SMTPCounters | None = None) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._counters = counters if counters is not None else SMTPCounters()
        self._failed = False
        self.handshake_done = False
        self.eof = False

    def receive(self, data: bytes) -> bytes:
        """Feed ciphertext; return the plaintext it completes (often ``b""``).

        Raises ``ssl.SSLError`` when the handshake fails or a record is bad.
        """
        self._incoming.write(data)
        return self._read()

    def receive_eof(self) -> bytes:
        """The connection ended; return any plaintext still to be read.

        Raises ``ssl.SSLError`` when it ended inside the handshake.
        """
        self._incoming.write_eof()
        return self._read()

    def _read(self) -> bytes:
        if not self.handshake_done:
            try:
                self._handshake()
            except ssl.SSLWantReadError:
                return b""
            self.handshake_done = True
            self._counters.tls_succeeded(self.version)
        chunks: list[bytes] = []
        while not self.eof:
            try:
                chunk = self._tls.read(_READ_OCTETS)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                # close_notify, or a bare end of the connection: either way the
                # client will send nothing more.  No message is lost to a truncation
                # attack, as one ends only with its final dot or BDAT LAST.
                self.eof = True
                break
            if not chunk:
                self.eof = True
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def _handshake(self) -> None:
        """Go on with the handshake; ``ssl.SSLWantReadError`` while it needs more."""
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            if not self._incoming.eof:
                raise
            self._handshake_failed()
            raise ssl.SSLEOFError("the connection ended during the handshake") from None
        except ssl.SSLError:
            self._handshake_failed()
            raise

    def _handshake_failed(self) -> None:
        if not self._failed:
            self._failed = True
            self._counters.tls_handshakes["failed"] += 1

    def send(self, data: bytes) -> None:
        """Encrypt ``data`` for the client (``data_to_send`` has the records)."""
        self._tls.write(data)

    def data_to_send(self) -> bytes:
        """Ciphertext waiting for the socket."""
        return self._outgoing.read()

    def close(self) -> None:
        """Say close_notify (in ``data_to_send``); the client's need not be awaited."""
        if not self.handshake_done:
            self._handshake_failed()  # cut short: timed out, or the server is stopping
            return
        try:
            self._tls.unwrap()
        except ssl.SSLError:
            pass  # want-read (the client's close_notify is not awaited) or a broken link

    @property
    def version(self) -> str:
        """The negotiated protocol version, e.g. ``TLSv1.3``."""
        return str(self._tls.version())

    @property
    def cipher(self) -> str:
        """The negotiated cipher suite's name."""
        cipher = self._tls.cipher()
        return str(cipher[0]) if cipher else ""
