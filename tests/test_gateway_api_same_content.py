"""`same_content`: which watch updates of a Gateway API object are no change of what meshplane
reads (status writes, the API server's bookkeeping) and which are (everything else), as a table.
The source's behaviour on a real API server is in tests/k8s/test_gateway_api_apiserver.py."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from meshplane.discovery.gateway_api.http_routes import parse_http_route
from meshplane.discovery.gateway_api.source import same_content

ROUTE: dict[str, Any] = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {
        "name": "web",
        "namespace": "shop",
        "uid": "0b6f8a0e-1",
        "generation": 3,
        "resourceVersion": "1200",
        "creationTimestamp": "2026-12-07T05:00:00Z",
        "labels": {"team": "a"},
        "managedFields": [{"manager": "kubectl", "operation": "Update", "time": "2026-12-07T05:00:00Z"}],
    },
    "spec": {
        "parentRefs": [{"name": "edge"}],
        "rules": [{"backendRefs": [{"name": "web", "port": 8080}]}],
    },
}
CONDITION = {
    "type": "Accepted",
    "status": "True",
    "reason": "Accepted",
    "message": "",
    "lastTransitionTime": "2026-12-07T05:00:01Z",
    "observedGeneration": 3,
}


def _status_written(obj: dict[str, Any]) -> None:
    """What a status write changes: the status, the resourceVersion, a managedFields entry."""
    obj["status"] = {"parents": [{"parentRef": {"name": "edge"}, "controllerName": "x/y", "conditions": [CONDITION]}]}
    obj["metadata"]["resourceVersion"] = "1201"
    obj["metadata"]["managedFields"].append({"manager": "meshplane", "operation": "Update", "subresource": "status"})


def _status_changed_again(obj: dict[str, Any]) -> None:
    _status_written(obj)
    obj["status"]["parents"][0]["conditions"][0]["status"] = "False"
    obj["metadata"]["resourceVersion"] = "1202"


def _self_link(obj: dict[str, Any]) -> None:
    obj["metadata"]["selfLink"] = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/web"


SAME: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("status-written", _status_written),
    ("status-changed", _status_changed_again),
    ("resource-version-only", lambda obj: obj["metadata"].update(resourceVersion="1300")),
    ("managed-fields-dropped", lambda obj: obj["metadata"].pop("managedFields")),
    ("self-link-added", _self_link),
]


def _backend_moved(obj: dict[str, Any]) -> None:
    obj["spec"]["rules"][0]["backendRefs"][0]["name"] = "web-v2"
    obj["metadata"]["generation"] = 4
    obj["metadata"]["resourceVersion"] = "1201"


DIFFERENT: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("spec-changed", _backend_moved),
    ("spec-changed-generation-not", lambda obj: obj["spec"].update(hostnames=["web.example"])),
    ("generation-only", lambda obj: obj["metadata"].update(generation=4)),
    ("label-changed", lambda obj: obj["metadata"]["labels"].update(team="b")),
    ("annotation-added", lambda obj: obj["metadata"].update(annotations={"a": "b"})),
    (
        "recreated-same-name",
        lambda obj: obj["metadata"].update(uid="0b6f8a0e-2", creationTimestamp="2026-12-08T00:00:00Z"),
    ),
    ("being-deleted", lambda obj: obj["metadata"].update(deletionTimestamp="2026-12-07T06:00:00Z")),
    ("spec-removed", lambda obj: obj.pop("spec")),
    ("metadata-malformed", lambda obj: obj.update(metadata="web")),
    ("field-added-beside-spec", lambda obj: obj.update(extra={"a": 1})),
]


@pytest.mark.parametrize(("name", "change"), SAME, ids=[name for name, _ in SAME])
def test_an_update_of_status_or_server_bookkeeping_only_is_the_same_content(
    name: str, change: Callable[[dict[str, Any]], None]
) -> None:
    new = copy.deepcopy(ROUTE)
    change(new)
    assert same_content(ROUTE, new)
    assert same_content(new, ROUTE)  # either way round
    # What the rule promises: the parser reads the same value from both.
    assert parse_http_route(new) == parse_http_route(ROUTE)


@pytest.mark.parametrize(("name", "change"), DIFFERENT, ids=[name for name, _ in DIFFERENT])
def test_any_other_update_is_a_change_of_content(name: str, change: Callable[[dict[str, Any]], None]) -> None:
    new = copy.deepcopy(ROUTE)
    change(new)
    assert not same_content(ROUTE, new)
    assert not same_content(new, ROUTE)


def test_an_unchanged_object_is_the_same_content() -> None:
    assert same_content(ROUTE, copy.deepcopy(ROUTE))
