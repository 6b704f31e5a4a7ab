"""Secrets (SDS): every TLS certificate and CA bundle of the mesh, by name, PEM inlined.

Owns the shape of the Secret resources that clusters' SDS configs name. SDS is served per name,
so a proxy receives only the secrets it asks for. Must stay pure and never log PEM text.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from meshplane.model import Mesh


def build_secrets(mesh: Mesh) -> list[Any]:
    """A Secret per TlsCertificate (chain and key) and per TrustBundle (trusted CAs)."""
    secrets = [
        secret_pb2.Secret(
            name=certificate.name,
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_string=certificate.certificate_chain),
                private_key=base_pb2.DataSource(inline_string=certificate.private_key),
            ),
        )
        for certificate in mesh.certificates
    ]
    secrets += [
        secret_pb2.Secret(
            name=bundle.name,
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_string=bundle.ca_certificates),
            ),
        )
        for bundle in mesh.trust_bundles
    ]
    return secrets
