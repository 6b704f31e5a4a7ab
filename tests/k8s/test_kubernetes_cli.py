"""`meshplane serve` flags and MESHPLANE_… variables for Kubernetes discovery reach the settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshplane.app import Settings
from meshplane.cli import main
from tests.serve_settings import served

__all__ = ["served"]  # a fixture, found by pytest under this name


def test_flags(served: list[Settings]) -> None:
    argv = ["serve", "--kubernetes", "--kubeconfig", "/k/config", "--namespace", "shop", "--namespace", "billing",
            "--service-selector", "mesh=on"]  # fmt: skip
    assert main(argv) == 0
    (settings,) = served
    assert settings.kubernetes
    assert settings.config is None
    assert settings.kubeconfig == Path("/k/config")
    assert settings.namespaces == ("shop", "billing")
    assert settings.service_selector == "mesh=on"


def test_environment(served: list[Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    env: dict[str, Any] = {
        "MESHPLANE_KUBERNETES": "true",
        "MESHPLANE_NAMESPACES": "a, b",
        "MESHPLANE_SERVICE_SELECTOR": "tier!=batch",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve"]) == 0
    (settings,) = served
    assert settings.kubernetes
    assert settings.namespaces == ("a", "b")
    assert settings.service_selector == "tier!=batch"


def test_a_source_is_required(served: list[Settings], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve"]) == 2
    assert "--kubernetes" in capsys.readouterr().err
    assert served == []


def test_secrets_flags_and_environment(served: list[Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["serve", "--kubernetes", "--kubernetes-secrets", "--secret-selector", "sds=mine"]) == 0
    monkeypatch.setenv("MESHPLANE_KUBERNETES", "true")
    monkeypatch.setenv("MESHPLANE_KUBERNETES_SECRETS", "true")
    assert main(["serve"]) == 0
    assert main(["serve", "--no-kubernetes-secrets"]) == 0
    flagged, from_environment, turned_off = served
    assert (flagged.kubernetes_secrets, flagged.secret_selector) == (True, "sds=mine")
    assert (from_environment.kubernetes_secrets, from_environment.secret_selector) == (True, "meshplane.io/sds=true")
    assert not turned_off.kubernetes_secrets


def test_secrets_need_kubernetes(served: list[Settings], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--config", "examples", "--kubernetes-secrets"]) == 2
    assert "--kubernetes-secrets needs --kubernetes" in capsys.readouterr().err
    assert served == []


def test_an_empty_secret_selector_is_refused(served: list[Settings], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--kubernetes", "--kubernetes-secrets", "--secret-selector", ""]) == 2
    assert "is empty: it would read every Secret" in capsys.readouterr().err
    assert served == []


def test_gateway_api_flags_and_environment(served: list[Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["serve", "--kubernetes", "--gateway-api", "--gateway-controller-name", "example.com/gw"]) == 0
    monkeypatch.setenv("MESHPLANE_KUBERNETES", "true")
    monkeypatch.setenv("MESHPLANE_GATEWAY_API", "true")
    assert main(["serve"]) == 0
    flagged, from_environment = served
    assert (flagged.gateway_api, flagged.gateway_controller_name) == (True, "example.com/gw")
    assert (from_environment.gateway_api, from_environment.gateway_controller_name) == (
        True,
        "meshplane.io/gateway-controller",
    )
