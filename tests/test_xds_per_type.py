"""Proxies on the per-type xDS services instead of ADS (`meshplane bootstrap --transport per-type`).

- A real Envoy from a rendered per-type bootstrap, over SotW and over Delta, gets every type on
  its own service and rejects nothing: CDS and LDS from the bootstrap; EDS, RDS and SDS from the
  sources meshplane sends, which name the API type and xDS cluster of node.metadata (an `ads: {}`
  source is NACKed by an Envoy without ADS); traffic flows to a plain and to an mTLS service.
- A mobile Envoy gets its runtime layer over the per-type RTDS service, and its clusters.
- The transport is part of the proxy group: an ADS proxy and a per-type one of the same kind get
  different snapshots, and the group's name says which.
- Bad per-type metadata ends the stream with INVALID_ARGUMENT and the reason.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.runtime.v3 import rtds_pb2, rtds_pb2_grpc

from meshplane.model import ProxyGroup, ProxyRole
from meshplane.model.proxy import XdsApiType
from meshplane.xds import names
from meshplane.xds.snapshot import Snapshot
from meshplane.xds.translate import translate
from meshplane.xds.types import TypeUrl
from tests.envoy_harness import Envoy
from tests.golden.edge_cases import fleet
from tests.test_bootstrap import Plane, holds_runtime_layer, running_plane, serves_web, start_tls_backend
from tests.tls_certs import Pair, mesh_certificates
from tests.xds_fixtures import CDS, AdsStream, XdsHarness, node, request, start_harness


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    return mesh_certificates(tmp_path_factory.mktemp("certificates"), client="sidecar")


def tls_policy(certificates: dict[str, Pair], port: int) -> str:
    """`secure`: a service behind mutual TLS, whose CA bundle and client certificate go over SDS."""
    client = certificates["client"]
    return f"""secrets:
  - {{name: per-type-ca, ca_file: {certificates["ca"].certificate}}}
  - {{name: per-type-client, certificate_file: {client.certificate}, key_file: {client.key}}}
services:
  - name: secure
    port: 8443
    endpoints: [{{address: 127.0.0.1, port: {port}}}]
    tls: {{trust: per-type-ca, sni: localhost, client_certificate: per-type-client}}
"""


async def rejected_updates(envoy: Envoy) -> dict[str, int]:
    """Every xDS `update_rejected` counter of the Envoy that is not zero (none: nothing NACKed)."""
    data = json.loads(await envoy.admin("/stats?format=json&filter=update_rejected"))
    return {s["name"]: s["value"] for s in data.get("stats", []) if s.get("value")}


def api_config_source(source: dict[str, Any]) -> tuple[str, str]:
    """(api_type, cluster) of a ConfigSource as Envoy's config_dump shows it; fails on `ads`."""
    assert "ads" not in source, source
    api = source["api_config_source"]
    assert api["transport_api_version"] == "V3"
    [service] = api["grpc_services"]
    return api["api_type"], service["envoy_grpc"]["cluster_name"]


def streams_of(plane: Plane, node_id: str) -> dict[str, set[str]]:
    """The types the node's open streams carried, by stream kind (`sotw` → {CDS, …})."""
    found: dict[str, set[str]] = {}
    for track in plane.control.registry.streams():
        if track.node_id == node_id:
            found.setdefault(track.kind.value, set()).update(t.short for t in track.types)
    return found


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
@pytest.mark.parametrize("sotw", [False, True], ids=["delta", "sotw"])
async def test_an_envoy_on_the_per_type_services_gets_every_type(
    tmp_path: Path, certificates: dict[str, Pair], sotw: bool
) -> None:
    secure = await start_tls_backend("secure", certificates)
    try:
        policy = tls_policy(certificates, secure.addresses[0][1])
        # mTLS to the control plane, as production runs it: meshplane serves private keys only to
        # authenticated proxies, and a client certificate covers every per-type stream alike.
        ca, server, client = certificates["ca"], certificates["server"], certificates["client"]
        tls = {"tls_ca": str(ca.certificate), "tls_cert": str(client.certificate), "tls_key": str(client.key)}
        async with running_plane(
            tmp_path, extra_policy=policy, tls_cert=server.certificate, tls_key=server.key, client_ca=ca.certificate
        ) as plane:
            envoy = await plane.envoy(plane.options("sidecar", "per-type-1", sotw=sotw, transport="per-type", **tls))
            # CDS, EDS, LDS, RDS: a request to `web` answered by its backend through the sidecar.
            await envoy.eventually(serves_web(envoy), "web through a per-type Envoy")

            # SDS: the mTLS service answers only a client presenting the certificate sent over SDS.
            async def through_tls() -> bool:
                status, body, _ = await envoy.request("secure", "/rides")
                return status == 200 and body == "secure /rides\n"

            await envoy.eventually(through_tls, "the mTLS service through a per-type Envoy")

            expected = ("GRPC" if sotw else "DELTA_GRPC", "meshplane")
            clusters = await envoy.config_dump("dynamic_active_clusters")
            eds = {
                entry["cluster"]["name"]: api_config_source(entry["cluster"]["eds_cluster_config"]["eds_config"])
                for entry in clusters["configs"]
            }
            assert set(eds.values()) == {expected}, eds
            [secure_cluster] = [e["cluster"] for e in clusters["configs"] if e["cluster"]["name"].startswith("secure")]
            context = secure_cluster["transport_socket"]["typed_config"]["common_tls_context"]
            sds = [context["validation_context_sds_secret_config"], *context["tls_certificate_sds_secret_configs"]]
            assert [api_config_source(config["sds_config"]) for config in sds] == [expected, expected]
            listeners = await envoy.config_dump("dynamic_listeners")
            [listener] = listeners["configs"]
            [manager] = listener["active_state"]["listener"]["filter_chains"][0]["filters"]
            assert api_config_source(manager["typed_config"]["rds"]["config_source"]) == expected
            secrets = await envoy.config_dump("dynamic_active_secrets")
            assert sorted(entry["name"] for entry in secrets["configs"]) == ["per-type-ca", "per-type-client"]

            # Nothing rejected, on either side; every type came on its own per-type service.
            assert await rejected_updates(envoy) == {}
            assert list(plane.control.registry.recent_nacks) == []
            kind = "sotw" if sotw else "delta"
            streams = streams_of(plane, "per-type-1")
            assert set(streams) == {kind}, streams
            assert streams[kind] == {"CDS", "EDS", "LDS", "RDS", "SDS"}
            [group] = {t.group for t in plane.control.registry.streams() if t.node_id == "per-type-1"}
            assert (group.xds_api_type, group.xds_cluster) == (XdsApiType(expected[0].lower()), "meshplane")
            assert f"per-type {expected[0].lower()} via meshplane" in str(group)
    finally:
        await secure.cleanup()


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
@pytest.mark.parametrize("sotw", [False, True], ids=["delta", "sotw"])
async def test_a_mobile_envoy_gets_its_runtime_layer_over_the_per_type_rtds_service(tmp_path: Path, sotw: bool) -> None:
    async with running_plane(tmp_path, sites=True) as plane:
        mobile = await plane.envoy(plane.options("mobile", "app-per-type", site="gym", sotw=sotw, transport="per-type"))

        await holds_runtime_layer(mobile, "gym", "the RTDS service")
        assert await rejected_updates(mobile) == {}
        assert list(plane.control.registry.recent_nacks) == []
        kind = "sotw" if sotw else "delta"
        assert streams_of(plane, "app-per-type") == {kind: {"CDS", "RTDS"}}


# --- the group and the node contract, over the wire -----------------------------------------------


def per_type_node(node_id: str, role: str = "sidecar", **metadata: Any) -> Any:
    found = node(node_id, role=role)
    found.metadata.update(metadata)
    return found


async def first_clusters(channel: grpc.aio.Channel, with_node: Any) -> tuple[AdsStream, list[cluster_pb2.Cluster]]:
    """A SotW ADS stream of `with_node` (left open: its group lives while it does) and its first clusters."""
    stream = AdsStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources())
    await stream.send(request(CDS, with_node=with_node))
    response = await stream.recv()
    clusters = []
    for packed in response.resources:
        cluster = cluster_pb2.Cluster()
        assert packed.Unpack(cluster)
        clusters.append(cluster)
    return stream, clusters


def eds_sources(clusters: list[cluster_pb2.Cluster]) -> set[tuple[str, int, str]]:
    """Each cluster's EDS source as (kind, api_type, cluster): ("ads", 0, "") for `ads: {}`."""
    found = set()
    for cluster in clusters:
        source = cluster.eds_cluster_config.eds_config
        api = source.api_config_source
        named = api.grpc_services[0].envoy_grpc.cluster_name if api.grpc_services else ""
        found.add((source.WhichOneof("config_source_specifier"), api.api_type, named))
    return found


@pytest.mark.xdist_group("envoy")
async def test_proxies_differing_only_in_transport_get_their_own_snapshots(tmp_path: Path) -> None:
    """Three proxies alike but for their transport: three groups, three snapshots, and each
    cluster's EDS source where that proxy asked for it."""
    nodes = {
        "on-ads": per_type_node("on-ads"),
        "on-sotw": per_type_node("on-sotw", xds_api_type="grpc", xds_cluster="xds_cluster"),
        "on-delta": per_type_node("on-delta", xds_api_type="delta_grpc", xds_cluster="meshplane"),
    }
    async with (
        running_plane(tmp_path) as plane,
        grpc.aio.insecure_channel(f"127.0.0.1:{plane.control.xds_port}") as channel,
    ):
        opened = {node_id: await first_clusters(channel, found) for node_id, found in nodes.items()}
        groups = {track.node_id: track.group for track in plane.control.registry.streams()}
        for stream, _ in opened.values():
            await stream.close()
        # An operator previews a per-type group by its fields, as `meshplane config --param` does.
        query = "role=sidecar&region=&zone=&xds_api_type=delta_grpc&xds_cluster=meshplane"
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{plane.control.status_port}/config?{query}") as response,
        ):
            assert response.status == 200
            preview = await response.json()
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://127.0.0.1:{plane.control.status_port}/config?role=grpc&xds_api_type=grpc&xds_cluster=m"
            ) as response,
        ):
            assert response.status == 400
            assert "proxyless gRPC speaks ADS only" in (await response.json())["error"]
    api = config_source_pb2.ApiConfigSource
    assert eds_sources(opened["on-ads"][1]) == {("ads", 0, "")}
    assert eds_sources(opened["on-sotw"][1]) == {("api_config_source", api.GRPC, "xds_cluster")}
    assert eds_sources(opened["on-delta"][1]) == {("api_config_source", api.DELTA_GRPC, "meshplane")}
    assert {node_id: str(group) for node_id, group in groups.items()} == {
        "on-ads": "sidecar@-",
        "on-sotw": "sidecar@- per-type grpc via xds_cluster",
        "on-delta": "sidecar@- per-type delta_grpc via meshplane",
    }
    assert preview["group"] == "sidecar@- per-type delta_grpc via meshplane"
    assert (preview["group_fields"]["xds_api_type"], preview["group_fields"]["xds_cluster"]) == (
        "delta_grpc",
        "meshplane",
    )
    [previewed] = preview["types"]["CDS"]["resources"]
    eds_config = previewed["resource"]["eds_cluster_config"]["eds_config"]
    assert eds_config["api_config_source"]["api_type"] == "DELTA_GRPC"


@pytest.fixture
async def xds() -> AsyncIterator[XdsHarness]:
    async for harness in start_harness():
        yield harness


@pytest.mark.parametrize(
    ("role", "metadata", "reason"),
    [
        pytest.param("sidecar", {"xds_api_type": "rest"}, "metadata.xds_api_type 'rest' is not", id="unknown-type"),
        pytest.param("sidecar", {"xds_api_type": "GRPC", "xds_cluster": "m"}, "one of: ads, grpc", id="upper-case"),
        pytest.param("sidecar", {"xds_api_type": "grpc"}, "metadata.xds_cluster absent", id="no-cluster"),
        pytest.param("sidecar", {"xds_cluster": "meshplane"}, "metadata.xds_api_type absent", id="no-type"),
        pytest.param("sidecar", {"xds_api_type": "ads", "xds_cluster": "meshplane"}, "not ads", id="cluster-with-ads"),
        pytest.param("sidecar", {"xds_api_type": "grpc", "xds_cluster": "a b"}, "xds_cluster 'a b' is not", id="space"),
        pytest.param("sidecar", {"xds_api_type": "grpc", "xds_cluster": "x" * 129}, "1-128 letters", id="too-long"),
        pytest.param(
            "sidecar", {"xds_api_type": "delta_grpc", "xds_cluster": ""}, "xds_cluster '' is not", id="empty-cluster"
        ),
        pytest.param("sidecar", {"xds_api_type": 1.0, "xds_cluster": "m"}, "must be a string", id="number"),
        pytest.param(
            "grpc", {"xds_api_type": "grpc", "xds_cluster": "meshplane"}, "speaks ADS only", id="proxyless-grpc"
        ),
    ],
)
async def test_bad_per_type_metadata_is_refused_with_the_reason(
    xds: XdsHarness, role: str, metadata: dict[str, Any], reason: str
) -> None:
    stream = xds.ads()
    await stream.send(request(CDS, with_node=per_type_node("bad", role=role, **metadata)))
    code, details = await stream.status()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in details
    assert len(details) < 400  # a 129-character name is not echoed whole


async def test_the_per_type_rtds_service_answers_a_mobile_node(xds: XdsHarness) -> None:
    """RuntimeDiscoveryService exists: a per-type stream binds its node's group and is answered."""
    xds.current = Snapshot.of(translate(fleet(), ProxyGroup(ProxyRole.MOBILE, site="gym-munich")).resources)
    mobile = per_type_node("app-1", role="mobile", site="gym-munich", xds_api_type="grpc", xds_cluster="meshplane")
    stream = AdsStream(rtds_pb2_grpc.RuntimeDiscoveryServiceStub(xds.channel).StreamRuntime())
    await stream.send(request(TypeUrl.RUNTIME, [names.MOBILE_RUNTIME_NAME], with_node=mobile))
    answer = await stream.recv()
    assert answer.type_url == TypeUrl.RUNTIME.value
    runtime = rtds_pb2.Runtime()
    [packed] = answer.resources
    assert packed.Unpack(runtime)
    assert runtime.name == names.MOBILE_RUNTIME_NAME
    await stream.close()
    [track] = xds.registry.streams()
    assert (track.kind.value, str(track.group)) == ("sotw", "mobile@-#gym-munich per-type grpc via meshplane")
