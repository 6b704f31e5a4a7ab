"""The Kubernetes source end to end against the fake API server: every behaviour docs/kubernetes.md promises.

The source watches through the real `kubernetes_asyncio` client; the fake speaks the API's wire
protocol. Each test waits for the source's content to show a condition (with a deadline).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from meshplane.discovery.kubernetes import KubernetesSource
from meshplane.discovery.kubernetes_watching import ENDPOINT_SLICES_V1BETA1
from meshplane.model import EndpointHealth, Locality, Service
from tests.k8s import objects as k
from tests.k8s.conftest import FAST_BACKOFF, SourceFactory, client_for, wait_for
from tests.k8s.fake_apiserver import FakeApiServer


def by_name(source: KubernetesSource) -> dict[str, Service]:
    return {f"{s.namespace}/{s.name}": s for s in source.content().services}


def addresses(source: KubernetesSource, name: str = "default/web") -> list[str]:
    service = by_name(source).get(name)
    return [] if service is None else [e.address for e in service.endpoints]


def web_slice(*endpoints: dict[str, Any], name: str = "web-1") -> dict[str, Any]:
    return k.endpoint_slice(name, "web", endpoints=list(endpoints))


async def synced_source(run_source: SourceFactory, **kwargs: object) -> KubernetesSource:
    source = await run_source(**kwargs)
    await wait_for(lambda: source.synced, what="the first full list")
    return source


async def test_initial_sync(apiserver: FakeApiServer, run_source: SourceFactory) -> None:
    apiserver.apply(k.service("web", ports=[k.port("http", 80), k.port("grpc", 9090, app_protocol="grpc")]))
    apiserver.apply(k.endpoint_slice("web-1", "web", endpoints=[k.endpoint("10.0.0.1"), k.endpoint("10.0.0.2")],
                                     ports=[("http", 8080), ("grpc", 9000)]))  # fmt: skip
    changes: list[int] = []
    source = await synced_source(run_source, on_change=lambda: changes.append(1))
    (web,) = source.content().services
    assert [(e.address, e.port, e.port_name) for e in web.endpoints] == [
        ("10.0.0.1", 8080, "http"),
        ("10.0.0.1", 9000, "grpc"),
        ("10.0.0.2", 8080, "http"),
        ("10.0.0.2", 9000, "grpc"),
    ]
    assert changes  # told once synced
    status = source.status
    assert status.synced
    assert status.counts["services"] == 1
    assert status.counts["endpoint_slices"] == 1


async def test_synced_only_after_services_and_slices_listed(
    apiserver: FakeApiServer, run_source: SourceFactory
) -> None:
    apiserver.apply(k.service("web"))
    apiserver.fail_next_requests(10**6, 503, path_contains="endpointslices")
    source = await run_source()
    await wait_for(lambda: any(w.synced for w in source.watchers), what="services listed")
    await wait_for(lambda: any("503" in e for e in source.status.errors), what="the slice error in the status")
    assert not source.synced
    apiserver.clear_failures()
    await wait_for(lambda: source.synced)


async def test_scale_up_and_down(apiserver: FakeApiServer, run_source: SourceFactory) -> None:
    apiserver.apply(k.service("web"))
    apiserver.apply(web_slice(k.endpoint("10.0.0.1")))
    source = await synced_source(run_source)
    apiserver.apply(web_slice(*(k.endpoint(f"10.0.0.{i}") for i in range(1, 6))))
    await wait_for(lambda: len(addresses(source)) == 5)
    apiserver.apply(web_slice(k.endpoint("10.0.0.3")))
    await wait_for(lambda: addresses(source) == ["10.0.0.3"])
    apiserver.apply(web_slice())
    await wait_for(lambda: addresses(source) == [])
    assert "default/web" in by_name(source)  # a service scaled to zero is still a service


async def test_readiness_flips(apiserver: FakeApiServer, run_source: SourceFactory) -> None:
    apiserver.apply(k.service("web"))
    apiserver.apply(web_slice(k.endpoint("10.0.0.1", ready=False), k.endpoint("10.0.0.2")))
    source = await synced_source(run_source)
    assert addresses(source) == ["10.0.0.2"]  # a pod that is not ready gets no traffic
    apiserver.apply(web_slice(k.endpoint("10.0.0.1", ready=True), k.endpoint("10.0.0.2")))
    await wait_for(lambda: addresses(source) == ["10.0.0.1", "10.0.0.2"])
    assert {e.health for e in by_name(source)["default/web"].endpoints} == {EndpointHealth.READY}
    apiserver.apply(web_slice(k.endpoint("10.0.0.1", ready=False), k.endpoint("10.0.0.2")))
    await wait_for(lambda: addresses(source) == ["10.0.0.2"])


async def test_terminating_endpoints_drain_then_leave(apiserver: FakeApiServer, run_source: SourceFactory) -> None:
    apiserver.apply(k.service("web"))
    apiserver.apply(web_slice(k.endpoint("10.0.0.1"), k.endpoint("10.0.0.2")))
    source = await synced_source(run_source)
    apiserver.apply(
        web_slice(k.endpoint("10.0.0.1"), k.endpoint("10.0.0.2", ready=False, serving=True, terminating=True))
    )

    def health() -> dict[str, EndpointHealth]:
        return {e.address: e.health for e in by_name(source)["default/web"].endpoints}

    await wait_for(lambda: health() == {"10.0.0.1": EndpointHealth.READY, "10.0.0.2": EndpointHealth.TERMINATING})
    apiserver.apply(
        web_slice(k.endpoint("10.0.0.1"), k.endpoint("10.0.0.2", ready=False, serving=False, terminating=True))
    )
    await wait_for(lambda: health() == {"10.0.0.1": EndpointHealth.READY})


async def test_zone_moves(apiserver: FakeApiServer, run_source: SourceFactory) -> None:
    apiserver.apply(k.service("web"))
    apiserver.apply(web_slice(k.endpoint("10.0.0.1", zone="eu-a")))
    source = await synced_source(run_source)
    await wait_for(lambda: by_name(source)["default/web"].endpoints[0].locality == Locality(zone="eu-a"))
    apiserver.apply(web_slice(k.endpoint("10.0.0.1", zone="eu-b")))
    await wait_for(lambda: by_name(source)["default/web"].endpoints[0].locality == Locality(zone="eu-b"))


async def test_slices_added_and_deleted(apiserver: FakeApiServer, run_source: SourceFactory) -> None:
    apiserver.apply(k.service("web"))
    apiserver.apply(web_slice(k.endpoint("10.0.0.1"), name="web-a"))
    source = await synced_source(run_source)
    apiserver.apply(web_slice(k.endpoint("10.0.0.2"), name="web-b"))
    apiserver.apply(k.endpoint_slice("web-v6", "web", endpoints=[k.endpoint("fd00::2")], address_type="IPv6"))
    await wait_for(lambda: addresses(source) == ["10.0.0.1", "10.0.0.2", "fd00::2"])
    apiserver.delete("EndpointSlice", "default", "web-a")
    await wait_for(lambda: addresses(source) == ["10.0.0.2", "fd00::2"])
    # A slice re-labelled to another service moves its endpoints there.
    apiserver.apply(k.service("api"))
    moved = web_slice(k.endpoint("10.0.0.2"), name="web-b")
    moved["metadata"]["labels"]["kubernetes.io/service-name"] = "api"
    apiserver.apply(moved)
    await wait_for(lambda: addresses(source) == ["fd00::2"] and addresses(source, "default/api") == ["10.0.0.2"])


async def test_a_service_deleted_while_its_slices_linger(apiserver: FakeApiServer, run_source: SourceFactory) -> None:
    apiserver.apply(k.service("web"))
    apiserver.apply(web_slice(k.endpoint("10.0.0.1")))
    source = await synced_source(run_source)
    apiserver.delete("Service", "default", "web")
    await wait_for(lambda: "default/web" not in by_name(source))
    assert source.status.counts["endpoint_slices"] == 1  # still there, serving nothing
    apiserver.apply(k.service("web"))  # recreated: the lingering slice joins again
    await wait_for(lambda: addresses(source) == ["10.0.0.1"])
    apiserver.delete("Service", "default", "web")
    apiserver.delete("EndpointSlice", "default", "web-1")
    await wait_for(lambda: source.content().services == () and source.status.counts["endpoint_slices"] == 0)


async def test_relist_after_410(apiserver: FakeApiServer, run_source: SourceFactory) -> None:
    apiserver.apply(k.service("web"))
    apiserver.apply(web_slice(k.endpoint("10.0.0.1")))
    source = await synced_source(run_source)
    apiserver.fail_next_requests(10**6)
    apiserver.drop_watches()
    await wait_for(lambda: apiserver.open_watches == 0)
    apiserver.apply(web_slice(k.endpoint("10.0.0.9")))
    apiserver.apply(k.service("api"))
    apiserver.compact()
    apiserver.clear_failures()
    await wait_for(lambda: source.status.counts["relists"] >= 2, what="both watchers relisting")
    await wait_for(lambda: addresses(source) == ["10.0.0.9"] and "default/api" in by_name(source))


async def test_a_watch_cut_mid_stream(apiserver: FakeApiServer, run_source: SourceFactory) -> None:
    apiserver.apply(k.service("web"))
    apiserver.apply(web_slice(k.endpoint("10.0.0.1")))
    source = await synced_source(run_source)
    await wait_for(lambda: apiserver.open_watches == 2)
    apiserver.drop_watches(mid_line=True)
    apiserver.apply(web_slice(k.endpoint("10.0.0.1"), k.endpoint("10.0.0.2")))
    await wait_for(lambda: addresses(source) == ["10.0.0.1", "10.0.0.2"])
    assert source.status.counts["relists"] == 0


async def test_the_api_server_down_at_start_up() -> None:
    server = FakeApiServer()
    server.apply(k.service("web"))
    server.apply(web_slice(k.endpoint("10.0.0.1")))
    api = client_for(server.url)
    source = KubernetesSource(client=api, backoff=FAST_BACKOFF, rng=random.Random(5))
    task = asyncio.create_task(source.run())
    try:
        await wait_for(lambda: any("cannot start watching" in e for e in source.status.errors))
        assert not source.synced
        await server.start()
        await wait_for(lambda: source.synced and addresses(source) == ["10.0.0.1"])
        assert source.status.errors == ()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()
        await api.close()


async def test_namespace_selection(apiserver: FakeApiServer, run_source: SourceFactory) -> None:
    for namespace in ("shop", "billing", "other"):
        apiserver.apply(k.service("web", namespace))
        apiserver.apply(k.endpoint_slice("web-1", "web", namespace, endpoints=[k.endpoint("10.0.0.1")]))
    source = await synced_source(run_source, namespaces=["shop", "billing"])
    assert sorted(by_name(source)) == ["billing/web", "shop/web"]
    paths = {r.path for r in apiserver.requests if not r.query.get("watch")}
    assert "/api/v1/namespaces/shop/services" in paths
    assert "/api/v1/services" not in paths


async def test_service_label_selector(apiserver: FakeApiServer, run_source: SourceFactory) -> None:
    apiserver.apply(k.service("web", labels={"mesh": "on"}))
    apiserver.apply(k.service("batch", labels={"mesh": "off"}))
    source = await synced_source(run_source, service_selector="mesh=on")
    assert sorted(by_name(source)) == ["default/web"]
    apiserver.apply(k.service("batch", labels={"mesh": "on"}))  # joins the selection
    await wait_for(lambda: sorted(by_name(source)) == ["default/batch", "default/web"])
    apiserver.apply(k.service("web", labels={"mesh": "off"}))  # leaves it
    await wait_for(lambda: sorted(by_name(source)) == ["default/batch"])


async def test_falls_back_to_v1beta1_slices() -> None:
    async with FakeApiServer(served_slice_versions=("v1beta1",)) as server:
        server.apply(k.service("web"))
        server.apply(
            k.endpoint_slice("web-1", "web", endpoints=[k.endpoint("10.0.0.1")], api_version="discovery.k8s.io/v1beta1")
        )
        api = client_for(server.url)
        source = KubernetesSource(client=api, backoff=FAST_BACKOFF)
        task = asyncio.create_task(source.run())
        try:
            await wait_for(lambda: source.synced)
            assert source.slice_resource == ENDPOINT_SLICES_V1BETA1
            assert addresses(source) == ["10.0.0.1"]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await api.close()


async def test_external_name_and_headless(apiserver: FakeApiServer, run_source: SourceFactory) -> None:
    apiserver.apply(
        k.service("pay", type_="ExternalName", external_name="pay.example.com", ports=[k.port("https", 443)])
    )
    apiserver.apply(k.service("db", cluster_ip="None", ports=[k.port("tcp-pg", 5432)]))
    apiserver.apply(k.endpoint_slice("db-1", "db", endpoints=[k.endpoint("10.0.0.5")], ports=[("tcp-pg", 5432)]))
    source = await synced_source(run_source)
    services = by_name(source)
    assert services["default/pay"].external_name == "pay.example.com"
    assert [e.address for e in services["default/db"].endpoints] == ["10.0.0.5"]


async def test_invalid_annotations_are_reported_and_discovery_goes_on(
    apiserver: FakeApiServer, run_source: SourceFactory
) -> None:
    apiserver.apply(
        k.service("web", annotations={"meshplane.io/connect-timeout": "soon", "meshplane.io/retries": "attempts=2"})
    )
    apiserver.apply(k.service("api"))
    source = await synced_source(run_source)
    assert sorted(by_name(source)) == ["default/api", "default/web"]
    (note,) = source.status.notes  # about one object: a note; the source itself has no error
    assert "meshplane.io/connect-timeout='soon'" in note
    assert source.status.errors == ()
    assert len(source.content().routes) == 1  # the valid retries annotation still applies
    apiserver.apply(k.service("web", annotations={"meshplane.io/connect-timeout": "2s"}))
    await wait_for(lambda: source.status.notes == () and by_name(source)["default/web"].policy.connect_timeout == 2.0)


async def test_unchanged_services_keep_their_identity(apiserver: FakeApiServer, run_source: SourceFactory) -> None:
    for i in range(20):
        apiserver.apply(k.service(f"svc-{i}"))
        apiserver.apply(k.endpoint_slice(f"svc-{i}-1", f"svc-{i}", endpoints=[k.endpoint(f"10.0.1.{i}")]))
    source = await synced_source(run_source)
    before = source.content()
    assert source.content() is before  # nothing changed: the same content object
    apiserver.apply(k.endpoint_slice("svc-3-1", "svc-3", endpoints=[k.endpoint("10.0.2.3")]))
    apiserver.apply(k.service("svc-5", labels={"touched": "yes"}))  # a change that maps to the same model
    await wait_for(lambda: addresses(source, "default/svc-3") == ["10.0.2.3"])
    await wait_for(lambda: source.watchers[0].objects[("default", "svc-5")]["metadata"].get("labels") is not None)
    after = source.content()
    changed = [b.name for b, a in zip(before.services, after.services, strict=True) if a is not b]
    assert changed == ["svc-3"]


@pytest.mark.timeout(180)
async def test_a_thousand_services_with_ten_endpoints_each(apiserver: FakeApiServer, run_source: SourceFactory) -> None:
    for i in range(1000):
        namespace = f"ns-{i % 10}"
        apiserver.apply(k.service(f"svc-{i}", namespace))
        endpoints = [k.endpoint(f"10.{i // 250}.{i % 250}.{j + 1}", zone=f"z{j % 3}") for j in range(10)]
        apiserver.apply(k.endpoint_slice(f"svc-{i}-abc", f"svc-{i}", namespace, endpoints=endpoints))
    source = await synced_source(run_source)
    content = source.content()
    assert len(content.services) == 1000
    assert sum(len(s.endpoints) for s in content.services) == 10_000
    # One endpoint change afterwards reaches the source and changes exactly one service.
    apiserver.apply(k.endpoint_slice("svc-0-abc", "svc-0", "ns-0", endpoints=[k.endpoint("10.9.9.9")]))
    await wait_for(lambda: addresses(source, "ns-0/svc-0") == ["10.9.9.9"])
    after = source.content()
    assert sum(1 for b, a in zip(content.services, after.services, strict=True) if a is not b) == 1
