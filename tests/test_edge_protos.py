"""The generated registry code is what `make protos` makes from protos/ now, and the edge
bootstraps in envoy-configs/ are valid Envoy configuration."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.envoy_harness import ENVOY_CONFIGS, REPO, validate_bootstrap


def test_generated_code_is_current(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.fail("grpcio-tools is missing: pip install -e '.[dev]'")
    result = subprocess.run(
        [sys.executable, str(REPO / "protos" / "generate.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    fresh = {
        p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "meshplane" / "api").rglob("*") if p.is_file()
    }
    committed_root = REPO / "meshplane" / "api"
    committed = {
        p.relative_to(REPO): p.read_bytes()
        for p in committed_root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert sorted(fresh) == sorted(committed), "files differ; run `make protos`"
    stale = sorted(str(path) for path in fresh if fresh[path] != committed[path])
    assert stale == [], f"generated code is stale; run `make protos`: {stale}"


def test_generated_code_imports_as_meshplane_api() -> None:
    from meshplane.api.edge.v1 import registry_pb2, registry_pb2_grpc

    assert registry_pb2.DESCRIPTOR.package == "meshplane.edge.v1"
    assert hasattr(registry_pb2_grpc, "RegistryServicer")


@pytest.mark.parametrize("bootstrap", ["edge-gateway.yaml", "device.yaml", "mobile.yaml"])
def test_edge_bootstraps_are_valid_envoy_config(bootstrap: str) -> None:
    validate_bootstrap(ENVOY_CONFIGS / bootstrap)
