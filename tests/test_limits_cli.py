"""The input-limit flags and MESHPLANE_… variables reach the settings, and the policy file size
reaches the policy source."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshplane.app import ControlPlane, Settings
from meshplane.cli import main
from tests.serve_settings import served

__all__ = ["served"]  # a fixture, found by pytest under this name


def test_defaults(served: list[Settings]) -> None:
    assert main(["serve", "--config", "x.yaml", "--registry-db", ":memory:"]) == 0
    (settings,) = served
    assert settings.max_streams_per_connection == 1000
    assert settings.max_streams_per_client == 1000
    assert settings.max_policy_file_size == 1024 * 1024
    assert settings.edge is not None
    assert (settings.edge.register_rate, settings.edge.register_burst) == (100.0, 1000)


def test_flags(served: list[Settings]) -> None:
    argv = ["serve", "--config", "x.yaml", "--max-streams-per-connection", "8", "--max-streams-per-client", "0",
            "--max-policy-file-size", "4096", "--registry-db", ":memory:", "--registry-rate", "0.5",
            "--registry-burst", "3"]  # fmt: skip
    assert main(argv) == 0
    (settings,) = served
    assert (settings.max_streams_per_connection, settings.max_streams_per_client) == (8, 0)
    assert settings.max_policy_file_size == 4096
    assert settings.edge is not None
    assert (settings.edge.register_rate, settings.edge.register_burst) == (0.5, 3)


def test_environment(served: list[Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "MAX_STREAMS_PER_CONNECTION": "9",
        "MAX_STREAMS_PER_CLIENT": "5",
        "MAX_POLICY_FILE_SIZE": "2048",
        "REGISTRY_RATE": "1",
        "REGISTRY_BURST": "4",
    }.items():
        monkeypatch.setenv(f"MESHPLANE_{name}", value)
    assert main(["serve", "--config", "x.yaml", "--registry-db", ":memory:"]) == 0
    (settings,) = served
    assert (settings.max_streams_per_connection, settings.max_streams_per_client) == (9, 5)
    assert settings.max_policy_file_size == 2048
    assert settings.edge is not None
    assert (settings.edge.register_rate, settings.edge.register_burst) == (1.0, 4)


async def test_an_oversized_policy_file_is_refused_with_the_limit(tmp_path: Path) -> None:
    policy = tmp_path / "mesh.yaml"
    policy.write_text("# padding\n" * 100)
    plane = ControlPlane(Settings(config=policy, max_policy_file_size=64))
    assert plane.policy is not None
    assert not await plane.policy.load()
    errors = " ".join(str(error) for error in plane.policy.status.errors)
    assert "over the limit of 64 bytes" in errors, errors


def test_registry_flag_defaults_match_the_api() -> None:
    import meshplane.registry_api.options
    import meshplane.registry_api.service

    assert meshplane.registry_api.options.DEFAULT_REGISTER_RATE == meshplane.registry_api.service.DEFAULT_REGISTER_RATE
    assert (
        meshplane.registry_api.options.DEFAULT_REGISTER_BURST == meshplane.registry_api.service.DEFAULT_REGISTER_BURST
    )
