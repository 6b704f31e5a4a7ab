"""GatewayClass: which controller implements a class of Gateways.

Owns the GatewayClass type, its parser and the controller name rule: meshplane owns exactly the
classes whose `spec.controllerName` equals its own (`DEFAULT_CONTROLLER_NAME` unless configured).
Imports nothing heavy: the CLI reads `DEFAULT_CONTROLLER_NAME` and `controller_name_problem`
while it builds its parser.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshplane.discovery.gateway_api.fields import Fields, Parsed, metadata, subject_of
from meshplane.discovery.gateway_api.references import ParametersRef, parameters_ref

DEFAULT_CONTROLLER_NAME = "meshplane.io/gateway-controller"
# GatewayController in apis/v1/shared_types.go: a domain-prefixed path.
CONTROLLER_NAME = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[A-Za-z0-9/\-._~%!$&'()*+,;=:]+"
)


def controller_name_problem(name: str) -> str | None:
    """Why `name` cannot be a controller name (a domain-prefixed path of at most 253 characters), or None."""
    if len(name) <= 253 and CONTROLLER_NAME.fullmatch(name):
        return None
    return (
        f"the gateway controller name {name!r} is not a domain-prefixed path such as {DEFAULT_CONTROLLER_NAME}"
        " (at most 253 characters)"
    )


@dataclass(frozen=True, slots=True)
class GatewayClass:
    name: str
    generation: int
    controller_name: str
    parameters_ref: ParametersRef | None = None
    description: str | None = None


def parse_gateway_class(obj: Mapping[str, Any]) -> Parsed[GatewayClass]:
    """The GatewayClass of `obj` (the API server's JSON) and what is wrong with it; never raises."""
    _, name, generation = metadata(obj)
    fields = Fields(subject_of("GatewayClass", "", name))
    spec = fields.child(obj, "spec", "")
    path = "spec"
    controller = fields.text(spec, "controllerName", path, required=True, min_length=1, pattern=CONTROLLER_NAME)
    parameters = None
    if "parametersRef" in spec:
        parameters = parameters_ref(fields, fields.child(spec, "parametersRef", path), f"{path}.parametersRef")
    description = fields.text(spec, "description", path, max_length=64)
    value = GatewayClass(name, generation, controller or "", parameters, description)
    return Parsed(value, tuple(fields.problems))
