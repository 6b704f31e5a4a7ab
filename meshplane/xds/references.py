"""The names one Envoy resource asks for from another: a cluster's SDS secrets, a listener's RDS routes.

The consumer side of the contracts in `names.py`: read back from built resources, never from the
model. The secrets translator uses `sds_secret_names` to give a group exactly the secrets its
clusters name, and a snapshot's consistency check uses both to refuse a snapshot that names what it
lacks; one reading serves both, so the two never disagree. Pure: imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

_UPSTREAM_TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def sds_secret_names(clusters: Iterable[Any]) -> frozenset[str]:
    """Every Secret name the clusters' upstream TLS asks meshplane for over SDS (certificates and
    validation contexts), from `transport_socket` and `transport_socket_matches` alike. A secret
    read from a file on the proxy (`path_config_source`: a device's own certificate) is not one."""
    names: set[str] = set()
    for cluster in clusters:
        sockets = [cluster.transport_socket] if cluster.HasField("transport_socket") else []
        sockets += [match.transport_socket for match in cluster.transport_socket_matches]
        for socket in sockets:
            if socket.typed_config.type_url != _UPSTREAM_TLS_TYPE:
                continue
            context = tls_pb2.UpstreamTlsContext()
            socket.typed_config.Unpack(context)
            common = context.common_tls_context
            names.update(config.name for config in common.tls_certificate_sds_secret_configs if not _from_file(config))
            if common.HasField("validation_context_sds_secret_config") and not _from_file(
                common.validation_context_sds_secret_config
            ):
                names.add(common.validation_context_sds_secret_config.name)
    return frozenset(names)


def _from_file(config: Any) -> bool:
    return bool(config.sds_config.HasField("path_config_source"))


def rds_names(listener: listener_pb2.Listener) -> list[str]:
    """The RouteConfiguration names a listener's HTTP connection managers ask for over RDS."""
    configs = []
    if listener.HasField("api_listener"):
        configs.append(listener.api_listener.api_listener)
    for chain in [
        *listener.filter_chains,
        *([listener.default_filter_chain] if listener.HasField("default_filter_chain") else []),
    ]:
        configs += [f.typed_config for f in chain.filters if f.HasField("typed_config")]
    names = []
    for packed in configs:
        if packed.type_url != _HCM_TYPE:
            continue
        hcm = http_connection_manager_pb2.HttpConnectionManager()
        packed.Unpack(hcm)
        if hcm.HasField("rds"):
            names.append(hcm.rds.route_config_name)
    return names
