"""Golden files for the edge roles, and every one of them through `envoy --mode validate`.

Same conventions as test_golden.py (`pytest tests/golden --update-golden` rewrites edge_out/ and
deletes stale files). The validation bootstrap is made as in test_envoy_validation.py: EDS
clusters become STATIC with their assignment, RDS references are inlined; edge clusters are
STATIC already; SDS references name the static secrets (the SDS output); a mobile runtime layer
becomes the bootstrap's static runtime layer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshplane.model import ProxyGroup
from meshplane.xds.snapshot import Snapshot
from meshplane.xds.translate import Translation, translate
from meshplane.xds.types import TypeUrl
from tests.golden.edge_cases import EDGE_CASES, EdgeCase, edge_label
from tests.golden.test_envoy_validation import envoy_validate, static_sds
from tests.golden.test_golden import render

OUT = Path(__file__).parent / "edge_out"
PARAMS = [
    pytest.param(case, group, id=f"{case.name}.{edge_label(group)}") for case in EDGE_CASES for group in case.groups
]
HCM = http_connection_manager_pb2.HttpConnectionManager


def golden_path(case: EdgeCase, group: ProxyGroup, kind: str) -> Path:
    return OUT / f"{case.name}.{edge_label(group)}.{kind}.yaml"


@pytest.mark.parametrize(("case", "group"), PARAMS)
def test_edge_translation_matches_golden_files(case: EdgeCase, group: ProxyGroup, update_golden: bool) -> None:
    assert case.mesh.problems() == []
    translation = translate(case.mesh, group)
    # What the publisher checks before it publishes: a snapshot with problems never reaches a proxy.
    assert Snapshot.of(translation.resources).consistency_problems() == []
    rendered = render(translation)
    if update_golden:
        OUT.mkdir(exist_ok=True)
        for kind, text in rendered.items():
            golden_path(case, group, kind).write_text(text)
    for kind, text in rendered.items():
        path = golden_path(case, group, kind)
        assert path.exists(), f"{path.name} is missing; run pytest --update-golden"
        assert text == path.read_text(), f"{path.name} differs; run pytest --update-golden and review the diff"


def test_no_stale_edge_golden_files(update_golden: bool) -> None:
    expected = {
        golden_path(case, group, type_url.short.lower())
        for case in EDGE_CASES
        for group in case.groups
        for type_url in TypeUrl
    }
    stale = sorted(set(OUT.glob("*.yaml")) - expected)
    if update_golden:
        for path in stale:
            path.unlink()
    else:
        assert stale == []


def edge_bootstrap(translation: Translation) -> bootstrap_pb2.Bootstrap:
    resources = translation.resources
    endpoints = {cla.cluster_name: cla for cla in resources[TypeUrl.ENDPOINT]}
    routes = {config.name: config for config in resources[TypeUrl.ROUTE]}
    bootstrap = bootstrap_pb2.Bootstrap()
    bootstrap.node.id = "edge-golden-validation"
    for original in resources[TypeUrl.CLUSTER]:
        cluster = cluster_pb2.Cluster()
        cluster.CopyFrom(original)
        if cluster.type == cluster_pb2.Cluster.EDS:
            cluster.load_assignment.CopyFrom(endpoints[cluster.eds_cluster_config.service_name])
            cluster.ClearField("eds_cluster_config")
            cluster.type = cluster_pb2.Cluster.STATIC
        assert cluster.type == cluster_pb2.Cluster.STATIC
        static_sds(cluster)
        combined_static_sds(cluster)
        bootstrap.static_resources.clusters.append(cluster)
    for original in resources[TypeUrl.LISTENER]:
        listener = listener_pb2.Listener()
        listener.CopyFrom(original)
        for chain in listener.filter_chains:
            listener_static_sds(chain)
            for network_filter in chain.filters:
                if network_filter.typed_config.Is(HCM.DESCRIPTOR):
                    hcm = HCM()
                    network_filter.typed_config.Unpack(hcm)
                    hcm.route_config.CopyFrom(routes[hcm.rds.route_config_name])
                    network_filter.typed_config.Pack(hcm)
        bootstrap.static_resources.listeners.append(listener)
    bootstrap.static_resources.secrets.extend(resources[TypeUrl.SECRET])
    for runtime in resources[TypeUrl.RUNTIME]:
        layer = bootstrap.layered_runtime.layers.add(name=runtime.name)
        layer.static_layer.CopyFrom(runtime.layer)
    return bootstrap


def combined_static_sds(cluster: cluster_pb2.Cluster) -> None:
    """A combined validation context's SDS reference (an edge gateway's device clusters) made to
    name `static_resources.secrets` too."""
    if not cluster.HasField("transport_socket"):
        return
    tls = tls_pb2.UpstreamTlsContext()
    assert cluster.transport_socket.typed_config.Unpack(tls)
    combined = tls.common_tls_context.combined_validation_context
    if combined.HasField("validation_context_sds_secret_config"):
        combined.validation_context_sds_secret_config.ClearField("sds_config")
        cluster.transport_socket.typed_config.Pack(tls)


def listener_static_sds(chain: listener_components_pb2.FilterChain) -> None:
    """Makes a filter chain's TLS (an edge gateway's device listener) name `static_resources.secrets`,
    as `static_sds` does for clusters."""
    if not chain.HasField("transport_socket"):
        return
    tls = tls_pb2.DownstreamTlsContext()
    assert chain.transport_socket.typed_config.Unpack(tls)
    common = tls.common_tls_context
    if common.HasField("validation_context_sds_secret_config"):
        common.validation_context_sds_secret_config.ClearField("sds_config")
    for config in common.tls_certificate_sds_secret_configs:
        config.ClearField("sds_config")
    chain.transport_socket.typed_config.Pack(tls)


@pytest.mark.parametrize(("case", "group"), PARAMS)
def test_envoy_accepts_edge_translation(case: EdgeCase, group: ProxyGroup, tmp_path: Path) -> None:
    translation = translate(case.mesh, group)
    bootstrap = edge_bootstrap(translation)
    result = envoy_validate(bootstrap, tmp_path / f"{case.name}.{edge_label(group)}.json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    assert "deprecated" not in (result.stdout + result.stderr).lower()
