"""The repository stands on its own: its license is the one its package metadata declares, and no
file points a reader at a document outside it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.envoy_harness import REPO

# Spelled in two parts so this file does not match itself.
OUTSIDE = ("..", "/shared")
OUTSIDE_PROTOCOL_NOTES = ("shared", "/XDS")
# The benchmarks' go-control-plane baseline is built by a script that is not part of the
# repository; these two files say where it is found by default (`GCP_BASELINE_DIR` overrides it).
MAY_NAME_THE_BASELINE = {"benchmarks/README.md", "benchmarks/build_go_client.sh"}


def repository_files() -> list[str]:
    """Tracked files and new ones not ignored (a file not yet committed is checked too)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted(name for name in set(listed.split("\0")) if name and (REPO / name).is_file())


def test_no_file_points_at_documents_outside_the_repository() -> None:
    offending = []
    for name in repository_files():
        data = (REPO / name).read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        text = data.decode(errors="replace")
        if "".join(OUTSIDE_PROTOCOL_NOTES) in text:
            offending.append(f"{name}: {''.join(OUTSIDE_PROTOCOL_NOTES)}")
        if "".join(OUTSIDE) in text and name not in MAY_NAME_THE_BASELINE:
            offending.append(f"{name}: {''.join(OUTSIDE)}")
    assert offending == []
    assert len(repository_files()) > 100  # the listing worked


def test_the_license_is_the_apache_license_the_package_declares(tmp_path: Path) -> None:
    """The wheel, built from what `pip install .` reads, declares Apache-2.0 as an SPDX expression,
    carries LICENSE, and setuptools warns about nothing license-related while building it."""
    license_text = (REPO / "LICENSE").read_text()
    assert license_text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in license_text
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "meshplane", source / "meshplane", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w", str(tmp_path), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    said = (build.stdout + build.stderr).splitlines()
    warnings = [
        line for line in said if "licen" in line.lower() and ("warn" in line.lower() or "deprecat" in line.lower())
    ]
    assert warnings == []
    (wheel,) = tmp_path.glob("meshplane-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        fields = archive.read(metadata).decode().split("\n\n")[0].splitlines()
        assert "License-Expression: Apache-2.0" in fields
        assert "License-File: LICENSE" in fields
        (packaged,) = [name for name in archive.namelist() if name.endswith(".dist-info/licenses/LICENSE")]
        assert archive.read(packaged).decode() == license_text
