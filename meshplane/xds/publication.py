"""The record of a publication: what the publisher last did, as plain data.

Owns `PublishState` only. The publisher writes it; the status endpoint, metrics and CLI read it.
It lives apart from the publisher so that readers never import the code that publishes (the
"status reads, never writes" contract), and it must import nothing of the control plane.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PublishState:
    """What the last publication did, for the status endpoint."""

    published_at: float | None = None
    mesh_generation: int = 0
    endpoints_only: bool = False
    duration_seconds: float = 0.0
    groups: int = 0
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
