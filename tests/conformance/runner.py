"""Runs the conformance cases against the real meshplane: `python -m tests.conformance`.

Owns one run: a real kube-apiserver and etcd (tests/k8s/real_apiserver.py) with the Gateway API
standard CRDs, the suite's base manifests and a GatewayClass; echo stand-ins for the backends
(echo.py, grpc_echo.py) with their EndpointSlices (cluster.py); `meshplane serve --kubernetes --gateway-api
--kubernetes-secrets` once per run (tests/serve_process.py); and a real Envoy per Gateway a case
names (started on first use, kept for the run), bootstrapped by
`meshplane bootstrap gateway --gateway NS/NAME --listen-address 127.0.0.x --port-offset N`;
for the mesh cases, upstream's mesh base manifests and a sidecar Envoy per client namespace
(mesh_client.py, which says how mesh requests go and compare).

For each case: apply its manifests, wait for the status it expects, send its requests until the
expected response holds `CONSECUTIVE` times in a row (upstream's eventual consistency) within a
deadline, then delete what it applied. Every wait polls a condition and, at its deadline, fails
showing what it last saw. A case needing a feature the run does not claim is "not supported"
with the reason, as upstream skips it; so is one needing a feature meshplane does not implement
(`UNCLAIMED_FEATURES`), claimed or not. Results: a table on stdout and a JSON file.

A Gateway's Envoy listens on its own loopback address with every listener port shifted by the
offset (ports below 1024 need root); requests keep upstream's Host header (the Gateway's address,
with the listener port unless the scheme implies it). Redirects are never followed (traffic stays
on 127.0.0.x). gRPC calls (grpcio, plaintext HTTP/2, a new connection per call) carry upstream's
:authority: the case's, else the Gateway's address with the listener port, as grpc-go dials it.
An h2c request (`protocol: h2c`) goes on a new HTTP/2 connection with prior knowledge
(h2c_echo.py), its Host as :authority; a WebSocket step dials with aiohttp's client.

Must not: change meshplane, or send traffic anywhere but 127.0.0.x.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import grpc
from yarl import URL

from tests.conformance.cases import (
    MESH_STEPS,
    POLICY_KIND,
    ROUTE_KINDS,
    Case,
    Condition,
    GrpcRequest,
    RequestCase,
    Step,
    load_cases,
    named_objects,
    split_name,
)
from tests.conformance.cluster import (
    BASE_MANIFESTS,
    CONTROLLER_NAME,
    DEFAULT_CLASS,
    Applied,
    ClusterState,
    StandIn,
    absent_objects,
    as_served_endpoint_slice,
    endpoint_slices,
    gateway_class,
    is_own_manifest,
    load_manifests,
    loopback_addresses,
    manifest_path,
    namespaces_of,
    start_stand_ins,
    suite_secrets,
)
from tests.conformance.echo import HTTP_PORT, KEPT_REQUESTS, EchoBackend, EchoFleet
from tests.conformance.grpcecho.grpcecho_pb2 import EchoRequest, EchoResponse
from tests.conformance.h2c_echo import h2c_request
from tests.conformance.mesh_client import (
    MESH_MANIFESTS,
    MeshClient,
    compare_mesh,
    mesh_target,
    start_mesh_client,
    start_mesh_stand_ins,
)
from tests.envoy_harness import REPO, envoy_binary
from tests.k8s.gateway_api_crds import apply_standard_crds
from tests.k8s.real_apiserver import ADMIN_TOKEN, KUBE_MISSING, Cluster, binaries, call, start_cluster
from tests.ports import free_port
from tests.serve_process import ServeProcess, serve

GROUP = "gateway.networking.k8s.io"
JSON_PATCH = "application/json-patch+json"
CONSECUTIVE = 3  # upstream's RequiredConsecutiveSuccesses
POLL = 0.25  # seconds between two looks at a condition that does not hold yet
TIMEOUT_STATUSES = (408, 504)  # upstream counts either as "a timeout" when a timeout is expected
GRPC_CALL_TIMEOUT = 15.0  # seconds for one gRPC call, as the HTTP session's total timeout
H2C_TIMEOUT = 15.0  # seconds for one h2c request, as the HTTP session's total timeout
WEBSOCKET_TIMEOUT = 15.0  # seconds for a WebSocket's handshake, and for each echo to come back
# What the run claims unless told otherwise: the Core features of the GATEWAY-HTTP and GATEWAY-GRPC
# profiles, and of MESH-HTTP (Mesh, HTTPRoute).
CORE_FEATURES = frozenset({"Gateway", "HTTPRoute", "ReferenceGrant", "GRPCRoute", "Mesh"})
FIRST_ECHO_ADDRESS = 10  # 127.0.0.10 on: stand-ins (127.0.0.1 is everyone else's)
FIRST_GATEWAY_ADDRESS = 200  # 127.0.0.200 on: Gateways' Envoys
# Features meshplane does not implement, with why: a case needing one is "not supported", claimed or not.
UNCLAIMED_FEATURES = {
    "MeshClusterIPMatching": (
        "meshplane's sidecar routes a service's traffic by the Host header the app sends to its "
        "outbound listener (docs/deploy.md), not by the destination's cluster IP"
    ),
}


class Mismatch(AssertionError):
    """What a case found instead of what it expected (the first mismatch ends the case)."""


class NotSupported(Exception):
    """The case cannot run here; the message says why."""


@dataclass
class Result:
    test: str
    profiles: list[str]
    features: list[str]
    result: str  # passed | failed | not supported
    detail: str = ""
    seconds: float = 0.0
    # The case's manifests that are ours (tests/conformance/manifests/), not the shared copy's.
    own_manifests: list[str] = field(default_factory=list)


@dataclass
class Options:
    workdir: Path
    gateway_class: str = DEFAULT_CLASS
    features: frozenset[str] = CORE_FEATURES
    only: tuple[str, ...] = ()
    profile: str = ""
    status_deadline: float = 60.0
    consistency_deadline: float = 30.0


async def until(check: Callable[[], Awaitable[tuple[bool, Any]]], what: str, deadline: float) -> Any:
    """Polls `check` (which returns (holds, what it saw)) until it holds; Mismatch after
    `deadline` seconds, showing what it last saw."""
    end = time.monotonic() + deadline
    while True:
        holds, seen = await check()
        if holds:
            return seen
        if time.monotonic() > end:
            raise Mismatch(f"timed out after {deadline:g}s waiting for {what}; last seen: {seen}")
        await asyncio.sleep(POLL)


# ---- status --------------------------------------------------------------------------------------


def conditions_of(status_holder: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(status_holder.get("conditions") or [])


def route_parents(route: Mapping[str, Any], gateway: str) -> list[dict[str, Any]]:
    """The route's parent statuses naming `gateway` (`ns/name`; an omitted namespace is the route's)."""
    namespace, name = split_name(gateway)
    found = []
    for parent in (route.get("status") or {}).get("parents") or []:
        ref = parent.get("parentRef") or {}
        if (
            ref.get("name") == name
            and ref.get("namespace", route["metadata"]["namespace"]) == namespace
            and ref.get("kind", "Gateway") == "Gateway"
            and ref.get("group", GROUP) == GROUP
        ):
            found.append(parent)
    return found


def has_condition(conditions: list[dict[str, Any]], wanted: Condition) -> bool:
    return any(wanted.holds(c) for c in conditions)


def latest_generation(obj: Mapping[str, Any], conditions: list[dict[str, Any]]) -> bool:
    generation = obj["metadata"].get("generation")
    return bool(conditions) and all(c.get("observedGeneration") == generation for c in conditions)


# ---- requests ------------------------------------------------------------------------------------


@dataclass
class Captured:
    status: int
    headers: dict[str, list[str]]  # lower-case names
    echo: dict[str, Any] | None
    location: str


def _same_value(got: str, want: str, ignore_whitespace: bool) -> bool:
    if ignore_whitespace:
        return "".join(got.split()) == "".join(want.split())
    return got == want


def compare(case: RequestCase, captured: Captured, sent_path: str, sent_scheme: str = "http") -> str:
    """The first difference between `captured` and what `case` expects ("" when none), in the
    order and with the defaults of upstream's CompareRequest."""
    allowed = case.allowed_statuses()
    if captured.status in TIMEOUT_STATUSES and any(status in TIMEOUT_STATUSES for status in allowed):
        return ""
    if captured.status not in allowed:
        if len(allowed) == 1:
            return f"expected status code to be {case.status}, got {captured.status}"
        return f"expected status code to be one of {list(allowed)}, got {captured.status}"
    if captured.status == 200:
        # A 200 without an echo body (a preflight the proxy answered itself): upstream's round
        # tripper then knows only the method it sent.
        empty = {"method": case.method, "path": "", "host": "", "namespace": "", "pod": "", "headers": {}}
        echo = captured.echo if captured.echo is not None else empty
        expected = case.backend_sees()
        if expected.host and expected.host != echo.get("host"):
            return f"expected host to be {expected.host}, got {echo.get('host')}"
        if expected.path != echo.get("path"):
            return f"expected path to be {expected.path}, got {echo.get('path')}"
        if expected.method != echo.get("method"):
            return f"expected method to be {expected.method}, got {echo.get('method')}"
        if case.namespace != echo.get("namespace"):
            return f"expected namespace to be {case.namespace}, got {echo.get('namespace')}"
        if expected.sni and expected.sni != echo.get("sni"):
            return f"expected SNI to be {expected.sni}, got {echo.get('sni')}"
        seen = {name.lower(): values for name, values in (echo.get("headers") or {}).items()}
        for name, value in expected.headers:
            if name.lower() not in seen:
                return f"expected {name} header to be set, actual headers: {seen}"
            if ",".join(seen[name.lower()]) != value:
                return f"expected {name} header to be set to {value}, got {','.join(seen[name.lower()])}"
        for name, value in case.response_headers:
            if name.lower() not in captured.headers:
                return f"expected {name} response header to be set, actual headers: {captured.headers}"
            if ",".join(captured.headers[name.lower()]) != value:
                return f"expected {name} response header to be {value}, got {','.join(captured.headers[name.lower()])}"
        for name, values in case.response_header_values:
            if name.lower() not in captured.headers:
                return f"expected {name} response header to be set, actual headers: {captured.headers}"
            got = ",".join(captured.headers[name.lower()])
            if not any(_same_value(got, value, case.ignore_whitespace) for value in values):
                return f"expected {name} response header to be one of {list(values)}, got {got}"
        for name in case.response_absent_headers:
            if name.lower() in captured.headers:
                return f"expected {name} response header to not be set, got {captured.headers[name.lower()]}"
        for name in expected.absent_headers:
            if name.lower() in seen:
                return f"expected {name} header to not be set, got {seen[name.lower()]}"
        if not str(echo.get("pod", "")).startswith(case.backend):
            return f"expected pod name to start with {case.backend}, got {echo.get('pod')}"
    elif 300 <= captured.status < 400 and case.redirect is not None:
        location = urlsplit(captured.location)
        got_port = str(location.port) if location.port else ""
        want = case.redirect
        host = want.host or (location.hostname or "")
        scheme = want.scheme or sent_scheme
        path = want.path or sent_path.split("?", 1)[0]
        if host != (location.hostname or ""):
            return f"expected redirected hostname to be {host!r}, got {location.hostname!r}"
        if want.port:
            if want.port != got_port:
                return f"expected redirected port to be {want.port!r}, got {got_port!r}"
        elif location.scheme.lower() == "http" and got_port not in ("", "80"):
            return f"for http scheme, expected redirected port to be 80 or not set, got {got_port!r}"
        elif location.scheme.lower() == "https" and got_port not in ("", "443"):
            return f"for https scheme, expected redirected port to be 443 or not set, got {got_port!r}"
        if scheme != location.scheme:
            return f"expected redirected scheme to be {scheme!r}, got {location.scheme!r}"
        if path != location.path:
            return f"expected redirected path to be {path!r}, got {location.path!r}"
    return ""


@dataclass(frozen=True)
class GrpcAnswer:
    """A unary call's outcome: the status name and, when OK, the echo's response."""

    code: str
    response: EchoResponse | None = None
    details: str = ""


def compare_grpc(rpc: GrpcRequest, answer: GrpcAnswer) -> str:
    """The first difference between `answer` and what `call` expects ("" when none), in the order
    of upstream's grpc compareResponse: the status code, then (when OK) the fully qualified method,
    the namespace (when expected) and the pod's name prefix."""
    if answer.code != rpc.code:
        return f"expected status code to be {rpc.code}, but got {answer.code} ({answer.details})"
    if answer.code != "OK":
        return ""
    assertions = answer.response.assertions if answer.response is not None else None
    method = assertions.fully_qualified_method if assertions is not None else ""
    namespace = assertions.context.namespace if assertions is not None else ""
    pod = assertions.context.pod if assertions is not None else ""
    if method != rpc.full_method:
        return f"expected path to be {rpc.full_method}, got {method}"
    if rpc.namespace and rpc.namespace != namespace:
        return f"expected namespace to be {rpc.namespace}, got {namespace}"
    if not pod.startswith(rpc.backend):
        return f"expected pod name to start with {rpc.backend}, got {pod}"
    return ""


async def send_grpc(target: str, authority: str, rpc: GrpcRequest) -> GrpcAnswer:
    """Makes `call` on a new plaintext HTTP/2 connection to `target` with `authority` as its
    :authority (as upstream's DefaultClient dials once per expected response). Metadata names go
    lower-case, as Go's metadata.New makes them."""
    options = [("grpc.default_authority", authority)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        unary = channel.unary_unary(
            rpc.full_method,
            request_serializer=EchoRequest.SerializeToString,
            response_deserializer=EchoResponse.FromString,
        )
        metadata = tuple((name.lower(), value) for name, value in rpc.metadata)
        try:
            response = await unary(EchoRequest(), metadata=metadata, timeout=GRPC_CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            return GrpcAnswer(error.code().name, None, error.details() or "")
        return GrpcAnswer("OK", response)


def weight_problems(seen: Mapping[str, int], weights: Mapping[str, float], total: int, tolerance: float) -> list[str]:
    """Why the answers counted in `seen` (by backend) do not spread as `weights` say, as upstream's
    TestWeightedDistribution judges: only the backends of non-zero weight answered, and each one's
    share is within `tolerance` of its weight."""
    problems = []
    expected_backends = [b for b, w in weights.items() if w > 0]
    if len(seen) != len(expected_backends):
        problems.append(f"expected only {len(expected_backends)} backends to receive traffic, saw {dict(seen)}")
    for backend, want in weights.items():
        got = seen.get(backend, 0) / float(total)
        if abs(got - want) > tolerance:
            problems.append(f"backend {backend!r} got {got:.3f} of the traffic, want {want} ± {tolerance}")
    return problems


async def weighted_rounds(spec: Mapping[str, Any], ask: Callable[[], Awaitable[tuple[str, str]]]) -> None:
    """Upstream's distribution check, for requests or calls alike: up to `spec["attempts"]` rounds
    of `spec["total"]` asks, `spec["concurrency"]` at a time, until a round spreads over the
    backends as `spec["weights"]` say (see `weight_problems`). `ask` sends one and returns the
    answering pod, or a problem with its answer. Raises Mismatch with the last round's problems."""
    weights = {k: float(v) for k, v in spec["weights"].items()}
    total, problems = int(spec["total"]), ["no round ran"]
    for _ in range(int(spec["attempts"])):
        seen: dict[str, int] = {}
        gate = asyncio.Semaphore(int(spec["concurrency"]))

        async def one(gate: asyncio.Semaphore = gate, seen: dict[str, int] = seen) -> str:
            async with gate:
                pod, problem = await ask()
            if problem:
                return problem
            backend = next((b for b in weights if pod.startswith(b)), None)
            if backend is None:
                return f"request was handled by an unexpected pod {pod!r}"
            seen[backend] = seen.get(backend, 0) + 1
            return ""

        failures = [f for f in await asyncio.gather(*(one() for _ in range(total))) if f]
        problems = failures[:1] + weight_problems(seen, weights, total, float(spec["tolerance"]))
        if not problems:
            return
    raise Mismatch(f"weighted distribution failed {spec['attempts']} times; last: {'; '.join(problems)}")


@dataclass
class GatewayProxy:
    """A Gateway's Envoy: where to send requests, and the Host upstream would send."""

    name: str
    address: str
    offset: int
    listener_ports: dict[str, int]
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def target(self, listener_port: int, scheme: str = "http") -> tuple[str, str]:
        """(the URL authority to connect to, upstream's default Host header) for a listener port:
        the Host leaves out the port the scheme implies (upstream's CalculateHost)."""
        implied = {"http": 80, "https": 443}[scheme]
        host = self.address if listener_port == implied else f"{self.address}:{listener_port}"
        return f"{self.address}:{listener_port + self.offset}", host


@dataclass(frozen=True)
class Transport:
    """How requests go: plain HTTP, or TLS trusting one certificate and sending an SNI."""

    scheme: str = "http"
    trusted: ssl.SSLContext | None = None
    server_name: str = ""

    def sni(self, host: str) -> str | None:
        if self.scheme != "https":
            return None
        return self.server_name or urlsplit(f"//{host}").hostname or host


def trusting(certificate_pem: str) -> ssl.SSLContext:
    """A client context that trusts only `certificate_pem` (the suite's self-signed Secret). The
    chain is verified; the name is not, since Python (OpenSSL) refuses a wildcard over a single
    label (`*.org`) that upstream's Go client accepts: trusting only that one certificate still
    proves the Gateway served the Secret's certificate."""
    context = ssl.create_default_context(cadata=certificate_pem)
    context.check_hostname = False
    return context


async def send(
    session: aiohttp.ClientSession,
    authority: str,
    default_host: str,
    case: RequestCase,
    transport: Transport = Transport(),
) -> Captured:
    headers = [(name, value) for name, value in case.headers]
    host = case.host or default_host
    headers.append(("Host", host))
    echo_set = ",".join(f"{name}:{value}" for name, value in case.backend_set_response_headers)
    headers.append(("X-Echo-Set-Header", echo_set))
    if case.protocol == "h2c":
        return await send_h2c(authority, host, case, headers)
    url = URL(f"{transport.scheme}://{authority}{case.path}", encoded=True)
    tls: dict[str, Any] = {}
    if transport.scheme == "https":
        tls = {"ssl": transport.trusted, "server_hostname": transport.sni(host)}
    async with session.request(case.method, url, headers=headers, allow_redirects=False, **tls) as response:
        body = await response.read()
        found: dict[str, list[str]] = {}
        for name, value in response.headers.items():
            found.setdefault(name.lower(), []).append(value)
        echo = None
        if response.status == 200:
            try:
                decoded = json.loads(body)
                echo = decoded if isinstance(decoded, dict) else None
            except ValueError:
                echo = None
        return Captured(response.status, found, echo, response.headers.get("Location", ""))


async def send_h2c(authority: str, host: str, case: RequestCase, headers: list[tuple[str, str]]) -> Captured:
    """`case` over HTTP/2 with prior knowledge (a new connection, as upstream's h2c round tripper
    dials), `host` as its :authority; TimeoutError after `H2C_TIMEOUT` seconds."""
    address, _, port = authority.rpartition(":")
    async with asyncio.timeout(H2C_TIMEOUT):
        answer = await h2c_request(address, int(port), case.method, host, case.path, headers)
    echo = None
    if answer.status == 200:
        with contextlib.suppress(ValueError):
            decoded = json.loads(answer.body)
            echo = decoded if isinstance(decoded, dict) else None
    return Captured(answer.status, answer.headers, echo, (answer.headers.get("location") or [""])[0])


# ---- the run -------------------------------------------------------------------------------------


@dataclass
class Run:
    options: Options
    state: ClusterState
    fleet: EchoFleet
    serving: ServeProcess
    xds_port: int
    session: aiohttp.ClientSession
    stand_ins: list[StandIn] = field(default_factory=list)
    base: list[dict[str, Any]] = field(default_factory=list)
    proxies: dict[str, GatewayProxy] = field(default_factory=dict)
    bootstrap_problem: str = ""
    echo_addresses: Iterator[str] = field(default_factory=lambda: loopback_addresses(FIRST_ECHO_ADDRESS))
    next_gateway: int = FIRST_GATEWAY_ADDRESS
    mesh_clients: dict[str, MeshClient] = field(default_factory=dict)
    # What the suite's setup made (cluster.suite_secrets): the TLS stand-ins present these certificates.
    secrets: list[dict[str, Any]] = field(default_factory=list)
    mesh_applied: bool = False

    async def start_stand_ins(self, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Stand-ins for the echo Deployments among `objects`, and the EndpointSlices of the
        Services among them (applied); returns those slices."""
        self.stand_ins += await start_stand_ins(self.fleet, objects, self.echo_addresses, self.secrets)
        slices = endpoint_slices(objects, self.stand_ins)
        await self.state.apply(slices)
        return slices

    async def gateway_object(self, gateway: str) -> dict[str, Any]:
        namespace, name = split_name(gateway)
        status, found = await call(self.state.client, "GET", f"/apis/{GROUP}/v1/namespaces/{namespace}/gateways/{name}")
        if status != 200:
            raise Mismatch(f"Gateway {gateway} not found ({status})")
        return dict(found)

    async def proxy(self, gateway: str) -> GatewayProxy:
        """The Gateway's Envoy, started on first use and kept for the run."""
        if gateway in self.proxies:
            return self.proxies[gateway]
        if self.bootstrap_problem:
            raise NotSupported(self.bootstrap_problem)
        spec = (await self.gateway_object(gateway))["spec"]
        ports = {listener["name"]: int(listener["port"]) for listener in spec.get("listeners") or []}
        lowest, highest = min(ports.values(), default=80), max(ports.values(), default=80)
        # One port is checked free (tests/ports.py); the others are free too in practice, since
        # nothing else binds this Envoy's own loopback address. Keep every port below 65536.
        chosen = free_port()
        offset = chosen - lowest if chosen - lowest + highest <= 65535 else chosen - highest
        address = f"127.0.0.{self.next_gateway}"
        self.next_gateway += 1
        safe = gateway.replace("/", "_")
        bootstrap = self.options.workdir / f"envoy-{safe}.yaml"
        command = [
            sys.executable, "-m", "meshplane", "bootstrap", "gateway",
            "--gateway", gateway, "--listen-address", address, "--port-offset", str(offset),
            "--xds-server", f"127.0.0.1:{self.xds_port}", "--node-id", f"conformance-{safe}",
            "--admin-address", f"127.0.0.1:{free_port()}", "-o", str(bootstrap),
        ]  # fmt: skip
        made = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, cwd=REPO, check=False)
        if made.returncode != 0:
            self.bootstrap_problem = (
                f"`meshplane bootstrap gateway` failed (exit {made.returncode}): "
                f"{(made.stderr or made.stdout).strip().splitlines()[-1:] or ['no output']}"
            )
            raise NotSupported(self.bootstrap_problem)
        log = self.options.workdir / f"envoy-{safe}.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [envoy_binary(), "-c", str(bootstrap), "--disable-hot-restart", "--log-level", "warn"],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        found = GatewayProxy(gateway, address, offset, ports, process, log)
        self.proxies[gateway] = found
        return found

    async def stop_proxies(self) -> None:
        for proxy in self.proxies.values():
            if proxy.process is not None and proxy.process.poll() is None:
                proxy.process.terminate()
                try:
                    await asyncio.to_thread(proxy.process.wait, 10)
                except subprocess.TimeoutExpired:
                    proxy.process.kill()
                    await asyncio.to_thread(proxy.process.wait)
        for client in self.mesh_clients.values():
            await client.stop()

    # ---- the mesh (tests/conformance/mesh_client.py) ----

    async def apply_mesh(self) -> None:
        """Upstream's mesh base manifests, their pods stood in and their EndpointSlices, once a
        run: kept, as the suite's base is."""
        if self.mesh_applied:
            return
        objects = load_manifests(MESH_MANIFESTS, self.options.gateway_class)
        await self.state.apply(objects)
        self.stand_ins += await start_mesh_stand_ins(self.fleet, objects, self.echo_addresses)
        await self.state.apply(endpoint_slices(objects, self.stand_ins))
        self.base += objects
        self.mesh_applied = True

    async def mesh_client(self, namespace: str) -> MeshClient:
        """The sidecar standing in for `namespace`'s mesh client pod, started on first use."""
        if namespace not in self.mesh_clients:
            try:
                client = await start_mesh_client(namespace, self.options.workdir, self.xds_port)
            except RuntimeError as error:
                raise NotSupported(str(error)) from None
            self.mesh_clients[namespace] = client
        return self.mesh_clients[namespace]

    async def send_mesh(self, client: MeshClient, case: RequestCase) -> str:
        """One request of `case` from `client`: the first difference from what it expects, or ""."""
        try:
            authority, host, request = mesh_target(case, client, self.fleet.backends)
        except LookupError as missing:
            raise Mismatch(str(missing)) from None
        try:
            captured = await send(self.session, authority, host, request)
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            return f"request failed: {error!r}"
        return compare_mesh(case, captured.status, captured.headers, captured.echo)

    async def step_mesh_requests(self, step: Step) -> None:
        client = await self.mesh_client(str(step.spec["client"]))
        for case in step.requests:
            await self.mesh_consistently(client, case)

    async def mesh_consistently(self, client: MeshClient, case: RequestCase) -> None:
        """Sends `case` from `client` until its expected response comes `CONSECUTIVE` times in a row."""
        successes, last = 0, "no answer yet"
        end = time.monotonic() + self.options.consistency_deadline
        while successes < CONSECUTIVE:
            if exited := client.exited():
                raise Mismatch(exited)
            if not (last := await self.send_mesh(client, case)):
                successes += 1
                continue
            successes = 0
            if time.monotonic() > end:
                where = f" (pod {case.pod})" if case.pod else ""
                raise Mismatch(
                    f"from {client.namespace}: {case.describe()}{where}: {last} "
                    f"(after {self.options.consistency_deadline:g}s)"
                )
            await asyncio.sleep(POLL)

    async def step_mesh_distribution(self, step: Step) -> None:
        """Upstream's mesh testDistribution: once the request's answer is consistent, `total`
        requests (`concurrency` at a time) spread over the backends as `weights` say; up to
        `attempts` rounds. (Upstream adds a random delay or header to each request against
        connection reuse; Envoy picks a weighted cluster per request, so none is needed here.)"""
        spec = step.spec
        client = await self.mesh_client(str(spec["client"]))
        (case,) = step.requests
        await self.mesh_consistently(client, case)
        authority, host, request = mesh_target(case, client, self.fleet.backends)

        async def ask() -> tuple[str, str]:
            try:
                captured = await send(self.session, authority, host, request)
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                return "", f"request failed: {error!r}"
            if difference := compare_mesh(case, captured.status, captured.headers, captured.echo):
                return "", difference
            return str((captured.echo or {}).get("pod", "")), ""

        await weighted_rounds(spec, ask)

    # ---- steps ----

    async def route(self, name: str, kind: str) -> dict[str, Any]:
        namespace, route = split_name(name)
        plural = "grpcroutes" if kind == "GRPCRoute" else "httproutes"
        status, found = await call(
            self.state.client, "GET", f"/apis/{GROUP}/v1/namespaces/{namespace}/{plural}/{route}"
        )
        if status != 200:
            raise Mismatch(f"{kind} {name} not found ({status})")
        return dict(found)

    async def step(self, step: Step) -> None:
        handler = getattr(self, f"step_{step.kind}")
        await handler(step)

    async def step_accepted(self, step: Step) -> None:
        spec, deadline = step.spec, self.options.status_deadline
        gateway = spec["gateway"]

        async def gateway_ready() -> tuple[bool, Any]:
            found = await self.gateway_object(gateway)
            status = found.get("status") or {}
            conditions = conditions_of(status)
            addresses = [
                a for a in status.get("addresses") or [] if a.get("type", "IPAddress") in ("IPAddress", "Hostname")
            ]
            return latest_generation(found, conditions) and bool(addresses), status

        await until(gateway_ready, f"Gateway {gateway} to have an address and current conditions", deadline)
        listeners = spec.get("listeners") or []
        kind = spec.get("kind", "HTTPRoute")
        for route_name in spec["routes"]:

            async def accepted(route_name: str = route_name) -> tuple[bool, Any]:
                route = await self.route(route_name, kind)
                parents = route_parents(route, gateway)
                wanted = Condition("Accepted", "True", "Accepted")
                holds = bool(parents) and all(
                    p.get("controllerName") == CONTROLLER_NAME and has_condition(conditions_of(p), wanted)
                    for p in parents
                )
                # A parentRef by port (no sectionName) stands for every listener on that port.
                sections = {(p.get("parentRef") or {}).get("sectionName") for p in parents}
                if spec.get("listeners") and None not in sections:
                    holds = holds and set(spec["listeners"]) <= sections
                return holds, (route.get("status") or {}).get("parents")

            await until(accepted, f"{kind} {route_name} to be Accepted by {gateway} {listeners}", deadline)

    async def step_resolved_refs(self, step: Step) -> None:
        for route_name in step.spec["routes"]:
            await self._route_has(
                route_name, step.spec["gateway"], Condition("ResolvedRefs", "True", "ResolvedRefs"), step
            )

    async def step_route_condition(self, step: Step) -> None:
        await self._route_has(step.spec["route"], step.spec["gateway"], Condition(**step.spec["condition"]), step)

    async def _route_has(self, route_name: str, gateway: str, wanted: Condition, step: Step) -> None:
        kind = step.spec.get("kind", "HTTPRoute")

        async def check() -> tuple[bool, Any]:
            route = await self.route(route_name, kind)
            parents = route_parents(route, gateway)
            return any(has_condition(conditions_of(p), wanted) for p in parents), parents

        await until(check, f"{kind} {route_name} to have {wanted} for {gateway}", self.options.status_deadline)

    async def step_route_parents(self, step: Step) -> None:
        spec = step.spec
        wanted = [Condition(**c) for c in spec["conditions"]]
        kind = spec.get("kind", "HTTPRoute")

        async def check() -> tuple[bool, Any]:
            route = await self.route(spec["route"], kind)
            parents = route_parents(route, spec["gateway"])
            holds = len(parents) == 1 and parents[0].get("controllerName") == CONTROLLER_NAME
            holds = holds and all(has_condition(conditions_of(parents[0]), c) for c in wanted)
            return holds, (route.get("status") or {}).get("parents")

        await until(
            check, f"{spec['route']} to have one parent {spec['gateway']} with {wanted}", self.options.status_deadline
        )

    async def step_no_accepted_parents(self, step: Step) -> None:
        kind = step.spec.get("kind", "HTTPRoute")

        async def check() -> tuple[bool, Any]:
            route = await self.route(step.spec["route"], kind)
            parents = (route.get("status") or {}).get("parents") or []
            accepted = Condition("Accepted", "True")
            return not any(has_condition(conditions_of(p), accepted) for p in parents), parents

        await until(check, f"{step.spec['route']} to have no accepted parents", self.options.status_deadline)

    async def step_zero_routes(self, step: Step) -> None:
        async def check() -> tuple[bool, Any]:
            listeners = ((await self.gateway_object(step.spec["gateway"])).get("status") or {}).get("listeners") or []
            return bool(listeners) and all(entry.get("attachedRoutes") == 0 for entry in listeners), listeners

        await until(check, f"{step.spec['gateway']} listeners to have 0 attached routes", self.options.status_deadline)

    async def step_listeners(self, step: Step) -> None:
        """Each expected listener's status, found by name, as upstream's listenersMatch compares it:
        expected kinds present (an empty list: none at all), attachedRoutes equal, conditions held."""
        wanted = {entry["name"]: entry for entry in step.spec["listeners"]}
        defaults = [{"type": "Accepted", "status": "True"}, {"type": "ResolvedRefs", "status": "True"}]

        def matches(want: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
            kinds = {k.get("kind") for k in entry.get("supportedKinds") or [] if k.get("group", GROUP) == GROUP}
            if "kinds" in want and (
                not set(want["kinds"]) <= kinds or (not want["kinds"] and entry.get("supportedKinds"))
            ):
                return False
            if "attached_routes" in want and entry.get("attachedRoutes") != want["attached_routes"]:
                return False
            conditions = conditions_of(entry)
            return all(has_condition(conditions, Condition(**c)) for c in want.get("conditions") or defaults)

        async def check() -> tuple[bool, Any]:
            found = ((await self.gateway_object(step.spec["gateway"])).get("status") or {}).get("listeners") or []
            by_name = {entry.get("name"): entry for entry in found}
            holds = all(name in by_name and matches(want, by_name[name]) for name, want in wanted.items())
            return holds, found

        await until(check, f"{step.spec['gateway']} listeners {sorted(wanted)}", self.options.status_deadline)

    async def step_gateway_condition(self, step: Step) -> None:
        wanted = Condition(**step.spec["condition"])

        async def check() -> tuple[bool, Any]:
            status = (await self.gateway_object(step.spec["gateway"])).get("status") or {}
            return has_condition(conditions_of(status), wanted), status.get("conditions")

        await until(check, f"{step.spec['gateway']} to have {wanted}", self.options.status_deadline)

    async def step_listener_condition(self, step: Step) -> None:
        wanted = Condition(**step.spec["condition"])

        async def check() -> tuple[bool, Any]:
            status = (await self.gateway_object(step.spec["gateway"])).get("status") or {}
            listeners: list[dict[str, Any]] = status.get("listeners") or []
            entry = next((e for e in listeners if e.get("name") == step.spec["listener"]), {})
            return has_condition(conditions_of(entry), wanted), entry

        await until(
            check,
            f"{step.spec['gateway']} listener {step.spec['listener']} to have {wanted}",
            self.options.status_deadline,
        )

    async def step_policy_condition(self, step: Step) -> None:
        """Upstream's BackendTLSPolicyMustHaveCondition: the policy's status has an ancestor entry
        for the Gateway, written by us, holding the condition."""
        wanted = Condition(**step.spec["condition"])
        namespace, name = split_name(str(step.spec["policy"]))
        gateway_namespace, gateway = split_name(str(step.spec["gateway"]))
        path = f"/apis/{GROUP}/v1/namespaces/{namespace}/backendtlspolicies/{name}"

        async def check() -> tuple[bool, Any]:
            status, found = await call(self.state.client, "GET", path)
            if status != 200:
                return False, f"{status}: {found}"
            ancestors = (found.get("status") or {}).get("ancestors") or []
            for ancestor in ancestors:
                ref = ancestor.get("ancestorRef") or {}
                if (
                    ref.get("name") == gateway
                    and ref.get("namespace", namespace) == gateway_namespace
                    and ref.get("kind", "Gateway") == "Gateway"
                    and ancestor.get("controllerName") == CONTROLLER_NAME
                    and has_condition(conditions_of(ancestor), wanted)
                ):
                    return True, ancestors
            return False, ancestors

        await until(
            check, f"BackendTLSPolicy {step.spec['policy']} to have {wanted} for {step.spec['gateway']}",
            self.options.status_deadline,
        )  # fmt: skip

    async def step_websocket(self, step: Step) -> None:
        """Upstream's HTTPRouteBackendProtocolWebSocket: a WebSocket to the Gateway (Host its
        address and listener port, as Go's websocket.Dial sends) echoes a text message, then a
        binary one; each try on a new connection, until that holds `CONSECUTIVE` times in a row."""
        proxy = await self.proxy(step.spec["gateway"])
        port = await self.listener_port(step, proxy)
        authority = proxy.target(port)[0]
        text, binary = str(step.spec["text"]), bytes(step.spec["binary"])
        url = URL(f"http://{authority}{step.spec['path']}", encoded=True)
        headers = {"Host": f"{proxy.address}:{port}", "Origin": "ws://gateway/HTTPRouteBackendProtocolWebSocket"}

        async def once() -> str:
            try:
                async with self.session.ws_connect(
                    url, headers=headers, timeout=aiohttp.ClientWSTimeout(ws_receive=WEBSOCKET_TIMEOUT)
                ) as socket:
                    await socket.send_str(text)
                    reply = await socket.receive(timeout=WEBSOCKET_TIMEOUT)
                    if reply.type is not aiohttp.WSMsgType.TEXT or reply.data != text:
                        return f"unexpected reply - want: {text!r} got: {reply.type.name} {reply.data!r}"
                    await socket.send_bytes(binary)
                    reply = await socket.receive(timeout=WEBSOCKET_TIMEOUT)
                    if reply.type is not aiohttp.WSMsgType.BINARY or reply.data != binary:
                        return f"unexpected reply - want: {binary!r} got: {reply.type.name} {reply.data!r}"
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                return f"failed to dial: {error!r}"
            return ""

        successes, end = 0, time.monotonic() + self.options.consistency_deadline
        while successes < CONSECUTIVE:
            if proxy.process is not None and proxy.process.poll() is not None:
                raise Mismatch(f"the Envoy of {proxy.name} exited ({proxy.process.returncode}); see {proxy.log}")
            if not (last := await once()):
                successes += 1
                continue
            successes = 0
            if time.monotonic() > end:
                raise Mismatch(
                    f"WebSocket to {step.spec['path']}: {last} (after {self.options.consistency_deadline:g}s)"
                )
            await asyncio.sleep(POLL)

    async def step_patch(self, step: Step) -> None:
        target = step.spec["object"]
        obj = {
            "apiVersion": target["apiVersion"],
            "kind": target["kind"],
            "metadata": {"name": target["name"], "namespace": target.get("namespace", "")},
        }
        path = await self.state.path_of(obj)
        before = await self.state.get(obj)
        if before is None:
            raise Mismatch(f"cannot patch {target}: it does not exist")
        status, after = await call(self.state.client, "PATCH", path, step.spec["json_patch"], JSON_PATCH)
        if status != 200:
            raise Mismatch(f"patching {target} was refused ({status}): {after}")
        if after["metadata"].get("generation") == before["metadata"].get("generation"):
            raise Mismatch(f"patching {target} left its generation at {before['metadata'].get('generation')}")

    async def step_latest_conditions(self, step: Step) -> None:
        kind, name = step.spec["kind"], step.spec["name"]
        if kind == "GatewayClass":
            path = f"/apis/{GROUP}/v1/gatewayclasses/{name}"
        else:
            namespace, short = split_name(name)
            plural = "backendtlspolicies" if kind == POLICY_KIND else f"{kind.lower()}s"
            path = f"/apis/{GROUP}/v1/namespaces/{namespace}/{plural}/{short}"

        async def check() -> tuple[bool, Any]:
            status, found = await call(self.state.client, "GET", path)
            if status != 200:
                return False, f"{status}: {found}"
            held = found.get("status") or {}
            groups = (
                [conditions_of(p) for p in held.get("parents") or []] if kind in ROUTE_KINDS else [conditions_of(held)]
            )
            if kind == POLICY_KIND:  # one set of conditions per ancestor
                groups = [conditions_of(a) for a in held.get("ancestors") or []]
            holds = bool(groups) and all(latest_generation(found, conditions) for conditions in groups)
            if step.spec.get("accepted"):
                holds = holds and all(has_condition(c, Condition("Accepted", "True")) for c in groups)
            return holds, {"generation": found["metadata"].get("generation"), "status": held}

        await until(check, f"{kind} {name} to have conditions of its current generation", self.options.status_deadline)

    async def listener_port(self, step: Step, proxy: GatewayProxy) -> int:
        if "listener_port" in step.spec:
            return int(step.spec["listener_port"])
        return next(iter(proxy.listener_ports.values()), 80)

    async def transport(self, step: Step) -> Transport:
        """Plain HTTP, or (`scheme: https`) TLS trusting the certificate of Secret `ca_secret`."""
        scheme = str(step.spec.get("scheme", "http"))
        if scheme == "http":
            return Transport()
        namespace, name = split_name(str(step.spec["ca_secret"]))
        status, secret = await call(self.state.client, "GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        if status != 200:
            raise Mismatch(f"the Secret {namespace}/{name} of the TLS requests is missing ({status})")
        certificate = base64.b64decode(secret["data"]["tls.crt"]).decode()
        return Transport(scheme, trusting(certificate), str(step.spec.get("server_name", "")))

    async def step_requests(self, step: Step) -> None:
        proxy = await self.proxy(step.spec["gateway"])
        transport = await self.transport(step)
        port = await self.listener_port(step, proxy)
        authority, host = proxy.target(port, transport.scheme)
        for case in step.requests:
            await self.consistently(proxy, authority, host, case, transport)

    async def consistently(
        self, proxy: GatewayProxy, authority: str, host: str, case: RequestCase, transport: Transport
    ) -> None:
        """Sends `case` until its expected response comes `CONSECUTIVE` times in a row."""
        successes, last = 0, "no answer yet"
        end = time.monotonic() + self.options.consistency_deadline
        while successes < CONSECUTIVE:
            if proxy.process is not None and proxy.process.poll() is not None:
                raise Mismatch(f"the Envoy of {proxy.name} exited ({proxy.process.returncode}); see {proxy.log}")
            try:
                captured = await send(self.session, authority, host, case, transport)
                last = compare(case, captured, case.path, transport.scheme)
                if case.fails:
                    last = f"expected a failure, got status {captured.status}" if captured.status < 300 else ""
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                last = "" if case.fails else f"request failed: {error!r}"
            if not last:
                successes += 1
                continue
            successes = 0
            if time.monotonic() > end:
                raise Mismatch(f"{case.describe()}: {last} (after {self.options.consistency_deadline:g}s)")
            await asyncio.sleep(POLL)
        for namespace, name in case.mirrored_to:
            await self.mirrored(namespace, name, case)

    async def mirrored(self, namespace: str, name: str, case: RequestCase) -> None:
        backend = self.stand_in(namespace, name)

        async def check() -> tuple[bool, Any]:
            paths = [r.path for r in backend.received]
            return case.path in paths, paths[-5:]

        await until(check, f"{case.path} mirrored to {namespace}/{name}", self.options.consistency_deadline)

    async def grpc_target(self, step: Step) -> tuple[GatewayProxy, str, str]:
        """(the Gateway's Envoy, where to connect, the default :authority): upstream dials the
        Gateway's address with the listener port, which becomes the authority."""
        proxy = await self.proxy(step.spec["gateway"])
        port = await self.listener_port(step, proxy)
        return proxy, proxy.target(port)[0], f"{proxy.address}:{port}"

    async def step_grpc_requests(self, step: Step) -> None:
        proxy, target, authority = await self.grpc_target(step)
        for rpc in step.grpc_requests:
            await self.grpc_consistently(proxy, target, rpc.authority or authority, rpc)

    async def grpc_consistently(self, proxy: GatewayProxy, target: str, authority: str, rpc: GrpcRequest) -> None:
        """Makes `rpc` until its expected answer comes `CONSECUTIVE` times in a row."""
        successes, last = 0, "no answer yet"
        end = time.monotonic() + self.options.consistency_deadline
        while successes < CONSECUTIVE:
            if proxy.process is not None and proxy.process.poll() is not None:
                raise Mismatch(f"the Envoy of {proxy.name} exited ({proxy.process.returncode}); see {proxy.log}")
            last = compare_grpc(rpc, await send_grpc(target, authority, rpc))
            if not last:
                successes += 1
                continue
            successes = 0
            if time.monotonic() > end:
                raise Mismatch(f"{rpc.describe()}: {last} (after {self.options.consistency_deadline:g}s)")
            await asyncio.sleep(POLL)

    async def step_grpc_distribution(self, step: Step) -> None:
        """Upstream's GRPCRouteWeight: once the call's answer is consistent, `total` calls
        (`concurrency` at a time, each on its own connection) spread over the backends as `weights`
        say, within `tolerance`; up to `attempts` rounds."""
        spec = step.spec
        proxy, target, authority = await self.grpc_target(step)
        (rpc,) = step.grpc_requests
        authority = rpc.authority or authority
        await self.grpc_consistently(proxy, target, authority, rpc)

        async def ask() -> tuple[str, str]:
            answer = await send_grpc(target, authority, rpc)
            if answer.code != "OK":
                return "", f"expected OK response, got {answer.code} ({answer.details})"
            return answer.response.assertions.context.pod if answer.response is not None else "", ""

        await weighted_rounds(spec, ask)

    async def step_distribution(self, step: Step) -> None:
        spec = step.spec
        proxy = await self.proxy(spec["gateway"])
        authority, host = proxy.target(await self.listener_port(step, proxy))
        (case,) = step.requests

        async def ask() -> tuple[str, str]:
            try:
                captured = await send(self.session, authority, host, case)
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                return "", f"request failed: {error!r}"
            if difference := compare(case, captured, case.path):
                return "", difference
            return str((captured.echo or {}).get("pod", "")), ""

        await weighted_rounds(spec, ask)

    def stand_in(self, namespace: str, name: str) -> EchoBackend:
        backend = next(
            (b for (ns, deployment), b in self.fleet.backends.items() if ns == namespace and deployment == name), None
        )
        if backend is None:
            raise Mismatch(f"no stand-in for the Deployment {namespace}/{name}")
        return backend

    async def step_pod_endpoint_slices(self, step: Step) -> None:
        """What upstream's HTTPRouteServiceTypes does to its hand-made EndpointSlices: each named
        slice's endpoints become the pods of `deployment`, ready and serving. The pods are the
        stand-in: its address in an IPv4 slice (none in another family: the stand-ins have IPv4
        addresses only, as pods of an IPv4 cluster), and, as for the slices made for Services
        with a selector, echo-basic's HTTP port becomes the stand-in's real port."""
        namespace, name = split_name(str(step.spec["deployment"]))
        backend = self.stand_in(namespace, name)
        for target in step.spec["slices"]:
            slice_namespace, slice_name = split_name(str(target))
            obj = as_served_endpoint_slice(
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {"name": slice_name, "namespace": slice_namespace},
                }
            )
            try:
                found = await self.state.get(obj)
            except LookupError as unserved:  # the manifest's slices were skipped at apply for the same reason
                raise NotSupported(f"the EndpointSlices to fill cannot exist here: {unserved}") from None
            if found is None:
                raise Mismatch(f"the EndpointSlice {target} to fill is missing")
            pod = {"kind": "Pod", "name": backend.identity.pod, "namespace": namespace}
            endpoint = {
                "addresses": [backend.address],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "targetRef": pod,
            }
            found["endpoints"] = [endpoint] if found.get("addressType") == "IPv4" else []
            found["ports"] = [
                {**port, "port": backend.port} if port.get("port") == HTTP_PORT else port
                for port in found.get("ports") or []
            ]
            status, answer = await call(self.state.client, "PUT", await self.state.path_of(obj), found)
            if status != 200:
                raise Mismatch(f"updating the EndpointSlice {target} was refused ({status}): {answer}")

    async def step_mirror_percentages(self, step: Step) -> None:
        """Upstream's percentage mirror check: after `total` answered requests, each mirror has
        received its percent of copies (within `tolerance` percent of that count), counted from
        the backend's requests since the round began; up to `attempts` rounds."""
        spec = step.spec
        proxy = await self.proxy(spec["gateway"])
        authority, host = proxy.target(await self.listener_port(step, proxy))
        (case,) = step.requests
        await self.consistently(proxy, authority, host, case, Transport())
        total, tolerance = int(spec["total"]), float(spec["tolerance"])
        mirrors = {
            target: (self.stand_in(*split_name(target)), float(percent)) for target, percent in spec["mirrors"].items()
        }
        problems: list[str] = []

        def bounds(percent: float) -> tuple[float, float]:
            expected = total * percent / 100
            return expected * (1 - tolerance / 100), expected * (1 + tolerance / 100)

        for _ in range(int(spec["attempts"])):
            started = {target: backend.count for target, (backend, _) in mirrors.items()}
            gate = asyncio.Semaphore(int(spec["concurrency"]))

            async def one(gate: asyncio.Semaphore = gate) -> str:
                async with gate:
                    try:
                        captured = await send(self.session, authority, host, case)
                    except (aiohttp.ClientError, OSError, TimeoutError) as error:
                        return f"request failed: {error!r}"
                return compare(case, captured, case.path)

            if failures := [f for f in await asyncio.gather(*(one() for _ in range(total))) if f]:
                raise Mismatch(f"{case.describe()}: {failures[0]}")

            async def settled(started: dict[str, int] = started) -> tuple[bool, Any]:
                # Copies arrive on their own after the answers; a count above its bound never comes down.
                seen = {t: b.received_since(started[t], case.path) for t, (b, _) in mirrors.items()}
                done = all(
                    (n := seen[t]) is None or n > bounds(p)[1] or n >= bounds(p)[0] for t, (_, p) in mirrors.items()
                )
                return done, seen

            try:
                seen = await until(settled, "the mirrored copies", self.options.consistency_deadline)
            except Mismatch as short:
                problems = [str(short)]
                continue
            problems = []
            for target, (_, percent) in mirrors.items():
                low, high = bounds(percent)
                if (got := seen[target]) is None:
                    problems.append(f"{target} received more than the {KEPT_REQUESTS} requests it keeps")
                elif not low <= got <= high:
                    problems.append(f"{target} received {got} copies of {total}, want {low:g} to {high:g}")
            if not problems:
                return
        raise Mismatch(f"percentage mirroring failed {spec['attempts']} times; last: {'; '.join(problems)}")

    async def step_backend_header(self, step: Step) -> None:
        """Upstream's loop of captured round trips: every answer names, in `header` as the backend
        saw it, the backend that answered (a header a backendRef's filter set)."""
        spec = step.spec
        proxy = await self.proxy(spec["gateway"])
        authority, host = proxy.target(await self.listener_port(step, proxy))
        (case,) = step.requests
        await self.consistently(proxy, authority, host, case, Transport())
        header = str(spec["header"]).lower()
        for number in range(int(spec["total"])):
            try:
                captured = await send(self.session, authority, host, case)
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                raise Mismatch(f"request {number + 1}: failed: {error!r}") from None
            if difference := compare(case, captured, case.path):
                raise Mismatch(f"request {number + 1}: {difference}")
            echo = captured.echo or {}
            seen = {name.lower(): values for name, values in (echo.get("headers") or {}).items()}
            values = seen.get(header, [])
            if len(values) != 1:
                raise Mismatch(f"request {number + 1}: expected a single {spec['header']!r} header, got {values}")
            if not str(echo.get("pod", "")).startswith(values[0]):
                raise Mismatch(f"request {number + 1}: pod {echo.get('pod')!r} does not start with {values[0]!r}")

    # ---- cases ----

    async def run_case(self, case: Case) -> Result:
        started = time.monotonic()
        result = Result(case.test, list(case.profiles), list(case.features), "passed")
        result.own_manifests = [manifest for manifest in case.manifests if is_own_manifest(manifest)]
        if unclaimed := sorted(set(case.features) & set(UNCLAIMED_FEATURES)):
            result.result = "not supported"
            result.detail = "; ".join(f"{feature}: {UNCLAIMED_FEATURES[feature]}" for feature in unclaimed)
            return result
        missing = sorted(set(case.features) - self.options.features)
        if missing:
            result.result, result.detail = "not supported", f"needs features {missing}"
            return result
        objects: list[dict[str, Any]] = []
        applied = Applied()
        slices: list[dict[str, Any]] = []
        try:
            if any(step.kind in MESH_STEPS for step in case.steps):
                await self.apply_mesh()
            for manifest in case.manifests:
                objects.extend(load_manifests(manifest_path(manifest), self.options.gateway_class))
            if absent := absent_objects(named_objects(case), [*self.base, *objects]):
                # The shared copy holds one file per name: for some tests it is upstream's mesh
                # variant (tests/mesh/<name>.yaml), and the Gateway variant is not there to apply.
                raise NotSupported(
                    f"the manifests here define no {', '.join(absent)} (they hold objects of namespaces "
                    f"{sorted(namespaces_of(objects))}: not this test's variant)"
                )
            applied = await self.state.apply(objects)
            slices = await self.start_stand_ins(objects)
            # Envoys first, so they converge while the status is awaited; without a bootstrap the
            # status steps still run, and the first request step says why it cannot.
            for gateway in case.gateways():
                with contextlib.suppress(NotSupported):
                    await self.proxy(gateway)
            for step in case.steps:
                await self.step(step)
        except NotSupported as reason:
            result.result, result.detail = "not supported", str(reason)
        except Mismatch as mismatch:
            result.result, result.detail = "failed", str(mismatch)
        finally:
            await self.state.delete(slices)
            await self.state.delete(objects)
        if self.bootstrap_problem and case.gateways() and result.result == "failed":
            result.detail += f" (and no Envoy: {self.bootstrap_problem})"
        if applied.skipped:
            note = "; ".join(f"{'/'.join(k)} skipped: {why}" for k, why in applied.skipped)
            result.detail = f"{result.detail} ({note})" if result.detail else note
        result.seconds = round(time.monotonic() - started, 2)
        return result


def selected(cases: list[Case], options: Options) -> list[Case]:
    chosen = [c for c in cases if not options.only or c.test in options.only]
    return [c for c in chosen if not options.profile or options.profile in c.profiles]


def kubeconfig(url: str, path: Path) -> Path:
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: real, cluster: {{server: "{url}", insecure-skip-tls-verify: true}}}}]
users: [{{name: user, user: {{token: {ADMIN_TOKEN}}}}}]
contexts: [{{name: real, context: {{cluster: real, user: user}}}}]
current-context: real
"""
    )
    return path


async def run(options: Options) -> list[Result]:
    """Runs the selected cases (see the module docstring); returns their results in order."""
    cases = selected(load_cases(), options)
    if not cases:
        raise SystemExit(f"no case matches --only {list(options.only)} --profile {options.profile!r}")
    if KUBE_MISSING:
        raise SystemExit(KUBE_MISSING)
    found = binaries()
    assert found is not None
    options.workdir.mkdir(parents=True, exist_ok=True)
    cluster: Cluster = await asyncio.to_thread(start_cluster, options.workdir / "cluster", *found, uncached=False)
    try:
        assert cluster.cached is not None
        client = cluster.cached.client()
        try:
            state = ClusterState(client)
            await apply_standard_crds(client)
            await state.apply([gateway_class(options.gateway_class)])
            base = load_manifests(BASE_MANIFESTS, options.gateway_class)
            await state.apply(base)
            secrets = await asyncio.to_thread(suite_secrets)
            await state.apply(secrets)
            xds_port = free_port()
            config = kubeconfig(cluster.cached.url, options.workdir / "kubeconfig")
            async with (
                EchoFleet() as fleet,
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15), auto_decompress=False) as session,
                serve(
                    "--kubernetes", "--kubeconfig", str(config), "--gateway-api",
                    "--gateway-controller-name", CONTROLLER_NAME,
                    # certificateRefs are served from labelled Secrets over SDS; the Envoys here
                    # have no client certificates or tokens.
                    "--kubernetes-secrets", "--insecure-serve-keys-without-client-auth",
                    xds_address=f"127.0.0.1:{xds_port}",
                ) as serving,
            ):  # fmt: skip
                runner = Run(options, state, fleet, serving, xds_port, session, base=base, secrets=secrets)
                await runner.start_stand_ins(base)
                results = []
                try:
                    for case in cases:
                        results.append(await runner.run_case(case))
                        print(f"{case.test}: {results[-1].result}", file=sys.stderr, flush=True)
                finally:
                    await runner.stop_proxies()
                return results
        finally:
            await client.close()
    finally:
        await asyncio.to_thread(cluster.stop)


def table(results: list[Result]) -> str:
    """The results as a plain-text table: test, profile, features, result (with the reason); a test
    marked `*` applied our own Gateway-variant manifests, as a note under the table says."""
    rows = [("TEST", "PROFILE", "FEATURES", "RESULT")]
    for r in results:
        outcome = r.result if not r.detail else f"{r.result}: {r.detail}"
        extra = [f for f in r.features if f not in CORE_FEATURES] or ["core"]
        rows.append((r.test + (" *" if r.own_manifests else ""), ",".join(r.profiles), ",".join(extra), outcome))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(row[i].ljust(widths[i]) for i in range(3)) + "  " + row[3] for row in rows]
    counts = {k: sum(r.result == k for r in results) for k in ("passed", "failed", "not supported")}
    lines.append(", ".join(f"{n} {k}" for k, n in counts.items()))
    if any(r.own_manifests for r in results):
        lines.append(
            "* applies our own Gateway-variant manifests (tests/conformance/manifests/): the shared "
            "copy holds only upstream's mesh variant of that name"
        )
    return "\n".join(lines)


def write_results(results: list[Result], path: Path) -> None:
    path.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
