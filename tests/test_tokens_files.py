"""The `--xds-tokens` and `--registry-tokens` files as the documents describe them: every example in
README.md and docs/ loads with the real loader, the documented way of making an entry
(`meshplane devices hash-token`, then a role or principal line) gives a working token, and a bad
file stops `meshplane serve` with one line naming the flag, the file and the entry."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from meshplane.discovery.registry.auth import Principal, PrincipalKind, TokenAuthenticator
from meshplane.xds.server.identity import Grant, XdsTokens
from tests.envoy_harness import REPO
from tests.meshplane_env import without_meshplane_variables
from tests.ports import free_port

DOCUMENTS = ("README.md", "docs/edge.md", "docs/bootstraps.md")
YAML_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)


def token_examples(document: str) -> list[str]:
    """The YAML blocks of `document` that are tokens files."""
    text = (REPO / document).read_text()
    return [block for block in YAML_BLOCK.findall(text) if block.startswith("tokens:\n")]


def is_xds_example(block: str) -> bool:
    return re.search(r"^\s+role:", block, re.MULTILINE) is not None


def load(block: str, path: Path) -> XdsTokens | TokenAuthenticator:
    """The example loaded by the loader `meshplane serve` uses for its kind of file."""
    path.write_text(block)
    if is_xds_example(block):
        return XdsTokens.from_file(path)
    return TokenAuthenticator.from_file(path)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_documented_tokens_file_loads(document: str, tmp_path: Path) -> None:
    examples = token_examples(document)
    kinds = {is_xds_example(block) for block in examples}
    expected = {"README.md": {True, False}, "docs/edge.md": {False}, "docs/bootstraps.md": {True}}[document]
    assert kinds == expected, f"{document} should show an example of each of its tokens files"
    for block in examples:
        loaded = load(block, tmp_path / "tokens.yaml")
        if isinstance(loaded, TokenAuthenticator):
            assert len(loaded) == block.count("sha256:")


def hash_token(token: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "meshplane", "devices", "hash-token"],
        input=token,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=without_meshplane_variables(),
        timeout=60,
        check=True,
    )
    return done.stdout


def test_a_hash_token_line_with_a_role_line_grants_that_role(tmp_path: Path) -> None:
    token = "f3b1c6d0a9e84b7c9d2e5f6a7b8c9d0e"
    entry = hash_token(token)
    assert entry.startswith("  - sha256: ")
    path = tmp_path / "xds-tokens.yaml"
    path.write_text(f"tokens:\n{entry}    role: edge-gateway\n    site: gym-berlin\n")
    tokens = XdsTokens.from_file(path)
    assert tokens.grants_for([("authorization", f"Bearer {token}")]) == (Grant("edge-gateway", "gym-berlin"),)
    assert tokens.grants_for([("authorization", "Bearer another-token")]) is None


def test_a_hash_token_line_with_a_principal_line_names_that_principal(tmp_path: Path) -> None:
    token = "0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a"
    path = tmp_path / "registry-tokens.yaml"
    path.write_text(f"tokens:\n{hash_token(token)}    device: bike-0001\n")
    authenticator = TokenAuthenticator.from_file(path)
    assert authenticator.principal_for(f"Bearer {token}") == Principal(PrincipalKind.DEVICE, "bike-0001")


@pytest.mark.parametrize("flag", ["--xds-tokens", "--registry-tokens"])
def test_a_malformed_tokens_file_stops_serve_in_one_line(flag: str, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tokens:\n  - sha256: the-token-itself\n    role: sidecar\n")
    registry = [
        "--registry-db",
        ":memory:",
        "--registry-address",
        f"127.0.0.1:{free_port()}",
        "--registry-http-address",
        f"127.0.0.1:{free_port()}",
    ]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshplane",
            "serve",
            "--config",
            str(REPO / "examples"),
            "--xds-address",
            f"127.0.0.1:{free_port()}",
            "--status-address",
            f"127.0.0.1:{free_port()}",
            flag,
            str(tokens),
            *(registry if flag == "--registry-tokens" else []),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=without_meshplane_variables(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"meshplane: {flag}"), done.stderr
    assert str(tokens) in last, done.stderr
    assert "sha256" in last, done.stderr
    assert "Traceback" not in done.stderr
