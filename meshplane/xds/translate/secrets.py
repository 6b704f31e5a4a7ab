"""Secrets (SDS): the TLS certificates and CA bundles a proxy group's clusters use, PEM inlined.

Owns the shape of the Secret resources that clusters' SDS configs name, and which of them a group
gets: exactly the names its own built clusters ask for over SDS (`xds.references.sds_secret_names`:
the upstream TLS contexts' `tls_certificate_sds_secret_configs` and
`validation_context_sds_secret_config`, read as the snapshot's consistency check reads them).
Deriving them from the clusters, for every role alike, keeps the two from disagreeing: a group
never lacks a secret its clusters wait for (which would leave them warming, and the snapshot
refused), and never gets one it has no use for, so a proxy cannot fetch a private key by asking
for its name. Roles whose clusters name no SDS secret get none: the grpc role (gRPC cannot take
SDS; its clusters name certificate providers) and the device and mobile roles (their clusters
carry no upstream TLS, see `edge_device`). The edge gateway's device TLS secrets (its site's
certificate, the devices' validation context, the device CA) are built by `edge_gateway` with the
one-secret builders here (`certificate_secret`, `trust_secret`). Must stay pure and never log PEM text.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from meshplane.model import Mesh, TlsCertificate
from meshplane.xds.references import sds_secret_names


def build_secrets(mesh: Mesh, clusters: Iterable[Any]) -> list[Any]:
    """A Secret per TlsCertificate (chain and key) and per TrustBundle (trusted CAs) that `clusters`
    name over SDS; nothing else. (`Mesh.problems()` has checked that every name a service's TLS
    uses exists, as one kind or the other: the two share one namespace.)"""
    used = sds_secret_names(clusters)
    secrets = [certificate_secret(certificate) for certificate in mesh.certificates if certificate.name in used]
    secrets += [
        trust_secret(bundle.name, bundle.ca_certificates) for bundle in mesh.trust_bundles if bundle.name in used
    ]
    return secrets


def certificate_secret(certificate: TlsCertificate) -> Any:
    """`certificate` as a Secret: its chain and key, inline."""
    return secret_pb2.Secret(
        name=certificate.name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_string=certificate.certificate_chain),
            private_key=base_pb2.DataSource(inline_string=certificate.private_key),
        ),
    )


def trust_secret(name: str, ca_certificates: str) -> Any:
    """A Secret `name` holding the validation context that trusts `ca_certificates` (PEM)."""
    return secret_pb2.Secret(
        name=name,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_string=ca_certificates),
        ),
    )
