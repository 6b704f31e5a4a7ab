"""The conformance cases as data: one YAML file per upstream test in tests/conformance/cases/.

Owns the case format and its validation. A case says what upstream's Go test says, as facts:
the manifests it applies, the features it needs, the status it waits for and every request with
the response it expects. Its `steps` run in order; each step is one of `STEP_KEYS`:

- `accepted`: the Gateway is Programmed and each route has a parent status for it (for each of
  `listeners` when given) with Accepted True (upstream's GatewayAndHTTPRoutesMustBeAccepted);
- `resolved_refs`: each route's parent status for the Gateway has ResolvedRefs True;
- `route_condition`: the route's parent status for the Gateway has `condition`;
- `route_parents`: the route's parent status for the Gateway has exactly `conditions` (by type);
- `no_accepted_parents`: no parent status of the route has Accepted True;
- `zero_routes`: every listener of the Gateway has attachedRoutes 0;
- `listeners`: these listeners of the Gateway have these attachedRoutes, supported kinds (at
  least these; `[]`: none) and conditions (by default Accepted and ResolvedRefs True);
- `gateway_condition` / `listener_condition`: the Gateway (or one listener) has `condition`;
- `requests`: each request, sent to the Gateway, gets its expected response consistently (over
  TLS with `scheme: https`, trusting the certificate of Secret `ca_secret`, the SNI being
  `server_name` or the request's host);
- `distribution`: the request's answers spread over backends as `weights` say;
- `grpc_requests`: each unary gRPC call (`method` of upstream's GrpcEcho: Echo, EchoTwo or
  EchoThree; `metadata`; `authority`, else the Gateway's address and listener port), sent to the
  Gateway in plaintext HTTP/2, gets its expected answer consistently: status `code` (a gRPC status
  name, OK by default) and, when OK, the echo's fully qualified method, `namespace` (when given)
  and a pod named after `backend` (upstream's grpc ExpectedResponse and compareResponse);
- `grpc_distribution`: the gRPC call's answers spread over backends as `weights` say (as
  `distribution`, with `request` a gRPC call);
- `mesh_requests`: each request, sent from the mesh client pod of namespace `client` (a sidecar
  Envoy, tests/conformance/mesh_client.py) to the request's `host` (default `echo`) or, with `pod`
  (`ns/deployment`), to that pod's address and `pod_port`, gets its expected response
  consistently, compared as upstream's mesh client compares (status, the request headers the
  backend saw, response headers, the answering pod);
- `mesh_distribution`: as `distribution`, the request sent from the mesh client of `client`;
- `mirror_percentages`: once the request's answer is consistent, `total` more answered (`concurrency`
  at a time) make each of `mirrors` (`ns/name`: percent) receive that percent of copies, within
  `tolerance` percent of it; up to `attempts` rounds;
- `backend_header`: once the request's answer is consistent, each of `total` more answers says
  the backend saw exactly one `header`, and the pod that answered is named after its value;
- `pod_endpoint_slices`: the EndpointSlices `slices` (made by hand in the manifests) get the pods
  of Deployment `deployment` as their endpoints (a test that fills them with pod addresses);
- `latest_conditions`: every condition of the object (of each parent status, for a route) has
  the object's current generation as observedGeneration, and with `accepted` one is Accepted True;
- `patch`: a JSON patch to an object, which must change its generation (a test that changes what
  it applied: `object` is {apiVersion, kind, name, namespace?});
- `policy_condition`: the BackendTLSPolicy `policy` has, in its ancestor status for the Gateway,
  `condition` (upstream's BackendTLSPolicyMustHaveCondition);
- `websocket`: a WebSocket to the Gateway's `path` (upstream's golang.org/x/net/websocket Dial,
  origin `ws://gateway/…`) echoes the `text` message, then the `binary` one (a list of byte
  values), each time on a new connection until that holds consistently.

A condition is `{type, status, reason?}`; a missing reason matches any. Requests default as
upstream's ExpectedResponse does: method GET, status 200, and (without `expected_request`) the
backend must see the request as sent. `statuses` lists more allowed status codes (upstream's
StatusCodes); `response_header_values` gives each response header the values it may have (its
ValidHeaderValues), compared without whitespace with `ignore_whitespace`. `sni` (upstream's
Request.SNI, in `expected_request` too) is the TLS server name the backend must have been sent (a
BackendTLSPolicy's hostname); `fails: true` expects what upstream's MakeRequestAndExpectFailure
does: no answer, or a status outside 2xx, consistently; `protocol: h2c` sends the request over
HTTP/2 with prior knowledge (upstream's H2CPriorKnowledgeProtocol).
Must not: hold Go, or anything the Go test does not say.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CASES = Path(__file__).resolve().parent / "cases"
PROFILES = ("GATEWAY-HTTP", "GATEWAY-GRPC", "MESH-HTTP")
MAX_CASE_BYTES = 1 << 20
TOP_KEYS = {"test", "upstream", "profiles", "features", "manifests", "steps"}
REQUEST_KEYS = {
    "host", "path", "method", "headers", "unfollow_redirect", "backend_set_response_headers", "status",
    "backend", "namespace", "expected_request", "response_headers", "response_absent_headers", "redirect",
    "mirrored_to", "protocol", "statuses", "response_header_values", "ignore_whitespace", "pod", "pod_port",
    "sni", "fails",
}  # fmt: skip
EXPECTED_REQUEST_KEYS = {"host", "path", "method", "headers", "absent_headers", "sni"}
REQUEST_PROTOCOLS = ("", "h2c")  # HTTP/1.1 (or TLS with `scheme: https`), or HTTP/2 with prior knowledge
REDIRECT_KEYS = {"scheme", "host", "port", "path"}
CONDITION_KEYS = {"type", "status", "reason"}
LISTENER_KEYS = {"name", "attached_routes", "kinds", "conditions"}
# Each step kind: (required keys, optional keys).
STEP_KEYS: dict[str, tuple[set[str], set[str]]] = {
    "accepted": ({"gateway", "routes"}, {"listeners", "kind"}),
    "resolved_refs": ({"gateway", "routes"}, {"kind"}),
    "route_condition": ({"route", "gateway", "condition"}, {"kind"}),
    "route_parents": ({"route", "gateway", "conditions"}, {"kind"}),
    "no_accepted_parents": ({"route"}, {"kind"}),
    "zero_routes": ({"gateway"}, set()),
    "listeners": ({"gateway", "listeners"}, set()),
    "gateway_condition": ({"gateway", "condition"}, set()),
    "listener_condition": ({"gateway", "listener", "condition"}, set()),
    "requests": ({"gateway", "cases"}, {"listener_port", "scheme", "ca_secret", "server_name"}),
    "distribution": ({"gateway", "request", "total", "concurrency", "tolerance", "attempts", "weights"}, set()),
    "mesh_requests": ({"client", "cases"}, set()),
    "mesh_distribution": ({"client", "request", "total", "concurrency", "tolerance", "attempts", "weights"}, set()),
    "grpc_requests": ({"gateway", "cases"}, {"listener_port"}),
    "grpc_distribution": ({"gateway", "request", "total", "concurrency", "tolerance", "attempts", "weights"}, set()),
    "backend_header": ({"gateway", "request", "total", "header"}, set()),
    "pod_endpoint_slices": ({"deployment", "slices"}, set()),
    "mirror_percentages": ({"gateway", "request", "total", "concurrency", "tolerance", "attempts", "mirrors"}, set()),
    "latest_conditions": ({"kind", "name"}, {"accepted"}),
    "patch": ({"object", "json_patch"}, set()),
    "policy_condition": ({"policy", "gateway", "condition"}, set()),
    "websocket": ({"gateway", "path", "text", "binary"}, {"listener_port"}),
}
ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")
POLICY_KIND = "BackendTLSPolicy"  # a policy whose status is per ancestor (`status.ancestors`)
MESH_STEPS = ("mesh_requests", "mesh_distribution")  # steps whose requests come from a mesh client
GRPC_REQUEST_KEYS = {"method", "metadata", "authority", "code", "backend", "namespace"}
GRPC_SERVICE = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho"  # upstream's echo service
GRPC_METHODS = ("Echo", "EchoTwo", "EchoThree")
# grpc.StatusCode's names (the case format does not import grpc).
GRPC_CODES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip


class CaseError(ValueError):
    """A case file that is not a valid case; the message lists every problem, one per line."""


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str = ""

    def holds(self, found: Mapping[str, Any]) -> bool:
        return (
            found.get("type") == self.type
            and found.get("status") == self.status
            and (not self.reason or found.get("reason") == self.reason)
        )


@dataclass(frozen=True)
class ExpectedRequest:
    """What must reach the backend (upstream's ExpectedRequest)."""

    host: str = ""
    path: str = ""
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    absent_headers: tuple[str, ...] = ()
    sni: str = ""


@dataclass(frozen=True)
class Redirect:
    """The Location a redirect must carry; an empty part is defaulted as upstream does."""

    scheme: str = ""
    host: str = ""
    port: str = ""
    path: str = ""


@dataclass(frozen=True)
class RequestCase:
    """One request and its expected response (upstream's ExpectedResponse)."""

    path: str
    host: str = ""
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    unfollow_redirect: bool = False
    backend_set_response_headers: tuple[tuple[str, str], ...] = ()
    status: int = 200
    backend: str = ""
    namespace: str = ""
    expected_request: ExpectedRequest | None = None
    response_headers: tuple[tuple[str, str], ...] = ()
    response_absent_headers: tuple[str, ...] = ()
    redirect: Redirect | None = None
    mirrored_to: tuple[tuple[str, str], ...] = ()
    statuses: tuple[int, ...] = ()
    response_header_values: tuple[tuple[str, tuple[str, ...]], ...] = ()
    ignore_whitespace: bool = False
    pod: str = ""  # mesh requests: `ns/deployment`, whose pod's address the request goes to
    pod_port: int = 0
    sni: str = ""
    fails: bool = False
    protocol: str = ""

    def allowed_statuses(self) -> tuple[int, ...]:
        """Upstream's StatusCodes with StatusCode appended; 200 when neither is given."""
        return (*self.statuses, self.status)

    def backend_sees(self) -> ExpectedRequest:
        """What the backend must see: `expected_request`, or the request as sent."""
        if self.expected_request is not None:
            return self.expected_request
        return ExpectedRequest(self.host, self.path, self.method, self.headers, sni=self.sni)

    def describe(self) -> str:
        with_headers = " with headers" if self.headers else ""
        return f"{self.method} {self.host}{self.path}{with_headers}"


@dataclass(frozen=True)
class GrpcRequest:
    """One unary call to upstream's gRPC echo and its expected answer (upstream's grpc
    ExpectedResponse: one of EchoRequest, EchoTwoRequest, EchoThreeRequest; RequestMetadata;
    Response.Code; Backend; Namespace)."""

    method: str
    metadata: tuple[tuple[str, str], ...] = ()
    authority: str = ""
    code: str = "OK"
    backend: str = ""
    namespace: str = ""

    @property
    def full_method(self) -> str:
        return f"/{GRPC_SERVICE}/{self.method}"

    def describe(self) -> str:
        """As upstream names the subtest: the authority, the method and the metadata, sorted."""
        with_metadata = ""
        if self.metadata:
            with_metadata = " with headers '{" + ",".join(f"{k}:{v}" for k, v in sorted(self.metadata)) + "}'"
        return f"request to '{self.authority}{self.full_method}'{with_metadata}"


@dataclass(frozen=True)
class Step:
    kind: str
    spec: Mapping[str, Any]
    requests: tuple[RequestCase, ...] = ()
    grpc_requests: tuple[GrpcRequest, ...] = ()


@dataclass(frozen=True)
class Case:
    test: str
    upstream: str
    summary: str
    profiles: tuple[str, ...]
    features: tuple[str, ...]
    manifests: tuple[str, ...]
    steps: tuple[Step, ...]
    path: Path = field(compare=False)

    def gateways(self) -> list[str]:
        """Every Gateway (`ns/name`) a step names, in first-named order."""
        found: list[str] = []
        for step in self.steps:
            gateway = step.spec.get("gateway")
            if isinstance(gateway, str) and gateway not in found:
                found.append(gateway)
        return found


def named_objects(case: Case) -> set[tuple[str, str]]:
    """Every (kind, `ns/name`) a case's steps name: Gateways, routes, mirror target Services and
    BackendTLSPolicies."""
    found: set[tuple[str, str]] = set()
    for step in case.steps:
        route_kind = str(step.spec.get("kind", "HTTPRoute"))
        if isinstance(step.spec.get("gateway"), str):
            found.add(("Gateway", step.spec["gateway"]))
        if step.kind == "latest_conditions" and step.spec["kind"] != "GatewayClass":
            found.add((str(step.spec["kind"]), str(step.spec["name"])))
        for route in [*step.spec.get("routes", []), *([step.spec["route"]] if "route" in step.spec else [])]:
            found.add((route_kind, str(route)))
        for request in step.requests:
            found.update(("Service", f"{namespace}/{name}") for namespace, name in request.mirrored_to)
        if step.kind == "mirror_percentages":
            found.update(("Service", str(target)) for target in step.spec["mirrors"])
        if step.kind == "policy_condition":
            found.add((POLICY_KIND, str(step.spec["policy"])))
    return found


def split_name(text: str) -> tuple[str, str]:
    namespace, _, name = text.partition("/")
    return namespace, name


def _pairs(value: Any, where: str, problems: list[str]) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        problems.append(f"{where}: must be a mapping of names to strings")
        return ()
    return tuple((k, str(v)) for k, v in value.items())


def _names(value: Any, where: str, problems: list[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"{where}: must be a list of strings")
        return ()
    return tuple(value)


def _namespaced(value: Any, where: str, problems: list[str]) -> None:
    if not isinstance(value, str) or value.count("/") != 1 or not all(split_name(value)):
        problems.append(f"{where}: {value!r} is not NAMESPACE/NAME")


def _is_label(value: Any) -> bool:
    """A Kubernetes namespace name: an RFC 1123 label."""
    return isinstance(value, str) and re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value) is not None


def _condition(value: Any, where: str, problems: list[str]) -> None:
    if not isinstance(value, dict) or not {"type", "status"} <= set(value) or set(value) - CONDITION_KEYS:
        problems.append(f"{where}: a condition is {{type, status, reason?}}, not {value!r}")
    elif value["status"] not in ("True", "False", "Unknown"):
        problems.append(f"{where}: status {value['status']!r} is not True, False or Unknown (quote it in YAML)")


def parse_request(raw: Any, where: str, problems: list[str]) -> RequestCase | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: a request is a mapping")
        return None
    unknown = set(raw) - REQUEST_KEYS
    if unknown:
        problems.append(f"{where}: unknown keys {sorted(unknown)}")
    pod_port = raw.get("pod_port", 0)
    if "pod" in raw:
        _namespaced(raw["pod"], f"{where}.pod", problems)
        if not isinstance(pod_port, int) or not 0 < pod_port < 65536:
            problems.append(f"{where}.pod_port: the pod's port the request names, not {pod_port!r}")
    elif "pod_port" in raw:
        problems.append(f"{where}.pod_port: only with `pod`")
    if raw.get("protocol", "") not in REQUEST_PROTOCOLS:
        problems.append(f"{where}.protocol: {raw['protocol']!r} is not one of {list(REQUEST_PROTOCOLS)}")
    if not isinstance(raw.get("path"), str) or not raw["path"].startswith("/"):
        problems.append(f"{where}: path must start with /")
        return None
    expected = None
    if (er := raw.get("expected_request")) is not None:
        if not isinstance(er, dict) or set(er) - EXPECTED_REQUEST_KEYS:
            problems.append(f"{where}.expected_request: keys must be among {sorted(EXPECTED_REQUEST_KEYS)}")
        else:
            expected = ExpectedRequest(
                str(er.get("host", "")),
                str(er.get("path", "")),
                str(er.get("method", "GET")),
                _pairs(er.get("headers"), f"{where}.expected_request.headers", problems),
                _names(er.get("absent_headers"), f"{where}.expected_request.absent_headers", problems),
                str(er.get("sni", "")),
            )
    redirect = None
    if (rd := raw.get("redirect")) is not None:
        if not isinstance(rd, dict) or set(rd) - REDIRECT_KEYS:
            problems.append(f"{where}.redirect: keys must be among {sorted(REDIRECT_KEYS)}")
        else:
            redirect = Redirect(**{k: str(v) for k, v in rd.items()})
    mirrored: list[tuple[str, str]] = []
    for index, target in enumerate(raw.get("mirrored_to") or []):
        _namespaced(target, f"{where}.mirrored_to[{index}]", problems)
        if isinstance(target, str):
            mirrored.append(split_name(target))
    statuses = raw.get("statuses", [])
    status = raw.get("status", statuses[0] if isinstance(statuses, list) and statuses else 200)
    if not isinstance(statuses, list):
        problems.append(f"{where}: statuses must be a list of HTTP status codes")
        statuses = []
    for code in [status, *statuses]:
        if not isinstance(code, int) or not 100 <= code <= 599:
            problems.append(f"{where}: status {code!r} is not an HTTP status code")
    if not isinstance(status, int):
        status = 200
    valid_values: list[tuple[str, tuple[str, ...]]] = []
    raw_values = raw.get("response_header_values") or {}
    if not isinstance(raw_values, dict) or not all(
        isinstance(values, list) and values and all(isinstance(v, str) for v in values)
        for values in raw_values.values()
    ):
        problems.append(f"{where}.response_header_values: a mapping of names to non-empty lists of strings")
    else:
        valid_values = [(str(name), tuple(values)) for name, values in raw_values.items()]
    return RequestCase(
        path=raw["path"],
        host=str(raw.get("host", "")),
        method=str(raw.get("method", "GET")),
        headers=_pairs(raw.get("headers"), f"{where}.headers", problems),
        unfollow_redirect=bool(raw.get("unfollow_redirect", False)),
        backend_set_response_headers=_pairs(
            raw.get("backend_set_response_headers"), f"{where}.backend_set_response_headers", problems
        ),
        status=status,
        backend=str(raw.get("backend", "")),
        namespace=str(raw.get("namespace", "")),
        expected_request=expected,
        response_headers=_pairs(raw.get("response_headers"), f"{where}.response_headers", problems),
        response_absent_headers=_names(
            raw.get("response_absent_headers"), f"{where}.response_absent_headers", problems
        ),
        redirect=redirect,
        mirrored_to=tuple(mirrored),
        statuses=tuple(code for code in statuses if isinstance(code, int)),
        response_header_values=tuple(valid_values),
        ignore_whitespace=bool(raw.get("ignore_whitespace", False)),
        pod=str(raw.get("pod", "")),
        pod_port=pod_port if isinstance(pod_port, int) else 0,
        sni=str(raw.get("sni", "")),
        fails=bool(raw.get("fails", False)),
        protocol=str(raw.get("protocol", "")),
    )


def parse_grpc_request(raw: Any, where: str, problems: list[str]) -> GrpcRequest | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: a gRPC request is a mapping")
        return None
    if unknown := set(raw) - GRPC_REQUEST_KEYS:
        problems.append(f"{where}: unknown keys {sorted(unknown)}")
    method, code = raw.get("method"), raw.get("code", "OK")
    if method not in GRPC_METHODS:
        problems.append(f"{where}: method must be one of {list(GRPC_METHODS)}, not {method!r}")
        return None
    if code not in GRPC_CODES:
        problems.append(f"{where}: code {code!r} is not a gRPC status name (one of {', '.join(GRPC_CODES)})")
    return GrpcRequest(
        method=str(method),
        metadata=_pairs(raw.get("metadata"), f"{where}.metadata", problems),
        authority=str(raw.get("authority", "")),
        code=str(code),
        backend=str(raw.get("backend", "")),
        namespace=str(raw.get("namespace", "")),
    )


def parse_step(raw: Any, where: str, problems: list[str]) -> Step | None:
    if not isinstance(raw, dict) or len(raw) != 1:
        problems.append(f"{where}: a step is a mapping with one key, one of {sorted(STEP_KEYS)}")
        return None
    ((kind, spec),) = raw.items()
    if kind not in STEP_KEYS:
        problems.append(f"{where}: unknown step {kind!r} (one of {sorted(STEP_KEYS)})")
        return None
    if not isinstance(spec, dict):
        problems.append(f"{where}.{kind}: must be a mapping")
        return None
    required, optional = STEP_KEYS[kind]
    if missing := required - set(spec):
        problems.append(f"{where}.{kind}: missing {sorted(missing)}")
    if unknown := set(spec) - required - optional:
        problems.append(f"{where}.{kind}: unknown keys {sorted(unknown)}")
    if kind == "latest_conditions" and spec.get("kind") not in ("GatewayClass", "Gateway", *ROUTE_KINDS, POLICY_KIND):
        problems.append(
            f"{where}.latest_conditions.kind: one of GatewayClass, Gateway, {', '.join(ROUTE_KINDS)}, {POLICY_KIND}"
        )
    if kind == "policy_condition":
        _namespaced(spec.get("policy"), f"{where}.policy_condition.policy", problems)
    if kind == "websocket" and (
        not isinstance(spec.get("binary"), list)
        or not all(isinstance(b, int) and 0 <= b <= 255 for b in spec["binary"])
        or not isinstance(spec.get("text"), str)
        or not str(spec.get("path", "")).startswith("/")
    ):
        problems.append(f"{where}.websocket: `path` starts with /, `text` is a string, `binary` a list of byte values")
    if kind == "patch" and (
        not isinstance(spec.get("object"), dict) or not {"apiVersion", "kind", "name"} <= set(spec["object"])
    ):
        problems.append(f"{where}.patch.object: {{apiVersion, kind, name, namespace?}}")
    if kind == "requests" and spec.get("scheme", "http") not in ("http", "https"):
        problems.append(f"{where}.requests.scheme: http or https")
    if kind == "requests" and spec.get("scheme") == "https" and "ca_secret" not in spec:
        problems.append(f"{where}.requests: https needs ca_secret, the Secret whose certificate to trust")
    if kind == "patch" and not isinstance(spec.get("json_patch"), list):
        problems.append(f"{where}.patch.json_patch: a list of JSON patch operations")
    for key in ("gateway", "route"):
        if key in spec:
            _namespaced(spec[key], f"{where}.{kind}.{key}", problems)
    for index, target in enumerate(spec.get("slices") or [] if kind == "pod_endpoint_slices" else []):
        _namespaced(target, f"{where}.{kind}.slices[{index}]", problems)
    if kind == "pod_endpoint_slices" and "deployment" in spec:
        _namespaced(spec["deployment"], f"{where}.{kind}.deployment", problems)
    for index, route in enumerate(spec.get("routes") or []):
        _namespaced(route, f"{where}.{kind}.routes[{index}]", problems)
    if kind != "latest_conditions" and spec.get("kind", "HTTPRoute") not in ROUTE_KINDS:
        problems.append(f"{where}.{kind}.kind: one of {ROUTE_KINDS}")
    if "condition" in spec:
        _condition(spec["condition"], f"{where}.{kind}.condition", problems)
    for index, condition in enumerate(spec.get("conditions") or []):
        _condition(condition, f"{where}.{kind}.conditions[{index}]", problems)
    for index, listener in enumerate(spec.get("listeners") or [] if kind == "listeners" else []):
        if not isinstance(listener, dict) or "name" not in listener or set(listener) - LISTENER_KEYS:
            problems.append(f"{where}.listeners[{index}]: {{name, attached_routes?, kinds?, conditions?}}")
            continue
        for number, condition in enumerate(listener.get("conditions") or []):
            _condition(condition, f"{where}.listeners[{index}].conditions[{number}]", problems)
    requests: list[RequestCase] = []
    if kind in ("mesh_requests", "mesh_distribution") and not _is_label(spec.get("client")):
        problems.append(f"{where}.{kind}.client: the client pod's namespace, not {spec.get('client')!r}")
    if kind in MESH_STEPS and spec.get("kind", "HTTPRoute") != "HTTPRoute":
        problems.append(f"{where}.{kind}.kind: mesh requests are HTTP")
    if kind in ("requests", "mesh_requests"):
        cases = spec.get("cases")
        if not isinstance(cases, list) or not cases:
            problems.append(f"{where}.{kind}.cases: a non-empty list")
        for index, request in enumerate(cases or []):
            if (parsed := parse_request(request, f"{where}.{kind}.cases[{index}]", problems)) is not None:
                requests.append(parsed)
    if kind == "mirror_percentages":
        mirrors = spec.get("mirrors")
        if not isinstance(mirrors, dict) or not mirrors:
            problems.append(f"{where}.mirror_percentages.mirrors: a mapping of NAMESPACE/NAME to a percent")
        for target, percent in (mirrors or {}).items() if isinstance(mirrors, dict) else ():
            _namespaced(target, f"{where}.mirror_percentages.mirrors", problems)
            if not isinstance(percent, int | float) or not 0 < percent <= 100:
                problems.append(f"{where}.mirror_percentages.mirrors[{target}]: {percent!r} is not a percent above 0")
    if kind in ("distribution", "backend_header", "mirror_percentages", "mesh_distribution") and (
        parsed := parse_request(spec.get("request"), f"{where}.{kind}.request", problems)
    ):
        requests.append(parsed)
    if kind not in MESH_STEPS and any(request.pod for request in requests):
        problems.append(f"{where}.{kind}: `pod` is for mesh requests only")
    if kind != "requests" and any(request.fails or request.protocol for request in requests):
        problems.append(f"{where}.{kind}: `fails` and `protocol` are for `requests` steps only")
    calls: list[GrpcRequest] = []
    if kind == "grpc_requests":
        cases = spec.get("cases")
        if not isinstance(cases, list) or not cases:
            problems.append(f"{where}.grpc_requests.cases: a non-empty list")
        for index, call in enumerate(cases or [] if isinstance(cases, list) else []):
            if (parsed_call := parse_grpc_request(call, f"{where}.grpc_requests.cases[{index}]", problems)) is not None:
                calls.append(parsed_call)
    if kind == "grpc_distribution" and (
        parsed_call := parse_grpc_request(spec.get("request"), f"{where}.grpc_distribution.request", problems)
    ):
        calls.append(parsed_call)
    return Step(kind, spec, tuple(requests), tuple(calls))


def load_case(path: Path) -> Case:
    """The case in `path`; CaseError listing every problem (`path: where: reason`) otherwise."""
    text = path.read_text()
    if len(text) > MAX_CASE_BYTES:
        raise CaseError(f"{path}: larger than {MAX_CASE_BYTES} bytes")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CaseError(f"{path}: not YAML: {error}") from None
    if not isinstance(raw, dict):
        raise CaseError(f"{path}: a case is a mapping")
    problems: list[str] = []
    if missing := {"test", "upstream", "profiles", "features", "manifests", "steps"} - set(raw):
        problems.append(f"missing {sorted(missing)}")
    if unknown := set(raw) - TOP_KEYS:
        problems.append(f"unknown keys {sorted(unknown)}")
    summary = text.splitlines()[0].removeprefix("#").strip() if text.startswith("#") else ""
    if not summary:
        problems.append("the first line must be a `# one-line summary`")
    profiles = _names(raw.get("profiles"), "profiles", problems)
    if bad := [p for p in profiles if p not in PROFILES]:
        problems.append(f"profiles: {bad} not among {PROFILES}")
    upstream = str(raw.get("upstream", ""))
    if not (upstream.startswith("conformance/tests/") and upstream.endswith(".go")):
        problems.append(f"upstream: {upstream!r} is not conformance/tests/<name>.go")
    steps = []
    for index, step in enumerate(raw.get("steps") or []):
        if (parsed := parse_step(step, f"steps[{index}]", problems)) is not None:
            steps.append(parsed)
    if not steps:
        problems.append("steps: a non-empty list")
    if problems:
        raise CaseError("\n".join(f"{path}: {problem}" for problem in problems))
    return Case(
        test=str(raw["test"]),
        upstream=upstream,
        summary=summary,
        profiles=profiles,
        features=_names(raw.get("features"), "features", problems),
        manifests=_names(raw.get("manifests"), "manifests", problems),
        steps=tuple(steps),
        path=path,
    )


def load_cases(folder: Path = CASES) -> list[Case]:
    """Every case in `folder`, by file name."""
    return [load_case(path) for path in sorted(folder.glob("*.yaml"))]
