"""Kubernetes objects as the API server sends them (JSON dicts), built for tests."""

from __future__ import annotations

import base64
from typing import Any

Obj = dict[str, Any]


def service(
    name: str,
    namespace: str = "default",
    ports: list[Obj] | None = None,
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    type_: str = "ClusterIP",
    cluster_ip: str = "10.96.0.10",
    external_name: str = "",
) -> Obj:
    spec: Obj = {"type": type_, "ports": ports if ports is not None else [port("http", 80)]}
    if type_ == "ExternalName":
        spec["externalName"] = external_name
    else:
        spec["clusterIP"] = cluster_ip
    meta: Obj = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    return {"kind": "Service", "apiVersion": "v1", "metadata": meta, "spec": spec}


def port(name: str, number: int, *, app_protocol: str = "", protocol: str = "TCP", target: int | None = None) -> Obj:
    found: Obj = {"port": number, "protocol": protocol, "targetPort": target or number}
    if name:
        found["name"] = name
    if app_protocol:
        found["appProtocol"] = app_protocol
    return found


def endpoint(
    *addresses: str,
    ready: bool | None = True,
    serving: bool | None = None,
    terminating: bool | None = None,
    zone: str = "",
    node: str = "",
) -> Obj:
    conditions: Obj = {}
    for key, value in (("ready", ready), ("serving", serving), ("terminating", terminating)):
        if value is not None:
            conditions[key] = value
    found: Obj = {"addresses": list(addresses), "conditions": conditions}
    if zone:
        found["zone"] = zone
    if node:
        found["nodeName"] = node
    return found


def endpoint_slice(
    name: str,
    service_name: str,
    namespace: str = "default",
    endpoints: list[Obj] | None = None,
    ports: list[tuple[str, int]] | None = None,
    *,
    address_type: str = "IPv4",
    api_version: str = "discovery.k8s.io/v1",
) -> Obj:
    return {
        "kind": "EndpointSlice",
        "apiVersion": api_version,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service_name, "endpointslice.kubernetes.io/managed-by": "test"},
        },
        "addressType": address_type,
        "endpoints": endpoints or [],
        "ports": [
            {"name": port_name, "port": number, "protocol": "TCP"} for port_name, number in (ports or [("http", 8080)])
        ],
    }


SDS_LABELS = {"meshplane.io/sds": "true"}


def secret(
    name: str,
    namespace: str = "default",
    data: dict[str, str | bytes] | None = None,
    *,
    type_: str = "kubernetes.io/tls",
    labels: dict[str, str] | None = SDS_LABELS,
) -> Obj:
    """A Secret as the API sends it: `data` values base64-encoded (given here as text or bytes)."""

    encoded = {
        key: base64.b64encode(value.encode() if isinstance(value, str) else value).decode()
        for key, value in (data or {}).items()
    }
    meta: Obj = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = dict(labels)
    return {"kind": "Secret", "apiVersion": "v1", "metadata": meta, "type": type_, "data": encoded}


def tls_secret(name: str, namespace: str, certificate: str, key: str, ca: str | None = None, **kwargs: Any) -> Obj:
    data: dict[str, str | bytes] = {"tls.crt": certificate, "tls.key": key}
    if ca is not None:
        data["ca.crt"] = ca
    return secret(name, namespace, data, **kwargs)


def ca_secret(name: str, namespace: str, ca: str, **kwargs: Any) -> Obj:
    return secret(name, namespace, {"ca.crt": ca}, type_="Opaque", **kwargs)
