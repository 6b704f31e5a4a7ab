"""Small builders of the Envoy and protobuf pieces every resource uses: durations, wrappers,
config sources, typed extensions.

Owns the clamping that keeps a valid model from crashing protobuf: the model bounds few numbers
from above (a circuit breaker limit or a weight may be any non-negative int, a duration any
positive float), while the wire types are uint32 and bounded Durations. Must stay pure.
"""

from __future__ import annotations

import math
from typing import Any

from envoy.config.core.v3 import config_source_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

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


def ads() -> Any:
    """The ConfigSource every meshplane reference uses: the same ADS stream, API v3."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def pack(message: Message) -> Any:
    """`message` in a google.protobuf.Any, serialised deterministically so equal input gives equal bytes."""
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed
