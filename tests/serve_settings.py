"""The settings `meshplane serve` would serve with, for tests of its command line.

It owns one fixture, `served`: `meshplane.app.serve` replaced for the test by one that only keeps
its settings, so `main([...])` returns where it would start serving. It must start nothing.
Import it into a test module (and name it in `__all__`) for pytest to find it there.
"""

from __future__ import annotations

import pytest

import meshplane.app
from meshplane.app import Settings


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """The settings of every `meshplane serve` the test runs, in order (nothing is served)."""
    seen: list[Settings] = []

    async def serve(settings: Settings) -> None:
        seen.append(settings)

    monkeypatch.setattr(meshplane.app, "serve", serve)
    return seen
