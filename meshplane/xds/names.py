"""Every Envoy resource name meshplane produces. One function per kind of name.

These names are contracts between producer and consumer: the name a cluster gives for its EDS
service and the name its ClusterLoadAssignment carries come from the same function here, and so
do a listener's RDS name and the RouteConfiguration's. Never build such a name anywhere else.
"""

from __future__ import annotations

from meshplane.model import ServicePort, ServiceRef


def cluster_name(service: ServiceRef, port: ServicePort) -> str:
    """The cluster (and its EDS service name) for one port of a service: `name.namespace:port`."""
    return f"{service.name}.{service.namespace}:{port.port}"


def endpoints_name(service: ServiceRef, port: ServicePort) -> str:
    """The ClusterLoadAssignment name an EDS cluster asks for; equal to the cluster's name."""
    return cluster_name(service, port)


def outbound_listener_name(port: int) -> str:
    """The sidecar's outbound HTTP listener on `port`."""
    return f"outbound_http_{port}"


def outbound_route_name(port: int) -> str:
    """The RouteConfiguration the sidecar's outbound HTTP listener on `port` asks for over RDS."""
    return f"outbound_http_{port}"


def grpc_listener_name(host: str, port: int) -> str:
    """The api_listener a proxyless gRPC client asks for when dialling `xds:///host:port`.

    gRPC takes the target's path as the listener name literally, so this must be exactly `host:port`.
    """
    return f"{host}:{port}"


def grpc_route_name(service: ServiceRef, port: ServicePort) -> str:
    """The RouteConfiguration shared by every api_listener name of one gRPC service port."""
    return f"grpc/{service.name}.{service.namespace}:{port.port}"


def virtual_host_name(service: ServiceRef, port: ServicePort) -> str:
    return f"{service.name}.{service.namespace}:{port.port}"


def tcp_listener_name(port: int) -> str:
    """The sidecar's outbound TCP listener on 127.0.0.1:`port`, proxying one TCP service port."""
    return f"outbound_tcp_{port}"


def route_table_virtual_host_name(table: str) -> str:
    """The virtual host a route table with its own `hosts` gets in the sidecar's outbound routes."""
    return f"route/{table}"


# --- edge roles (edge-gateway, device, mobile) ---


def edge_device_cluster_name(device_id: str) -> str:
    """The edge gateway's STATIC cluster reaching one registered device of its site."""
    return f"device/{device_id}"


def gateway_from_devices_listener_name(port: int) -> str:
    """The edge gateway's listener taking its site's device traffic into the cloud."""
    return f"edge_from_devices_{port}"


def gateway_from_devices_route_name(port: int) -> str:
    return f"edge_from_devices_{port}"


def gateway_to_devices_listener_name(port: int) -> str:
    """The edge gateway's listener letting cloud services reach one device by id."""
    return f"edge_to_devices_{port}"


def gateway_to_devices_route_name(port: int) -> str:
    return f"edge_to_devices_{port}"


def device_virtual_host_name(device_id: str) -> str:
    return f"device/{device_id}"


# The SDS secrets of the edge gateway's device TLS. Their names hold two `/`, so they never meet a
# policy-file secret's (no `/`) nor a Kubernetes Secret's (`namespace/name`, `namespace/name#ca`).
# The device CA alone (trusted CAs): what the gateway verifies a device it calls with.
EDGE_DEVICE_CA_SECRET = "meshplane/edge/device-ca"


def edge_device_validation_secret_name(site: str) -> str:
    """The validation context the gateways of `site` verify connecting devices with: the device CA
    and the SPIFFE ids of the site's live devices (changed by SDS alone, so no listener drains)."""
    return f"meshplane/edge/devices/{site}"


# The RTDS layer Envoy Mobile asks for; its bootstrap names it (`rtds_layer.name`).
MOBILE_RUNTIME_NAME = "meshplane"


# --- gateway role (Kubernetes Gateway API) ---

# The cluster a gateway route's share of unresolved backends names: never defined, so Envoy
# answers that share with the route's `cluster_not_found_response_code` (500, as the spec says).
GATEWAY_UNRESOLVED_CLUSTER = "gateway_unresolved_backend"


def gateway_listener_name(port: int) -> str:
    """A gateway proxy's listener on `port` (the Gateway listener's port plus the proxy's offset)."""
    return f"gateway_{port}"


def gateway_route_name(port: int) -> str:
    """The RouteConfiguration of every Gateway listener on `port` (plus offset)."""
    return f"gateway_{port}"


def gateway_virtual_host_name(hostname: str) -> str:
    """The virtual host of one (intersected) hostname in a gateway route configuration."""
    return f"gateway/{hostname}"


def gateway_filter_chain_name(listener: str) -> str:
    """The filter chain of one HTTPS Gateway listener (by its name in the Gateway)."""
    return f"listener/{listener}"
