"""Flags and their MESHPLANE_… variables: one naming rule, the command line wins, secrets stay hidden."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from meshplane.cli import _parser
from meshplane.flags import env_flag, variable_of


def test_the_variable_is_derived_from_the_flag() -> None:
    assert variable_of("--registry-tls-cert") == "MESHPLANE_REGISTRY_TLS_CERT"


def test_variable_sets_the_default_and_the_command_line_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHPLANE_POLL_INTERVAL", "2.5")
    monkeypatch.setenv("MESHPLANE_TLS_CERT", "/etc/tls.crt")
    monkeypatch.setenv("MESHPLANE_STATUS_ADDRESS", "")  # empty: as if unset
    args = _parser().parse_args(["serve"])
    assert (args.poll_interval, args.tls_cert, args.status_address) == (2.5, Path("/etc/tls.crt"), "0.0.0.0:9900")
    assert _parser().parse_args(["serve", "--poll-interval", "4"]).poll_interval == 4.0


def test_a_secret_default_is_never_shown_in_help(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHPLANE_TOKEN", "s3cret")
    parser = argparse.ArgumentParser()
    env_flag(parser, "--token", secret=True, help="a token")
    env_flag(parser, "--port", type=int, default=80, help="a port")
    text = parser.format_help()
    assert "s3cret" not in text
    assert "[MESHPLANE_TOKEN]" in text
    assert "[MESHPLANE_PORT; default 80]" in text
    assert parser.parse_args([]).token == "s3cret"


def test_a_scoped_flag_reads_its_own_variable_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client tool's `--tls-cert` is another file than the server's: MESHPLANE_TLS_CERT must not reach it."""
    assert variable_of("--tls-cert", "bootstrap") == "MESHPLANE_BOOTSTRAP_TLS_CERT"
    monkeypatch.setenv("MESHPLANE_TLS_CERT", "/etc/server.crt")
    parser = argparse.ArgumentParser()
    env_flag(parser, "--tls-cert", scope="bootstrap", help="a proxy's certificate")
    assert parser.parse_args([]).tls_cert is None
    monkeypatch.setenv("MESHPLANE_BOOTSTRAP_TLS_CERT", "/etc/proxy.crt")
    parser = argparse.ArgumentParser()
    env_flag(parser, "--tls-cert", scope="bootstrap", help="a proxy's certificate")
    assert parser.parse_args([]).tls_cert == "/etc/proxy.crt"
    assert "[MESHPLANE_BOOTSTRAP_TLS_CERT; default /etc/proxy.crt]" in " ".join(parser.format_help().split())
