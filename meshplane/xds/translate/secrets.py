"""Secrets (SDS): the TLS certificates and CA bundles a proxy group's clusters use, PEM inlined.

Owns the shape of the Secret resources that clusters' SDS configs name. A group is given only the
secrets its own configuration references (services' `tls.trust` and `tls.client_certificate`), so
a proxy cannot fetch a private key it has no use for by asking for its name; the grpc role, which
cannot take SDS (it uses certificate providers), is given none. Must stay pure and never log PEM text.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from meshplane.model import Mesh, ProxyGroup, ProxyRole


def referenced_secret_names(mesh: Mesh) -> frozenset[str]:
    """Every secret name the mesh's services use for upstream TLS."""
    names: set[str] = set()
    for service in mesh.services:
        if service.tls is not None:
            names.add(service.tls.trust)
            if service.tls.client_certificate:
                names.add(service.tls.client_certificate)
    return frozenset(names)


def build_secrets(mesh: Mesh, group: ProxyGroup) -> list[Any]:
    """A Secret per TlsCertificate (chain and key) and per TrustBundle (trusted CAs) that `group` uses."""
    if group.role is ProxyRole.GRPC:
        return []
    used = referenced_secret_names(mesh)
    secrets = [
        secret_pb2.Secret(
            name=certificate.name,
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_string=certificate.certificate_chain),
                private_key=base_pb2.DataSource(inline_string=certificate.private_key),
            ),
        )
        for certificate in mesh.certificates
        if certificate.name in used
    ]
    secrets += [
        secret_pb2.Secret(
            name=bundle.name,
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_string=bundle.ca_certificates),
            ),
        )
        for bundle in mesh.trust_bundles
        if bundle.name in used
    ]
    return secrets
