"""Private keys and unauthenticated streams: which secrets such a stream is not given.

Without client authentication on the xDS port (no `--client-ca`, no `--xds-tokens`) a stream has
no identity: anyone who reaches the port may claim to be a sidecar or an edge gateway. Such a
stream is given every resource its group gets except the TLS certificate secrets that carry a
private key (SDS `Secret`s with a `tls_certificate` holding `private_key`, `pkcs12` or a
`private_key_provider`), unless the operator opted in with
`--insecure-serve-keys-without-client-auth`. CA bundles and every other type are served as usual.

What "withheld" means on the wire: the secret is left out of the SDS responses as if it did not
exist yet, never announced as removed. Envoy then keeps the cluster (or listener) that names it
warming, so it never connects without its client certificate, and ACKs and serves the rest of its
config. A Delta removal would make Envoy finish warming without the certificate (it ignores the
removal of an SDS secret and marks it ready), so none is ever sent for it. The
server records the names on the stream (`/status`: `keys_withheld`), logs them once per stream and
counts them (`meshplane_xds_secrets_withheld_total`).

Must not decide content (the snapshot's) or identity (identity.py): only this one filter.
"""

from __future__ import annotations

from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from meshplane.xds.snapshot import Snapshot
from meshplane.xds.types import TypeUrl

WITHHELD_REASON = (
    "the stream is not authenticated (the xDS port has neither --client-ca nor --xds-tokens), so secrets"
    " holding a private key are withheld (--insecure-serve-keys-without-client-auth serves them anyway)"
)


def carries_private_key(secret: object) -> bool:
    """True for an SDS Secret whose TLS certificate holds key material (inline, file, PKCS#12 or a provider)."""
    if not isinstance(secret, secret_pb2.Secret) or not secret.HasField("tls_certificate"):
        return False
    certificate = secret.tls_certificate
    return any(certificate.HasField(name) for name in ("private_key", "pkcs12", "private_key_provider"))


def private_key_secrets(snapshot: Snapshot) -> frozenset[str]:
    """The names of the snapshot's secrets that carry a private key. (The server asks once per
    snapshot: `ResponseCache.private_key_secrets` remembers the answer.)"""
    secrets = snapshot.of_type(TypeUrl.SECRET).by_name.values()
    return frozenset(resource.name for resource in secrets if carries_private_key(resource.message))
