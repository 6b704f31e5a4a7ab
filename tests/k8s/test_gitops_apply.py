"""deploy/gitops/config/ as Flux would apply it, end to end: rendered by `kubectl kustomize`,
applied to a real kube-apiserver by `kubectl apply --server-side` (as Flux's kustomize-controller
applies), served by the real `meshplane serve --kubernetes --gateway-api --meshplane-api` to a real
Envoy (sidecar); status written on every object; then a commit's worth of change reaching the
Envoy, and a bad one refused on its object while the Envoy keeps the last good configuration: a
later good commit is the barrier proving the bad one never reached the Envoy (the only cluster
update the Envoy takes after the last good one is that commit's).

Flux does not run here: the test does what its controllers do with the folder (render, apply) and
what a team does to it (edit a file in a checkout). The checkout is a copy of deploy/gitops/config/
in which the ExternalService's endpoint is this test's backend (an environment's own value, as an
overlay or a per-cluster folder holds it); every other file is the repository's. The CRDs are ours
(deploy/kubernetes/crds/, through the fixtures of the meshplane API tests) and the Gateway API's
standard channel (tests/k8s/gateway_api_crds.py). One API server, one meshplane, one Envoy.
"""

from __future__ import annotations

import functools
import io
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio.client import ApiClient

from meshplane.discovery.analyze import analyze_command
from tests.envoy_harness import Envoy, start_backend, start_envoy
from tests.k8s.gateway_api_crds import GROUP
from tests.k8s.gateway_api_fixtures import cluster_fixtures, until
from tests.k8s.meshplane_api_fixtures import admin_of_both_apis, conditions_of, read
from tests.k8s.real_apiserver import ADMIN_TOKEN, KUBE_MISSING, REPO, RealApiServer, call_ok
from tests.preconditions import require, requires
from tests.serve_process import serve

pytestmark = [pytest.mark.xdist_group("kube-apiserver"), pytest.mark.timeout(240), requires(KUBE_MISSING)]

cluster, server = cluster_fixtures("kube-gitops")
__all__ = ["admin_of_both_apis"]  # the `admin` fixture, found by pytest under that name

CONFIG = REPO / "deploy" / "gitops" / "config"
NAMESPACE = "shop"
PAYMENTS = "payments.shop:8080"  # the cluster of ExternalService shop/payments' port (xds/names.py)
OURS = {  # every meshplane object of the folder: kind → (namespace, name)
    "ExternalService": (NAMESPACE, "payments"),
    "TrafficPolicy": (NAMESPACE, "payments"),
    "MeshRoute": (NAMESPACE, "payments"),
    "EdgeSite": ("", "gym-berlin"),
}
LISTENING = re.compile(r"xDS on port (\d+),")
KUBECTL_MISSING = None if shutil.which("kubectl") else "kubectl is not installed (it renders and applies)"
# The Envoy's own counts of the cluster (CDS) updates it took and refused.
CDS_UPDATES = "cluster_manager.cds.update_success"
CDS_REJECTED = "cluster_manager.cds.update_rejected"


class Checkout:
    """A team's checkout of the configuration folder: its files edited, rendered, and applied."""

    def __init__(self, folder: Path, kubeconfig: Path) -> None:
        self.folder = folder
        self.kubeconfig = kubeconfig

    def edit(self, name: str, change: Any) -> None:
        """`change(document)` applied to the YAML document of file `name`, written back."""
        path = self.folder / name
        document = yaml.safe_load(path.read_text())
        change(document)
        path.write_text(yaml.safe_dump(document, sort_keys=False))

    def apply(self) -> str:
        """`kubectl kustomize` of the folder, applied server-side as Flux's controller applies."""
        rendered = run(["kubectl", "kustomize", str(self.folder)])
        return run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), "apply", "--server-side",
             "--field-manager", "kustomize-controller", "-f", "-"],
            rendered,
        )  # fmt: skip


def run(command: list[str], stdin: str = "") -> str:
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(command[:3])}…: {done.stderr}"
    return done.stdout


def set_spec(**values: Any) -> Any:
    def change(document: dict[str, Any]) -> None:
        document["spec"].update(values)

    return change


async def cluster_of(envoy: Envoy) -> dict[str, Any] | None:
    """The Envoy's dynamic cluster for the payments service, as its config_dump shows it."""
    dump = await envoy.config_dump("dynamic_active_clusters")
    for entry in dump.get("configs", ()):
        found = entry.get("cluster", {})
        if found.get("name") == PAYMENTS:
            return dict(found)
    return None


async def connect_timeout_is(envoy: Envoy, wanted: str) -> dict[str, Any] | None:
    found = await cluster_of(envoy)
    return found if found is not None and found.get("connect_timeout") == wanted else None


async def test_the_config_folder_applied_serves_an_envoy_and_a_change_as_a_commit_reaches_it(
    admin: ApiClient, server: RealApiServer, tmp_path: Path
) -> None:
    require(KUBECTL_MISSING)
    backend = await start_backend("payments-provider")
    checkout = Checkout(tmp_path / "config", server.kubeconfig(tmp_path / "kubeconfig", ADMIN_TOKEN))
    shutil.copytree(CONFIG, checkout.folder)
    checkout.edit("externalservice-payments.yaml", set_spec(endpoints=[{"address": "127.0.0.1", "port": backend.port}]))
    applied = checkout.apply()
    assert "externalservice.meshplane.io/payments serverside-applied" in applied, applied
    sources = ["--kubernetes", "--kubeconfig", str(checkout.kubeconfig), "--gateway-api", "--meshplane-api"]
    # The xDS port is the kernel's (port 0), read back from the start line: nothing else on a shared
    # machine can take it between choosing and binding.
    async with serve(*sources, "--debounce-quiet", "0.02", xds_address="127.0.0.1:0") as meshplane:
        (port,) = {int(found[1]) for line in meshplane.lines if (found := LISTENING.search(line))}
        envoy = await start_envoy(tmp_path / "envoy", port, node_id="shop-sidecar")
        try:
            # Served: the MeshRoute's table takes the payments service's names to the ExternalService,
            # with the TrafficPolicy's settings on its cluster.
            answered = await envoy.eventually(
                lambda: _answer(envoy, "payments.shop", "/refunds/7"), "payments answered through the Envoy"
            )
            assert answered == "payments-provider /refunds/7\n"
            served = await envoy.eventually(lambda: connect_timeout_is(envoy, "0.250s"), "the policy's timeout")
            assert served["lb_policy"] == "LEAST_REQUEST"
            assert served["outlier_detection"]["consecutive_5xx"] == 3

            # Status written on every object of ours, for the generation applied; the Gateway and
            # its route accepted.
            for kind, (namespace, name) in OURS.items():
                await until(functools.partial(_accepted, admin, kind, namespace, name), f"{kind} {name} Accepted")
            await until(lambda: _gateway_api_accepted(admin), "the Gateway and HTTPRoute Accepted")

            # A commit: the TrafficPolicy's timeout raised.
            checkout.edit("trafficpolicy-payments.yaml", set_spec(connect_timeout="2s"))
            checkout.apply()
            await envoy.eventually(lambda: connect_timeout_is(envoy, "2s"), "the committed timeout at the Envoy")
            await until(lambda: _accepted(admin, "TrafficPolicy", NAMESPACE, "payments", 2), "generation 2 Accepted")

            # A bad commit: consistent hashing with nothing to hash on. The API server's schema takes
            # it (each field is valid alone); meshplane refuses it on the object and keeps serving
            # generation 2.
            updates_before = await envoy.stat(CDS_UPDATES)
            rejected_before = await envoy.stat(CDS_REJECTED)
            assert isinstance(updates_before, int), updates_before
            checkout.edit("trafficpolicy-payments.yaml", set_spec(load_balancing="ring_hash"))
            checkout.apply()
            refused = await until(lambda: _refused(admin, "TrafficPolicy", NAMESPACE, "payments", 3), "refused")
            assert refused["reason"] == "Invalid", refused
            assert "hash_key" in refused["message"], refused
            kept = await cluster_of(envoy)
            assert kept is not None
            assert (kept["connect_timeout"], kept["lb_policy"]) == ("2s", "LEAST_REQUEST")
            assert await _answer(envoy, "payments.shop", "/charge") == "payments-provider /charge\n"

            # What the README tells a team to look at: the printer columns, and `meshplane analyze`.
            listed = run(
                ["kubectl", "--kubeconfig", str(checkout.kubeconfig), "get", "trafficpolicies", "-n", NAMESPACE]
            )
            header, row = listed.splitlines()
            assert header.split()[:5] == ["NAME", "ACCEPTED", "REASON", "RESOLVEDREFS", "PROGRAMMED"], listed
            assert row.split()[:3] == ["payments", "False", "Invalid"], listed
            out, err = io.StringIO(), io.StringIO()
            code = await analyze_command(checkout.kubeconfig, None, [NAMESPACE], "text", out, err)
            assert code == 1, (out.getvalue(), err.getvalue())
            assert f"  TrafficPolicy {NAMESPACE}/payments\n    Accepted False (Invalid): " in out.getvalue()

            # The barrier: a good commit after the refusal. xDS responses reach the Envoy in order on
            # its one stream, so once this one's cluster is there, anything sent for the refused
            # generation would have come before it: the Envoy has taken exactly one cluster update
            # since the last good one (this), and refused none.
            checkout.edit("trafficpolicy-payments.yaml", set_spec(load_balancing="least_request", connect_timeout="3s"))
            checkout.apply()
            probe = await envoy.eventually(lambda: connect_timeout_is(envoy, "3s"), "the next good commit's timeout")
            assert probe["lb_policy"] == "LEAST_REQUEST"
            assert await envoy.stat(CDS_UPDATES) == updates_before + 1, "a cluster update came between the two"
            assert await envoy.stat(CDS_REJECTED) == rejected_before
            await until(lambda: _accepted(admin, "TrafficPolicy", NAMESPACE, "payments", 4), "generation 4 Accepted")
        finally:
            await envoy.stop()
            await backend.close()


async def _answer(envoy: Envoy, host: str, path: str) -> str | None:
    status, body, _ = await envoy.request(host, path)
    return body if status == 200 else None


async def _accepted(admin: ApiClient, kind: str, namespace: str, name: str, generation: int = 1) -> bool:
    accepted = conditions_of(await read(admin, kind, name, namespace)).get("Accepted", {})
    return accepted.get("status") == "True" and accepted.get("observedGeneration") == generation


async def _refused(admin: ApiClient, kind: str, namespace: str, name: str, generation: int) -> dict[str, Any] | None:
    accepted = conditions_of(await read(admin, kind, name, namespace)).get("Accepted", {})
    refused = accepted.get("status") == "False" and accepted.get("observedGeneration") == generation
    return accepted if refused else None


async def _gateway_api_accepted(admin: ApiClient) -> bool:
    gateway = await call_ok(admin, "GET", f"/apis/{GROUP}/v1/namespaces/{NAMESPACE}/gateways/edge")
    route = await call_ok(admin, "GET", f"/apis/{GROUP}/v1/namespaces/{NAMESPACE}/httproutes/payments")
    gateway_ok = conditions_of(gateway).get("Accepted", {}).get("status") == "True"
    parents = (route.get("status") or {}).get("parents") or []
    route_ok = bool(parents) and all(
        c.get("status") == "True" for p in parents for c in p["conditions"] if c["type"] in ("Accepted", "ResolvedRefs")
    )
    return gateway_ok and route_ok
