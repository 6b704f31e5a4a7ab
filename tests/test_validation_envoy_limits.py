"""Validation refuses what Envoy would NACK, and accepts what Envoy accepts, field by field.

Both sides are real: `meshplane validate` runs as a user runs it (a process on a directory of
policy files), and Envoy judges with `envoy --mode validate` on a bootstrap carrying the
translation as static resources (tests/golden/test_envoy_validation.py builds it).

- ACCEPTED: edge cases at the limits (a regex of exactly Envoy's program size, RE2-only syntax,
  extreme weights, durations and names). `meshplane validate` passes them all, and Envoy accepts
  their translation for a sidecar and for proxyless gRPC.
- REFUSED: one mistake per file. `meshplane validate` names each at `file:line` with its reason;
  where Envoy would NACK it, the same value forced into a model (past validation) and translated
  is refused by Envoy too, with the error we expect. Cases marked stricter are refused on purpose
  although Envoy takes them (they could never work as written).
- A live control plane with a live Envoy: a too-big regex written to the policy directory is
  refused at load with `file:line`, the last good routes keep serving, and Envoy sees no NACK.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshplane.app import ControlPlane
from meshplane.discovery.kubernetes_annotations import PREFIX, policy_of
from meshplane.discovery.policy_files import PolicyFileSource
from meshplane.model import (
    ENVOY_REGEX_MAX_PROGRAM_SIZE,
    Endpoint,
    HashKey,
    HeaderMatch,
    HeaderMatchKind,
    HealthCheck,
    LoadBalancing,
    Mesh,
    OutlierDetection,
    PathMatch,
    PathMatchKind,
    ProxyGroup,
    ProxyRole,
    RouteMatch,
    RouteRule,
    RouteTable,
    Service,
    ServicePort,
    ServiceRef,
    TrafficPolicy,
    TrustBundle,
    UpstreamTls,
    WeightedBackend,
    regex_problem,
)
from meshplane.xds.server.tracking import SyncState
from meshplane.xds.translate import translate
from meshplane.xds.types import TypeUrl
from tests.envoy_harness import REPO, Envoy, start_backend, start_envoy
from tests.golden.test_envoy_validation import envoy_validate, validation_bootstrap
from tests.test_envoy_integration import answered_by, answers, service, start_plane

CA_FILE = REPO / "tests" / "data" / "test-ca.pem"  # TEST-ONLY certificate, see tests/data/README.md


def meshplane(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshplane", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
        cwd=REPO,
    )


def routed(name: str, rule: str, *, extra_rules: str = "") -> str:
    """A service `name` and a route table on it whose first rule's extra lines are `rule` (line 11 on)."""
    return f"""services:
  - name: {name}
    port: 8080
    endpoints:
      - {{address: 127.0.0.1, port: 9000}}
routes:
  - name: {name}-routes
    service: {name}
    rules:
      - to: [{{service: {name}}}]
{rule}{extra_rules}"""


def serviced(name: str, lines: str) -> str:
    """A service `name` whose extra lines are `lines` (line 6 on)."""
    return f"""services:
  - name: {name}
    port: 8080
    endpoints:
      - {{address: 127.0.0.1, port: 9000}}
{lines}"""


# --- what both accept ---------------------------------------------------------------------------

ACCEPTED: dict[str, str] = {
    # 95 repetitions make a program of exactly 100, Envoy's default limit (checked below).
    "regex-at-the-limit": routed("re-limit", "        match: {path: {regex: '/a{95}'}}\n"),
    "header-regex-at-the-limit": routed("re-header", "        match: {headers: [{name: x-a, regex: 'a{96}'}]}\n"),
    # RE2 syntax that Python's re refuses (\z, the U flag, POSIX classes): Envoy takes them.
    "re2-only-syntax": routed(
        "re-syntax",
        "        match: {path: {regex: '/x\\z'}}\n",
        extra_rules="      - match: {path: {regex: '(?U)/y+[[:alpha:]]'}}\n        to: [{service: re-syntax}]\n",
    ),
    "pseudo-and-token-headers": routed(
        "headers",
        "        match: {headers: [{name: ':method', exact: GET}, {name: \"x-a_b.c~1!#$%&'*+^`|\", present: true}]}\n",
    ),
    "rewrite-root-and-timeouts": routed(
        "rewrites",
        "        rewrite: {prefix: /}\n        timeout: 1ms\n        retries: {attempts: 10, per_try_timeout: 1ms}\n",
        extra_rules="      - match: {path: {prefix: /none}}\n        timeout: 0\n        to: [rewrites]\n"
        "      - match: {path: {prefix: /ten-years}}\n        timeout: 87600h\n        to: [rewrites]\n",
    ),
    "every-retry-condition": routed(
        "retrying",
        "        retries:\n          attempts: 0\n          on: [5xx, gateway-error, reset, reset-before-request, "
        "connect-failure, envoy-ratelimited, retriable-4xx, refused-stream, retriable-status-codes, "
        "retriable-headers, http3-post-connect-failure, cancelled, deadline-exceeded, internal, "
        "resource-exhausted, unavailable]\n",
    ),
    "extreme-weights": """services:
  - {name: heavy-a, port: 8080, endpoints: [{address: 127.0.0.1, port: 9000, weight: 128}]}
  - {name: heavy-b, port: 65535, endpoints: [{address: '::1', port: 1, weight: 1}]}
routes:
  - name: heavy
    service: heavy-a
    rules:
      - to: [{service: heavy-a, weight: 4294967295}, {service: heavy-b, weight: 4294967295}]
      - match: {path: {prefix: /b}}
        to: [{service: heavy-a, weight: 0}, {service: heavy-b, weight: 1}]
""",
    "policy-at-the-limits": serviced(
        "limits",
        """    policy:
      connect_timeout: 1ms
      load_balancing: ring_hash
      hash_key: {header: X-User}
      circuit_breakers: {max_connections: 0, max_pending_requests: 5000000000, max_requests: 1, max_retries: 0}
      outlier_detection: {consecutive_5xx: 1, consecutive_gateway_failure: 1, interval: 1ms,
                          base_ejection_time: 1ms, max_ejection_percent: 100}
      health_check: {path: "/healthz?probe=1&x=%20", interval: 1ms, timeout: 1ms,
                     unhealthy_threshold: 1, healthy_threshold: 1}
""",
    ),
    "long-names": serviced(
        "named",
        f"""    hosts: ["{"h" * 63}.{"o" * 63}.{"s" * 63}.{"t" * 61}", "*.wild.example"]
    tls: {{trust: edge-ca, sni: "{"s" * 63}.{"n" * 63}.{"i" * 63}.{"x" * 61}"}}
secrets:
  - {{name: edge-ca, ca_file: {CA_FILE}}}
""",
    ),
    "scoped-ipv6-endpoint": serviced("scoped", "").replace("127.0.0.1", "'fe80::1%eth0'"),
    "grpc-port-with-rules": """services:
  - name: greeter
    port: 50051
    protocol: grpc
    endpoints: [{address: 127.0.0.1, port: 50051}]
    policy: {load_balancing: maglev, hash_key: {source_ip: true}}
routes:
  - name: greeter-routes
    service: greeter
    rules:
      - match: {path: {regex: '/helloworld\\.Greeter/Say[A-Z][a-z]+'}, headers: [{name: x-canary, present: true}]}
        retries: {on: [unavailable, 5xx], attempts: 3}
        timeout: 2s
        to: [greeter]
""",
}


def test_limits_of_the_accepted_cases_are_where_we_say() -> None:
    """The boundary cases sit exactly on Envoy's limit: one repetition more is one program unit over."""
    assert regex_problem("/a{95}") is None
    assert "size 101" in (regex_problem("/a{96}") or "")
    assert ENVOY_REGEX_MAX_PROGRAM_SIZE == 100


@pytest.fixture(scope="module")
def accepted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("accepted")
    for name, text in ACCEPTED.items():
        (directory / f"{name}.yaml").write_text(text)
    return directory


def test_validate_accepts_every_edge_case(accepted_dir: Path) -> None:
    result = meshplane("validate", "--config", str(accepted_dir))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


@pytest.mark.parametrize("group", [ProxyGroup(), ProxyGroup(role=ProxyRole.GRPC)], ids=["sidecar", "grpc"])
async def test_envoy_accepts_the_translation_of_every_edge_case(
    accepted_dir: Path, group: ProxyGroup, tmp_path: Path
) -> None:
    policy = PolicyFileSource(accepted_dir, on_change=lambda: None)
    assert await policy.load(), policy.status.errors
    assert policy.mesh is not None
    translation = translate(policy.mesh, group)
    result = envoy_validate(validation_bootstrap(translation), tmp_path / "accepted.json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


# --- what we refuse -----------------------------------------------------------------------------

WEB = ServiceRef("default", "web")
BASE = Mesh.of([Service("web", "default", (ServicePort("http", 8080),), (Endpoint("127.0.0.1", 9000, "http"),))])


def with_rule(rule: RouteRule) -> Mesh:
    return dataclasses.replace(BASE, routes=(RouteTable("web-routes", (rule,), service=WEB),))


def with_policy(policy: TrafficPolicy) -> Mesh:
    return dataclasses.replace(BASE, services=(dataclasses.replace(BASE.services[0], policy=policy),))


def path_regex(pattern: str) -> Mesh:
    return with_rule(RouteRule(RouteMatch(PathMatch(PathMatchKind.REGEX, pattern)), (WeightedBackend(WEB),)))


def header(name: str, kind: HeaderMatchKind = HeaderMatchKind.EXACT, value: str = "v") -> Mesh:
    return with_rule(RouteRule(RouteMatch(headers=(HeaderMatch(name, kind, value),)), (WeightedBackend(WEB),)))


def with_sni(sni: str) -> Mesh:
    web = dataclasses.replace(BASE.services[0], tls=UpstreamTls("ca", sni=sni))
    return dataclasses.replace(BASE, services=(web,), trust_bundles=(TrustBundle("ca", CA_FILE.read_text()),))


@dataclass(frozen=True)
class Refused:
    """One mistake: the file, the line and reason `meshplane validate` gives, and what Envoy says of
    the same value when it gets it (None: Envoy takes it, and we refuse it on purpose)."""

    text: str
    line: int
    reason: str
    envoy: tuple[Callable[[], Mesh], str] | None


REFUSED: dict[str, Refused] = {
    "regex-program-too-big": Refused(
        routed("re-big", "        match: {path: {regex: '/a{1000}'}}\n"),
        11,
        "route.rules.match.path.regex: regex '/a{1000}' compiles to an RE2 program of size 1005, over Envoy's "
        "limit of 100 (runtime key re2.max_program_size.error_level)",
        (lambda: path_regex("/a{1000}"), "RE2 program size of 1005 > max program size of 100"),
    ),
    "regex-one-over-the-limit": Refused(
        routed("re-101", "        match: {path: {regex: '/a{96}'}}\n"),
        11,
        "RE2 program of size 101, over Envoy's limit of 100",
        (lambda: path_regex("/a{96}"), "RE2 program size of 101 > max program size of 100"),
    ),
    "regex-repetition-over-1000": Refused(
        routed("re-1001", "        match: {path: {regex: '/a{1001}'}}\n"),
        11,
        "invalid regex '/a{1001}': invalid repetition size: {1001}",
        (lambda: path_regex("/a{1001}"), "invalid repetition size: {1001}"),
    ),
    "regex-python-only-escape": Refused(
        routed("re-python", "        match: {path: {regex: '/x\\Z'}}\n"),
        11,
        "invalid escape sequence: \\Z",
        (lambda: path_regex("/x\\Z"), "invalid escape sequence: \\Z"),
    ),
    "regex-lookahead": Refused(
        routed("re-look", "        match: {path: {regex: '/(?=a)'}}\n"),
        11,
        "invalid perl operator: (?=",
        (lambda: path_regex("/(?=a)"), "invalid perl operator: (?="),
    ),
    "header-regex-too-big": Refused(
        routed("re-hdr", "        match:\n          headers:\n            - {name: x-a, regex: 'a{97}'}\n"),
        13,
        "route.rules.match.headers.regex: regex 'a{97}' compiles to an RE2 program of size 101",
        (lambda: header("x-a", HeaderMatchKind.REGEX, "a{97}"), "RE2 program size of 101 > max program size of 100"),
    ),
    "header-name-with-newline": Refused(
        routed("hdr-nl", '        match: {headers: [{name: "x\\na", exact: v}]}\n'),
        11,
        "route.rules.match.headers.name: header name 'x\\na' must be a lowercase HTTP header name",
        (lambda: header("x\na"), "HeaderMatcherValidationError.Name: value does not match regex pattern"),
    ),
    "header-name-not-a-token (stricter)": Refused(
        routed("hdr-paren", "        match: {headers: [{name: 'x(a)', exact: v}]}\n"),
        11,
        "header name 'x(a)' must be a lowercase HTTP header name",
        None,
    ),
    "hash-key-header-with-newline": Refused(
        serviced("hash-nl", '    policy: {load_balancing: ring_hash, hash_key: {header: "x\\na"}}\n'),
        2,
        "hash_key: header name 'x\\na' must be a lowercase HTTP header name",
        (
            lambda: with_policy(TrafficPolicy(load_balancing=LoadBalancing.RING_HASH, hash_key=HashKey(header="x\na"))),
            "HeaderValidationError.HeaderName: value does not match regex pattern",
        ),
    ),
    "connect-timeout-under-a-nanosecond": Refused(
        serviced("ct-tiny", "    policy: {connect_timeout: 0.0000000001}\n"),
        2,
        "connect_timeout must be within 1ms and 300s",
        (lambda: with_policy(TrafficPolicy(connect_timeout=1e-10)), "ConnectTimeout: value must be greater than 0s"),
    ),
    "connect-timeout-under-a-millisecond (stricter)": Refused(
        serviced("ct-half", "    policy: {connect_timeout: 0.5ms}\n"),
        2,
        "connect_timeout must be within 1ms and 300s",
        None,
    ),
    "health-check-interval-under-a-nanosecond": Refused(
        serviced("hc-tiny", "    policy: {health_check: {interval: 0.0000000001}}\n"),
        2,
        "health_check interval and timeout must be at least 1ms",
        (
            lambda: with_policy(TrafficPolicy(health_check=HealthCheck(interval=1e-10))),
            "HealthCheckValidationError.Interval: value must be greater than 0s",
        ),
    ),
    "health-check-path-with-control-character": Refused(
        serviced("hc-ctl", '    policy: {health_check: {path: "/h\\x7f"}}\n'),
        2,
        "health_check.path '/h\\x7f' must not contain control characters",
        (
            lambda: with_policy(TrafficPolicy(health_check=HealthCheck(path="/h\x7f"))),
            "HttpHealthCheckValidationError.Path: value does not match regex pattern",
        ),
    ),
    "outlier-interval-under-a-nanosecond": Refused(
        serviced("od-tiny", "    policy: {outlier_detection: {interval: 0.0000000001}}\n"),
        2,
        "outlier_detection interval and base_ejection_time must be at least 1ms",
        (
            lambda: with_policy(TrafficPolicy(outlier_detection=OutlierDetection(interval=1e-10))),
            "OutlierDetectionValidationError.Interval: value must be greater than 0s",
        ),
    ),
    "outlier-negative-gateway-failures (stricter)": Refused(
        serviced("od-neg", "    policy: {outlier_detection: {consecutive_gateway_failure: -1}}\n"),
        2,
        "outlier_detection.consecutive_gateway_failure must be at least 1",
        None,  # sent as a uint32, -1 would silently become 0
    ),
    "prefix-rewrite-with-newline": Refused(
        routed("rw-nl", '        rewrite: {prefix: "/a\\nb"}\n'),
        7,
        "prefix_rewrite '/a\\nb' must not contain control characters",
        (
            lambda: with_rule(RouteRule(RouteMatch(), (WeightedBackend(WEB),), prefix_rewrite="/a\nb")),
            "RouteActionValidationError.PrefixRewrite: value does not match regex pattern",
        ),
    ),
    "path-with-newline (stricter)": Refused(
        routed("path-nl", '        match: {path: {prefix: "/a\\nb"}}\n'),
        7,
        "path '/a\\nb' must not contain control characters",
        None,  # Envoy takes it; no request path can match it
    ),
    "route-timeout-under-a-millisecond (stricter)": Refused(
        routed("to-tiny", "        timeout: 0.0005\n"),
        7,
        "timeout must be 0 (none) or at least 1ms",
        None,  # Envoy counts it as 0 ms: no timeout at all
    ),
    "sni-over-255-bytes": Refused(
        serviced(
            "sni-long",
            f"    tls: {{trust: long-ca, sni: {'s' * 256}}}\nsecrets:\n  - {{name: long-ca, ca_file: {CA_FILE}}}\n",
        ),
        2,
        f"tls.sni '{'s' * 256}' is not a host name",
        (lambda: with_sni("s" * 256), "UpstreamTlsContextValidationError.Sni: value length must be at most 255 bytes"),
    ),
}


def file_name(case: str) -> str:
    return case.split(" ")[0] + ".yaml"


def test_validate_refuses_each_mistake_at_its_line_with_the_reason(tmp_path: Path) -> None:
    for case, refused in REFUSED.items():
        (tmp_path / file_name(case)).write_text(refused.text)
    result = meshplane("validate", "--config", str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if ".yaml:" in line]
    for case, refused in REFUSED.items():
        where = f"{tmp_path / file_name(case)}:{refused.line}"
        said = [error for error in errors if where in error]
        assert len(said) == 1, (case, where, errors)
        assert refused.reason in said[0], (case, said[0])
    # Each file has its one mistake and nothing else is said.
    assert len(errors) == len(REFUSED), "\n".join(errors)


ENVOY_REFUSES = {case: refused.envoy for case, refused in REFUSED.items() if refused.envoy is not None}


@pytest.mark.parametrize(("build", "envoy_says"), ENVOY_REFUSES.values(), ids=ENVOY_REFUSES.keys())
def test_envoy_refuses_what_validate_refuses(build: Callable[[], Mesh], envoy_says: str, tmp_path: Path) -> None:
    """The same value, forced past validation into a translation, is refused by Envoy itself."""
    mesh = build()
    assert mesh.problems(), "validation must refuse it as a model too (every source goes through the model)"
    result = envoy_validate(validation_bootstrap(translate(mesh, ProxyGroup())), tmp_path / "refused.json")
    assert result.returncode != 0
    assert envoy_says in result.stdout + result.stderr


def test_envoy_takes_the_base_of_the_refused_cases(tmp_path: Path) -> None:
    """Without the mistake, the same mesh passes both: the refusals above are the mistake's."""
    mesh = with_rule(RouteRule(RouteMatch(), (WeightedBackend(WEB),)))
    assert not mesh.problems()
    result = envoy_validate(validation_bootstrap(translate(mesh, ProxyGroup())), tmp_path / "base.json")
    assert result.returncode == 0, result.stdout + result.stderr


# --- a policy load in `meshplane serve`, with a live Envoy -----------------------------------------

ROUTES = """routes:
  - name: web-routes
    service: web
    rules:
{rules}      - to: [{{service: web}}]
"""
ITEMS_TO_OTHER = "      - match: {path: {regex: '/items/[0-9]+'}}\n        to: [{service: other}]\n"
TOO_BIG = "      - match: {path: {regex: '/a{1000}'}}\n        to: [{service: other}]\n"
LATER_TO_OTHER = "      - match: {path: {prefix: /later}}\n        to: [{service: other}]\n"


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[Path, ControlPlane, Envoy]]:
    web, other = await start_backend("web"), await start_backend("other")
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "services.yaml").write_text("services:\n" + service("web", web.port) + service("other", other.port))
    (policy / "routes.yaml").write_text(ROUTES.format(rules=ITEMS_TO_OTHER))
    plane, stop, task = await start_plane(policy)
    envoy: Envoy | None = None
    try:
        envoy = await start_envoy(tmp_path / "envoy", plane.xds_port, node_id="limits", delta=True)
        yield policy, plane, envoy
    finally:
        if envoy is not None:
            await envoy.stop()
        stop.set()
        await task
        await web.close()
        await other.close()


def replace(path: Path, text: str) -> None:
    """Write then rename, as a GitOps sync would, so the watcher never reads half a file."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.rename(path)


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
async def test_serve_refuses_a_too_big_regex_at_load_and_envoy_never_nacks(
    live: tuple[Path, ControlPlane, Envoy],
) -> None:
    policy, plane, envoy = live
    await envoy.eventually(answers(envoy, "web", "other", "/items/12"), "the regex route")

    routes = policy / "routes.yaml"
    replace(routes, ROUTES.format(rules=TOO_BIG + ITEMS_TO_OTHER))

    async def refused() -> tuple[str, ...]:
        return plane.policy.status.errors if plane.policy is not None else ()

    errors = await envoy.eventually(refused, "the refusal of the too-big regex")
    assert errors == (
        f"{routes}:5: route.rules.match.path.regex: regex '/a{{1000}}' compiles to an RE2 program of size 1005, "
        "over Envoy's limit of 100 (runtime key re2.max_program_size.error_level), so Envoy would refuse the "
        "routes; make it smaller (fewer or shorter repetitions, classes, alternatives)",
    )
    # The last good routes keep serving.
    assert await answered_by(envoy, "web", "/items/12") == "other"

    # A good change after it arrives; once Envoy has acknowledged it, any NACK it sent before (for
    # a refused version that got through) would have been read on the same stream already.
    replace(routes, ROUTES.format(rules=LATER_TO_OTHER + ITEMS_TO_OTHER))
    await envoy.eventually(answers(envoy, "web", "other", "/later"), "the good change after the refusal")

    async def routes_acknowledged() -> bool:
        tracks = [track for track in plane.registry.streams() if track.node_id == "limits"]
        return bool(tracks) and all(track.of(TypeUrl.ROUTE).state is SyncState.SYNCED for track in tracks)

    await envoy.eventually(routes_acknowledged, "Envoy's ACK of the good routes")
    assert [nack for nack in plane.registry.recent_nacks if nack.type_url is TypeUrl.ROUTE] == []
    assert plane.policy is not None
    assert plane.policy.status.errors == ()


# --- Kubernetes annotations go through the same model checks ------------------------------------


@pytest.mark.parametrize(
    ("annotations", "skipped", "reason"),
    [
        pytest.param(
            {"load-balancing": "ring_hash", "hash-key": "header:x\na"},
            "load-balancing",
            "hash_key: header name 'x\\na' must be a lowercase HTTP header name",
            id="hash-key-header-envoy-refuses",
        ),
        pytest.param(
            {"connect-timeout": "0.0000000001"},
            "connect-timeout",
            "connect_timeout must be within 1ms and 300s",
            id="connect-timeout-envoy-refuses",
        ),
        pytest.param(
            {"outlier-detection": "interval=0.0000000001"},
            "outlier-detection",
            "outlier_detection interval and base_ejection_time must be at least 1ms",
            id="outlier-interval-envoy-refuses",
        ),
    ],
)
def test_annotations_envoy_would_refuse_are_skipped(annotations: dict[str, str], skipped: str, reason: str) -> None:
    """Annotations carry no regexes; their values reach the same model checks, so one Envoy would
    refuse is skipped with the reason and the service keeps the rest of its policy."""
    obj = {
        "metadata": {"namespace": "shop", "name": "web", "annotations": {PREFIX + k: v for k, v in annotations.items()}}
    }
    annotated = policy_of(obj)
    assert [note for note in annotated.notes if f"annotation {PREFIX}{skipped}=" in note and reason in note]
    assert annotated.policy == TrafficPolicy()
    assert not annotated.policy.problems("service shop/web")
