"""meshplane's own API source on a real kube-apiserver (1.20, its watch cache on): the CRDs missing
and then installed (recovering without a restart), every kind read into the content with its
generation, changes and deletions seen, each (uid, resourceVersion) read once, objects outside
`--watch-namespaces` ignored and listed, and a control plane's `/status` and `/readyz` saying
why it waits while the CRDs are missing.

The first test runs on a cluster without the CRDs and installs them; the others install them
when missing. Every wait polls a condition with a generous deadline.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

import meshplane.app
from meshplane.app import Settings
from meshplane.cli import main
from meshplane.discovery.meshplane_api.kinds import (
    DEVICE_POLICY,
    EDGE_SITE,
    EXTERNAL_SERVICE,
    KINDS,
    MESH_ROUTE,
    MESH_TELEMETRY,
    TRAFFIC_POLICY,
)
from meshplane.discovery.meshplane_api.objects import ObjectKey
from meshplane.discovery.meshplane_api.source import MAX_IGNORED_NAMED, crd_name
from tests.edge_plane import running_control_plane
from tests.k8s.gateway_api_fixtures import cluster_fixtures
from tests.k8s.gateway_api_fixtures import until as poll_until
from tests.k8s.meshplane_api_fixtures import (
    SourceFactory,
    admin,
    create,
    delete,
    install_crds,
    namespace,
    path_of,
    plane_settings,
    readyz,
    running,
    set_spec,
    source_entry,
)
from tests.k8s.real_apiserver import ADMIN_TOKEN, CRDS, KUBE_MISSING, MERGE_PATCH, RealApiServer, call, call_ok
from tests.preconditions import requires
from tests.serve_settings import served

pytestmark = [pytest.mark.xdist_group("kube-apiserver"), pytest.mark.timeout(240), requires(KUBE_MISSING)]
__all__ = ["admin", "running", "served"]  # fixtures, found by pytest under these names

cluster, server = cluster_fixtures("kube-meshplane-api-source")
until = functools.partial(poll_until, interval=0.02)


async def holds(value: Any) -> Any:
    return value


def external_service(port: int = 8080, address: str = "127.0.0.1") -> dict[str, Any]:
    return {"port": port, "endpoints": [{"address": address, "port": 9000}]}


# One valid spec per kind (EdgeSite and DevicePolicy are cluster-scoped); a test holds it to `KINDS`.
SPECS: dict[str, dict[str, Any]] = {
    EXTERNAL_SERVICE: external_service(),
    TRAFFIC_POLICY: {
        "target_refs": [{"group": "meshplane.io", "kind": "ExternalService", "name": "pay"}],
        "connect_timeout": "2s",
    },
    MESH_ROUTE: {"service": "pay", "rules": [{"backends": [{"service": "pay"}]}]},
    EDGE_SITE: {"region": "eu", "gateways": ["127.0.0.1:15080"], "device_ranges": ["10.20.0.0/16"]},
    MESH_TELEMETRY: {"access_logs": [{"to": "stdout"}]},
    DEVICE_POLICY: {"sites": ["gym"], "classes": ["bike"], "allow": [{"service": "pay"}]},
}


def test_there_is_a_spec_for_every_kind() -> None:
    assert set(SPECS) == {kind.name for kind in KINDS}


async def test_without_the_crds_the_control_plane_waits_says_why_and_recovers_once_they_are_installed(
    admin: ApiClient, server: RealApiServer, running: SourceFactory, tmp_path: Path
) -> None:
    status, _ = await call(admin, "GET", f"{CRDS}/{crd_name(KINDS[0])}")
    assert status == 404, "this module's first test starts without the CRDs"
    source = await running()
    await until(lambda: holds(source.crds_missing), "the CRDs seen missing")
    assert not source.synced
    (error,) = [e for e in source.status.errors if "CRDs are not installed" in e]
    assert all(crd_name(kind) in error for kind in KINDS)
    assert "kubectl apply -k deploy/kubernetes/crds/" in error

    kubeconfig = server.kubeconfig(tmp_path / "kubeconfig", ADMIN_TOKEN)
    async with running_control_plane(plane_settings(server, kubeconfig)) as plane:

        async def waiting() -> tuple[int, str] | None:
            code, text = await readyz(plane.status_port)
            return (code, text) if code == 503 and "CRDs are not installed" in text else None

        _, text = await until(waiting, "/readyz naming the missing CRDs")
        assert "source meshplane-api has not synced" in text
        entry = await source_entry(plane.status_port)
        assert entry is not None
        assert any("CRDs are not installed" in e for e in entry["errors"])

        await install_crds(admin)
        # Both recover without a restart: the lone source, and the control plane's.
        # Settled: a watch begun right after its list may get a 410 for the version just listed;
        # it is retried within a second and shown as an error meanwhile.
        await until(
            lambda: holds(source.synced and source.status.errors == ()),
            "the source to sync once the CRDs are installed, and settle",
            deadline=90,
        )

        async def ready_and_settled() -> bool:
            if (await readyz(plane.status_port))[0] != 200:
                return False
            entry = await source_entry(plane.status_port)
            return entry is not None and entry["errors"] == []

        await until(ready_and_settled, "/readyz ready once the CRDs are installed, /status with no error", deadline=90)


async def test_every_kind_is_read_changed_and_deleted_each_version_once(
    admin: ApiClient, running: SourceFactory
) -> None:
    await install_crds(admin)
    ns = await namespace(admin, "kinds")
    changes: list[int] = []
    source = await running(on_change=lambda: changes.append(1))
    await until(lambda: holds(source.synced), "the source synced")
    source.take_changes()
    for kind in KINDS:
        await create(admin, kind.name, "pay" if kind.name != EDGE_SITE else "gym", ns, SPECS[kind.name])
    keys = {
        ObjectKey(kind.name, ns if kind.namespaced else "", "pay" if kind.name != EDGE_SITE else "gym")
        for kind in KINDS
    }

    def read_all() -> bool:
        return keys <= set(source.content().objects)

    await until(lambda: holds(read_all()), "every kind read")
    content = source.content()
    for key in keys:
        parsed = content.objects[key]
        assert parsed.errors == (), parsed
        assert parsed.accepted, parsed
        assert parsed.generation == 1, parsed
    assert source.take_changes()
    assert not source.take_changes()
    assert changes

    # A spec change: a new generation, read again.
    key = ObjectKey(TRAFFIC_POLICY, ns, "pay")
    await set_spec(admin, TRAFFIC_POLICY, "pay", ns, {**SPECS[TRAFFIC_POLICY], "connect_timeout": "3s"})
    await until(lambda: holds(source.content().objects[key].generation == 2), "generation 2 read")
    attachment = source.content().objects[key].attachment()
    assert attachment is not None
    assert attachment.policy.connect_timeout == 3.0
    assert source.status.counts["refused_objects"] == 0

    # Each object generation is read once: a change of its status alone (a new resourceVersion, the
    # same generation) comes on the watch and is not read again, nor is the content replaced.
    read_before, content_before = source.parsed, source.content()
    source.take_changes()
    status = {"status": {"conditions": [], "note": "written by someone"}}
    patched = await call_ok(admin, "PATCH", path_of(TRAFFIC_POLICY, ns, "pay") + "/status", status, MERGE_PATCH)
    watcher = source.watchers[TRAFFIC_POLICY]
    version = patched["metadata"]["resourceVersion"]

    def status_seen() -> bool:
        held = watcher.objects.get((ns, "pay"))
        return held is not None and held["metadata"]["resourceVersion"] == version and not source.pending

    await until(lambda: holds(status_seen()), "the status change seen on the watch and its batch done")
    assert source.parsed == read_before
    assert source.content() is content_before
    assert not source.take_changes()

    await delete(admin, TRAFFIC_POLICY, "pay", ns)
    await until(lambda: holds(key not in source.content().objects), "the deletion seen")
    assert source.status.counts["trafficpolicies"] == 0


async def test_objects_outside_the_watched_namespaces_are_ignored_and_listed(
    admin: ApiClient, running: SourceFactory
) -> None:
    await install_crds(admin)
    served, other = await namespace(admin, "served"), await namespace(admin, "elsewhere")
    source = await running(namespaces=[served])
    await until(lambda: holds(source.synced), "the source synced")
    await create(admin, EXTERNAL_SERVICE, "pay", served, SPECS[EXTERNAL_SERVICE])
    for index in range(MAX_IGNORED_NAMED + 2):
        await create(admin, EXTERNAL_SERVICE, f"stray-{index:02}", other, SPECS[EXTERNAL_SERVICE])
    await create(admin, EDGE_SITE, "ignored-ns-site", "", SPECS[EDGE_SITE])  # cluster-scoped: always served
    wanted = {ObjectKey(EXTERNAL_SERVICE, served, "pay"), ObjectKey(EDGE_SITE, "", "ignored-ns-site")}

    strays = {ObjectKey(EXTERNAL_SERVICE, other, f"stray-{index:02}") for index in range(MAX_IGNORED_NAMED + 2)}

    def seen() -> bool:
        return wanted <= set(source.content().objects) and strays <= set(source.ignored)

    await until(lambda: holds(seen()), "the served objects read and the others ignored")
    # Objects other tests left in other namespaces are ignored too.
    assert not any(key.namespace != served for key in source.content().objects if key.namespace)
    status = source.status
    assert status.counts["ignored_objects"] == len(source.ignored) >= MAX_IGNORED_NAMED + 2
    (note,) = [note for note in status.notes if "ignored" in note]
    named = sorted(source.ignored)
    assert f"{named[0]}," in note
    assert f"{named[MAX_IGNORED_NAMED - 1]} and" in note
    assert str(named[MAX_IGNORED_NAMED]) not in note  # bounded: the rest are counted
    assert f"and {len(named) - MAX_IGNORED_NAMED} more" in note
    assert "(served)" in note
    assert source.writer.programmed(ObjectKey(EXTERNAL_SERVICE, other, "stray-00")) is None

    await delete(admin, EXTERNAL_SERVICE, "stray-00", other)
    gone = ObjectKey(EXTERNAL_SERVICE, other, "stray-00")
    await until(lambda: holds(gone not in source.ignored), "a deleted ignored object forgotten")


def test_the_flags_reach_the_settings(served: list[Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["serve", "--kubernetes", "--meshplane-api", "--watch-namespaces", "shop, billing"]) == 0
    monkeypatch.setenv("MESHPLANE_MESHPLANE_API", "true")
    monkeypatch.setenv("MESHPLANE_WATCH_NAMESPACES", "one")
    assert main(["serve", "--kubernetes"]) == 0
    first, second = served
    assert (first.meshplane_api, first.watch_namespaces) == (True, ("shop", "billing"))
    assert (second.meshplane_api, second.watch_namespaces) == (True, ("one",))


@pytest.mark.parametrize(
    ("argv", "ours", "services"),
    [
        (["--namespace", "shop"], {"shop"}, ("shop",)),
        (["--namespace", "shop", "--namespace", "billing"], {"shop", "billing"}, ("shop", "billing")),
        (["--namespace", "shop", "--watch-namespaces", "billing"], {"billing"}, ("shop",)),
        (["--watch-namespaces", "billing"], {"billing"}, ()),
        ([], set(), ()),
    ],
    ids=["namespace-limits-both", "namespaces-limit-both", "watch-namespaces-wins", "watch-only", "all"],
)
def test_namespace_limits_our_kinds_as_it_limits_services_unless_watch_namespaces_is_given(
    served: list[Settings], argv: list[str], ours: set[str], services: tuple[str, ...]
) -> None:
    assert main(["serve", "--kubernetes", "--meshplane-api", *argv]) == 0
    (settings,) = served
    plane = meshplane.app.ControlPlane(settings)
    assert plane.meshplane_api is not None
    assert plane.meshplane_api.namespaces == frozenset(ours)
    assert settings.namespaces == services
    for name in ("shop", "billing", "elsewhere"):
        assert plane.meshplane_api.serves(name) == (not ours or name in ours)
    assert plane.meshplane_api.serves("")  # cluster-scoped kinds: always


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--config", "examples", "--meshplane-api"], "--meshplane-api needs --kubernetes"),
        (["--kubernetes", "--watch-namespaces", "shop"], "--watch-namespaces needs --meshplane-api"),
        (["--kubernetes", "--meshplane-api", "--watch-namespaces", "Shop_1"], "--watch-namespaces: not a namespace"),
    ],
    ids=["api-without-kubernetes", "namespaces-without-api", "bad-namespace"],
)
def test_flags_that_cannot_serve_are_refused_with_a_reason(
    served: list[Settings], capsys: pytest.CaptureFixture[str], argv: list[str], reason: str
) -> None:
    assert main(["serve", *argv]) == 2
    assert reason in capsys.readouterr().err
    assert served == []
