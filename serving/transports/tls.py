"""TLS material as every transport takes it: PEM bytes read once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from mimo.serving.settings import ServerSettings


@dataclass(frozen=True)
class TlsMaterial:
    key: bytes
    cert: bytes  # the certificate chain
    client_ca: bytes | None  # mutual TLS: client certificates must be signed by this CA


def tls_material(settings: ServerSettings) -> TlsMaterial | None:
    """The server's TLS material, or None without TLS."""
    if not settings.tls_cert:
        return None
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return TlsMaterial(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes(), client_ca)
