"""TLS for both servers from PEM files, optionally mutual, reloaded when the files change.

One :class:`TLSSource` holds the certificate chain, key and client CA both servers use.
:meth:`TLSSource.refresh` re-reads them when any file changed; a new set that does not load
(a key that does not match its certificate, a half-written file) leaves the old one serving
and is logged once. Connections already open keep the certificate they shook hands with;
new handshakes get the new one:

- gRPC: ``grpc.dynamic_ssl_server_credentials`` asks :meth:`TLSSource.grpc_credentials`'s
  fetcher before each handshake, which hands over a new configuration once per reload;
- HTTP: the listening socket keeps one front ``SSLContext`` whose SNI callback (OpenSSL calls
  it on every ClientHello, with or without a server name) moves each new connection onto the
  context of the current files, so even the client CA can be replaced, not only added to.

Outbound, :func:`triton_channel_credentials` builds the credentials of the gRPC channels to
Triton servers from the ``triton_tls_*`` settings.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from gateway.config import GatewaySettings
from gateway.watch import FileSignature, file_signature, one_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TLSFiles:
    """Where a server's TLS material lives.

    Attributes:
        cert_file: PEM certificate chain (leaf first).
        key_file: PEM private key of the leaf.
        client_ca_file: PEM CAs client certificates must chain to; None: no client certificates.
    """

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file of the set."""
        ca = (self.client_ca_file,) if self.client_ca_file is not None else ()
        return (self.cert_file, self.key_file, *ca)


@dataclass(frozen=True)
class TLSMaterial:
    """One loaded, checked set of TLS files."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None
    context: ssl.SSLContext
    """A server context holding exactly this material."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc


def _server_context(files: TLSFiles, client_ca: bytes | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert_file, files.key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(
            f"cannot use {files.cert_file.name} with {files.key_file.name}: {one_line(exc)} "
            "(is the key the certificate's, both PEM?)"
        ) from exc
    if client_ca is not None:
        try:
            context.load_verify_locations(cadata=client_ca.decode("ascii", errors="replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(f"cannot use the client CA file: {one_line(exc)}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def load_material(files: TLSFiles) -> TLSMaterial:
    """Read and check a set of TLS files.

    Raises:
        ValueError: A file is missing or unreadable, or the key does not fit the certificate.
    """

    def read_all() -> tuple[bytes, bytes, bytes | None]:
        ca = files.client_ca_file
        return (
            _read(files.cert_file, "certificate file"),
            _read(files.key_file, "key file"),
            _read(ca, "client CA file") if ca is not None else None,
        )

    cert_chain, private_key, client_ca = read_all()
    context = _server_context(files, client_ca)  # OpenSSL reads the files by path
    if read_all() != (cert_chain, private_key, client_ca):
        raise ValueError("the TLS files changed while being read; trying again at the next change")
    return TLSMaterial(cert_chain, private_key, client_ca, context)


class TLSSource:
    """The TLS material both servers present, reloaded when its files change."""

    def __init__(self, files: TLSFiles) -> None:
        """Load ``files`` once.

        Raises:
            ValueError: They do not load (see :func:`load_material`).
        """
        self.files = files
        self._signature = self._signatures()
        self._material = load_material(files)
        self.version = 1
        """Bumped on every successful reload."""

    def _signatures(self) -> tuple[FileSignature | None, ...]:
        return tuple(file_signature(p) for p in self.files.paths)

    @property
    def mutual(self) -> bool:
        """Whether clients must present certificates."""
        return self.files.client_ca_file is not None

    @property
    def material(self) -> TLSMaterial:
        """What new handshakes use."""
        return self._material

    def refresh(self) -> bool | None:
        """Re-read the files if any changed: True reloaded, False failed, None unchanged."""
        signature = self._signatures()
        if signature == self._signature:
            return None
        self._signature = signature
        try:
            material = load_material(self.files)
        except ValueError as exc:
            log.error("TLS files not reloaded, the previous certificate stays in service: %s", exc)
            return False
        self._material = material
        self.version += 1
        log.info("TLS certificate reloaded from %s", self.files.cert_file.name)
        return True

    # -- gRPC --------------------------------------------------------------------------

    def _grpc_configuration(self) -> grpc.ServerCertificateConfiguration:
        material = self._material
        return grpc.ssl_server_certificate_configuration(
            [(material.private_key, material.cert_chain)],
            root_certificates=material.client_ca,
        )

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that pick up reloads before each new handshake."""
        served = self.version

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal served
            if self.version == served:
                return None  # keep the current configuration
            served = self.version
            return self._grpc_configuration()

        return grpc.dynamic_ssl_server_credentials(
            self._grpc_configuration(), fetch, require_client_authentication=self.mutual
        )

    # -- HTTP --------------------------------------------------------------------------

    def server_context(self) -> ssl.SSLContext:
        """The front context of the HTTP listener; new connections move to the current one."""
        front = _server_context(self.files, self._material.client_ca)

        def to_current(
            connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, ctx: ssl.SSLContext
        ) -> None:
            connection.context = self._material.context

        front.sni_callback = to_current
        return front


def tls_source(settings: GatewaySettings) -> TLSSource | None:
    """The TLS source the settings describe, or None for plaintext servers.

    Raises:
        ValueError: The files do not load.
    """
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    return TLSSource(
        TLSFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    )


def triton_channel_credentials(settings: GatewaySettings) -> grpc.ChannelCredentials | None:
    """Credentials of the gRPC channels to Triton (None: plaintext, ``triton_tls`` off).

    Raises:
        ValueError: A configured file cannot be read.
    """
    if not settings.triton_tls:
        return None
    ca = settings.triton_tls_ca_file
    cert, key = settings.triton_tls_cert_file, settings.triton_tls_key_file
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "Triton CA file") if ca is not None else None,
        private_key=_read(key, "Triton client key file") if key is not None else None,
        certificate_chain=_read(cert, "Triton client certificate") if cert is not None else None,
    )
