"""Policy-file loading stays off the event loop and parses each file's bytes once.

Behaviour only, never time: which YAML loader reads the files (and that both give the same lines
and errors), how many parses a load does (counted through a seam on `parse_policy`), and in which
order a coroutine and a load's parse run.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from benchmarks.policy_edit import edit_one_endpoint, write_policy_directory
from meshplane.discovery import policy_files, policy_schema
from meshplane.discovery.policy_files import PolicyFileSource, validate_policy
from meshplane.discovery.policy_schema import ParsedPolicy, parse_policy
from meshplane.discovery.policy_yaml import LibyamlPolicyLoader, PythonPolicyLoader
from tests.test_policy_schema import ERROR_CASES, MODEL_PROBLEM_CASES, ROUTE_CASES, SERVICE_CASES, parse, problems

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LOADERS = [
    pytest.param(PythonPolicyLoader, id="pure-python"),
    pytest.param(
        LibyamlPolicyLoader,
        id="libyaml",
        marks=pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml"),
    ),
]
# A long time ago: files this old are trusted by their signature rather than re-read.
OLD_NS = 1_000_000_000 * 1_000_000_000


@pytest.fixture(params=LOADERS)
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> type[yaml.SafeLoader]:
    """Runs the test once with each YAML loader `parse_policy` may use."""
    monkeypatch.setattr(policy_schema, "YAML_LOADER", request.param)
    return request.param  # type: ignore[no-any-return]


def parse_with(loader: type[yaml.SafeLoader], text: str, source: str) -> ParsedPolicy:
    previous = policy_schema.YAML_LOADER
    policy_schema.YAML_LOADER = loader
    try:
        return parse_policy(text, source)
    finally:
        policy_schema.YAML_LOADER = previous


# --- the loader ---


def test_libyaml_reads_the_files_where_pyyaml_has_it() -> None:
    expected = LibyamlPolicyLoader if yaml.__with_libyaml__ else PythonPolicyLoader
    assert policy_schema.YAML_LOADER is expected


@pytest.mark.parametrize(("text", "error"), ERROR_CASES)
def test_errors_name_file_line_and_reason_under_each_loader(loader: object, text: str, error: str) -> None:
    assert error in parse(text).errors


@pytest.mark.parametrize(("files", "problem"), MODEL_PROBLEM_CASES)
def test_model_problems_name_files_and_lines_under_each_loader(
    loader: object, files: list[tuple[str, str]], problem: str
) -> None:
    assert problem in problems(*files)


def _texts() -> Iterator[tuple[str, str]]:
    for case in [*SERVICE_CASES, *ROUTE_CASES, *ERROR_CASES]:
        yield case.id or "case", case.values[0]  # type: ignore[misc]
    for path in sorted(EXAMPLES.glob("*.yaml")):
        yield path.name, path.read_text()
    yield "half-written", "services:\n  - name: web\n    port: 80\n    endpoints:\n      - {address: 10.0.0.1, po"
    yield "tab-indent-last-line", "services:\n  - name: web\n    port: 80\n\tx: 1\n"
    yield "bad-utf8-escape", 'services:\n  - name: "web\\xZZ"\n'
    yield "control-character", "services:\n  - name: web\x07\n"
    yield "unclosed-quote", "routes:\n  - name: 'r\n    rules: []\n"


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml")
@pytest.mark.parametrize(("name", "text"), list(_texts()), ids=[name for name, _ in _texts()])
def test_both_loaders_read_every_case_alike_lines_included(name: str, text: str) -> None:
    """Objects, their origins (file:line) and every error message are the same whichever loader read them."""
    import textwrap

    text = textwrap.dedent(text)
    assert parse_with(LibyamlPolicyLoader, text, "p.yaml") == parse_with(PythonPolicyLoader, text, "p.yaml")


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml")
def test_only_libyaml_takes_a_tab_after_a_colon_as_yaml_allows() -> None:
    """The one difference known: YAML lets a tab separate a key from its value; the pure-Python
    parser refuses it (docs/policy-files.md says so)."""
    text = "services:\n  - name: web\n    port:\t80\n"
    assert [service.name for service in parse_with(LibyamlPolicyLoader, text, "p.yaml").services] == ["web"]
    assert parse_with(PythonPolicyLoader, text, "p.yaml").errors == (
        "p.yaml:3: invalid YAML: found character '\\t' that cannot start any token",
    )


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml")
def test_both_loaders_read_a_generated_directory_alike(tmp_path: Path) -> None:
    for path in write_policy_directory(tmp_path, services=40, endpoints=3, files=2):
        text = path.read_text()
        assert parse_with(LibyamlPolicyLoader, text, str(path)) == parse_with(PythonPolicyLoader, text, str(path))


# --- parses are counted ---


class CountedParses:
    """A stand-in for `parse_policy` that counts the files it parses, by name."""

    def __init__(self) -> None:
        self.sources: list[str] = []

    def __call__(self, text: str, source: str) -> ParsedPolicy:
        self.sources.append(Path(source).name)
        return parse_policy(text, source)

    def take(self) -> list[str]:
        taken, self.sources = self.sources, []
        return sorted(taken)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> CountedParses:
    counted = CountedParses()
    monkeypatch.setattr(policy_files, "parse_policy", counted)
    return counted


def age(*paths: Path) -> None:
    """Make files old, so their signature is trusted (outside the racy window)."""
    for path in paths:
        os.utime(path, ns=(OLD_NS, OLD_NS))


class Changes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


async def test_an_edit_of_one_file_of_ten_parses_that_file_only(tmp_path: Path, parses: CountedParses) -> None:
    files = write_policy_directory(tmp_path, services=50, endpoints=2, files=10)
    changes = Changes()
    policy = PolicyFileSource(tmp_path, on_change=changes)
    assert await policy.load() is True
    assert parses.take() == sorted(path.name for path in files)
    first = policy.mesh
    assert first is not None

    edit_one_endpoint(files[3], port=9999)
    assert await policy.load() is True
    assert parses.take() == [files[3].name]
    assert policy.mesh is not None
    assert policy.mesh != first
    assert 9999 in {endpoint.port for service in policy.mesh.services for endpoint in service.endpoints}
    assert changes.count == 2


async def test_an_edit_in_a_big_file_gives_new_objects_only_for_what_changed(tmp_path: Path) -> None:
    """Downstream finds changed services by identity: the other services of the file stay the same objects."""
    (path,) = write_policy_directory(tmp_path, services=30, endpoints=2, files=1)
    policy = PolicyFileSource(tmp_path)
    assert await policy.load() is True
    before = policy.mesh
    assert before is not None

    edit_one_endpoint(path, port=9999)
    assert await policy.load() is True
    after = policy.mesh
    assert after is not None
    new_objects = [
        service.name for old, service in zip(before.services, after.services, strict=True) if old is not service
    ]
    assert new_objects == ["svc-00000"]
    assert all(old is new for old, new in zip(before.routes, after.routes, strict=True))


async def test_re_reading_unchanged_bytes_parses_nothing_and_changes_nothing(
    tmp_path: Path, parses: CountedParses
) -> None:
    """The racy window re-reads files changed within the last 2 s: their bytes are not parsed again."""
    files = write_policy_directory(tmp_path, services=20, endpoints=2, files=4)
    changes = Changes()
    policy = PolicyFileSource(tmp_path, on_change=changes)
    assert await policy.load() is True
    parses.take()
    served = policy.mesh

    # Just written: inside the racy window, so every load reads the files again.
    for _ in range(3):
        assert await policy.load() is False
    assert parses.take() == []
    assert policy.mesh is served
    assert changes.count == 1

    # Touched (a new mtime, the same bytes): read again, not parsed again.
    age(*files)
    os.utime(files[0])
    assert await policy.load() is False
    assert parses.take() == []
    assert policy.mesh is served


async def test_an_edit_that_leaves_the_mesh_equal_keeps_the_served_mesh(tmp_path: Path, parses: CountedParses) -> None:
    files = write_policy_directory(tmp_path, services=10, endpoints=2, files=2)
    changes = Changes()
    policy = PolicyFileSource(tmp_path, on_change=changes)
    assert await policy.load() is True
    parses.take()
    served = policy.mesh

    with files[1].open("a") as file:
        file.write("# a comment at the end changes no definition's line\n")
    assert await policy.load() is False
    assert parses.take() == [files[1].name]
    assert policy.mesh is served
    assert changes.count == 1


async def test_a_broken_file_is_parsed_once_and_refused_on_every_read(tmp_path: Path, parses: CountedParses) -> None:
    files = write_policy_directory(tmp_path, services=10, endpoints=2, files=2)
    policy = PolicyFileSource(tmp_path)
    assert await policy.load() is True
    served = policy.mesh
    parses.take()

    temporary = tmp_path / ".broken.tmp"
    temporary.write_text(files[0].read_text() + "  - name: [unclosed\n")
    temporary.rename(files[0])
    for _ in range(2):  # inside the racy window: read twice
        assert await policy.load() is False
        assert policy.status.errors
        assert all(error.startswith(f"{files[0]}:") for error in policy.status.errors)
        assert policy.mesh is served
    assert parses.take() == [files[0].name]


async def test_a_changed_secret_file_is_read_again_without_parsing_policy(
    tmp_path: Path, parses: CountedParses
) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIBold\n-----END CERTIFICATE-----\n")
    (tmp_path / "secrets.yaml").write_text("secrets:\n  - {name: ca, ca_file: ca.pem}\n")
    policy = PolicyFileSource(tmp_path)
    assert await policy.load() is True
    assert parses.take() == ["secrets.yaml"]

    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIBnew\n-----END CERTIFICATE-----\n")
    assert await policy.load() is True
    assert parses.take() == []
    assert policy.mesh is not None
    assert "MIIBnew" in policy.mesh.trust_bundles[0].ca_certificates


# --- off the event loop ---


async def test_the_event_loop_runs_other_work_while_a_file_is_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parse waits until a coroutine scheduled during the load has run: were it on the event
    loop, that coroutine could not run before it returns (the parse would give up waiting and fail)."""
    write_policy_directory(tmp_path, services=5, endpoints=1, files=1)
    order: list[str] = []
    other_ran = threading.Event()
    parsing = threading.Event()

    def blocking_parse(text: str, source: str) -> ParsedPolicy:
        parsing.set()
        if not other_ran.wait(timeout=30):
            order.append("parse gave up: nothing else ran on the event loop meanwhile")
        order.append("parsed")
        return parse_policy(text, source)

    monkeypatch.setattr(policy_files, "parse_policy", blocking_parse)

    async def other_work() -> None:
        await asyncio.to_thread(parsing.wait, 30)  # scheduled once the load is parsing
        order.append("other work")
        other_ran.set()

    policy = PolicyFileSource(tmp_path)
    async with asyncio.TaskGroup() as group:
        group.create_task(other_work())
        loaded = group.create_task(policy.load())
    assert loaded.result() is True
    assert order == ["other work", "parsed"]


async def test_the_event_loop_keeps_turning_during_a_real_large_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ticker on the event loop advances between the start and the end of a 1,000-service parse."""
    write_policy_directory(tmp_path, services=1000, endpoints=10, files=1)
    ticks = 0
    seen: list[int] = []

    def watched_parse(text: str, source: str) -> ParsedPolicy:
        seen.append(ticks)
        parsed = parse_policy(text, source)
        seen.append(ticks)
        return parsed

    monkeypatch.setattr(policy_files, "parse_policy", watched_parse)

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    stop = asyncio.Event()
    policy = PolicyFileSource(tmp_path)
    async with asyncio.TaskGroup() as group:
        group.create_task(ticker(stop))
        assert await policy.load() is True
        stop.set()
    start, end = seen
    assert end > start, "the event loop did not run while the file was parsed"
    assert policy.mesh is not None
    assert len(policy.mesh.services) == 1000


async def test_the_cycle_collector_runs_again_after_every_read(tmp_path: Path) -> None:
    """Reads pause Python's cycle collector while they parse; it must be back on after each, good or bad."""
    (path,) = write_policy_directory(tmp_path, services=3, endpoints=1, files=1)
    policy = PolicyFileSource(tmp_path)
    assert await policy.load() is True
    assert gc.isenabled()
    path.write_text("services: [unclosed\n")
    assert await policy.load() is False
    assert gc.isenabled()


async def test_concurrent_loads_run_one_after_the_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two loads of one source never parse at once (the second waits for the first), and both see the files."""
    write_policy_directory(tmp_path, services=4, endpoints=1, files=1)
    active = 0
    most = 0
    lock = threading.Lock()
    release = threading.Event()

    def tracked_parse(text: str, source: str) -> ParsedPolicy:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        release.wait(timeout=30)
        with lock:
            active -= 1
        return parse_policy(text, source)

    monkeypatch.setattr(policy_files, "parse_policy", tracked_parse)
    policy = PolicyFileSource(tmp_path)
    first = asyncio.create_task(policy.load())
    second = asyncio.create_task(policy.load())
    await asyncio.sleep(0)
    release.set()
    assert await first is True
    assert await second is False
    assert most == 1


async def test_validate_reports_the_same_errors_from_its_worker(tmp_path: Path) -> None:
    files = write_policy_directory(tmp_path, services=10, endpoints=1, files=2)
    with files[1].open("a") as file:
        file.write("  - {name: extra, port: 70000}\n")
    errors = await validate_policy(tmp_path)
    line = len(files[1].read_text().splitlines())
    assert errors == [f"service default/extra ({files[1]}:{line}): port 70000 is out of range 1-65535"]
