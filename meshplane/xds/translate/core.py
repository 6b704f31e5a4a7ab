"""Small builders of the Envoy and protobuf pieces every resource uses: durations, wrappers,
config sources, typed extensions.

Owns the clamping that keeps a valid model from crashing protobuf: the model bounds few numbers
from above (a circuit breaker limit or a weight may be any non-negative int, a duration any
positive float), while the wire types are uint32 and bounded Durations. Must stay pure.
"""

from __future__ import annotations

import math
from typing import Any

from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from meshplane.model import ProxyGroup
from meshplane.model.proxy import XdsApiType

UINT32_MAX = 2**32 - 1
# About ten years: inside google.protobuf.Duration's range and Envoy's (it converts to int64 nanoseconds,
# so it rejects more than ~292 years).
_MAX_DURATION_SECONDS = 315_576_000


def duration(seconds: float) -> Any:
    """A Duration of `seconds`, rounded to the nanosecond; NaN and negatives become 0, infinity the maximum."""
    if math.isnan(seconds) or seconds <= 0:
        seconds = 0.0
    seconds = min(seconds, float(_MAX_DURATION_SECONDS))
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1_000_000_000))
    return value


def uint32(value: int) -> Any:
    """A UInt32Value holding `value`, clamped into uint32's range."""
    return wrappers_pb2.UInt32Value(value=clamp_uint32(value))


def clamp_uint32(value: int) -> int:
    return max(0, min(value, UINT32_MAX))


# The reconnect back-off of a per-type config source: `meshplane bootstrap`'s (50 ms to 200 ms).
RETRY_BASE_INTERVAL = 0.05
RETRY_MAX_INTERVAL = 0.2
_API_TYPES = {
    XdsApiType.GRPC: config_source_pb2.ApiConfigSource.GRPC,
    XdsApiType.DELTA_GRPC: config_source_pb2.ApiConfigSource.DELTA_GRPC,
}


def config_source(group: ProxyGroup) -> Any:
    """The ConfigSource of every reference a proxy of `group` is sent (a cluster's EDS, a
    listener's RDS, a TLS context's SDS), API v3.

    On ADS, `ads: {}`: the proxy's own ADS stream. A proxy on the per-type services gets an
    `api_config_source` of the API type it named, through the xDS cluster it named: Envoy NACKs
    an `ads` source when its bootstrap has no ADS ("ADS must be configured to support an ADS
    config source"). Envoy opens a stream per subscription on such a source (one per EDS cluster,
    per SDS secret, per RDS route configuration), which the per-client stream limit must allow.
    The retry back-off matches the one `meshplane bootstrap` renders, so these streams are back as
    soon after a control plane restart as the bootstrap's own.
    """
    if group.xds_api_type is XdsApiType.ADS:
        return config_source_pb2.ConfigSource(
            ads=config_source_pb2.AggregatedConfigSource(),
            resource_api_version=config_source_pb2.V3,
        )
    service = grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=group.xds_cluster),
    )
    service.envoy_grpc.retry_policy.retry_back_off.base_interval.CopyFrom(duration(RETRY_BASE_INTERVAL))
    service.envoy_grpc.retry_policy.retry_back_off.max_interval.CopyFrom(duration(RETRY_MAX_INTERVAL))
    return config_source_pb2.ConfigSource(
        api_config_source=config_source_pb2.ApiConfigSource(
            api_type=_API_TYPES[group.xds_api_type],
            transport_api_version=config_source_pb2.V3,
            grpc_services=[service],
            set_node_on_first_message_only=True,
        ),
        resource_api_version=config_source_pb2.V3,
    )


def pack(message: Message) -> Any:
    """`message` in a google.protobuf.Any, serialised deterministically so equal input gives equal bytes."""
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed
