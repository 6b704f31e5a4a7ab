"""Conditions as the status subresource holds them (metav1.Condition), rendered the one way every
status writer of meshplane writes them: pure, no I/O.

Owns the rule that a condition keeps its `lastTransitionTime` while its status stays (a change of
reason or message alone is no transition), the time format, and the cut of messages to a bound.
Must not decide what a condition says: the GatewayClass, Gateway API and meshplane API status
code does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol


class ConditionLike(Protocol):
    """A condition to write: its type, status ("True", "False", "Unknown"), reason and message."""

    @property
    def type(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def message(self) -> str: ...


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC to the second, as Kubernetes writes a condition's time."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_condition(
    condition: ConditionLike,
    observed_generation: int,
    previous: Mapping[str, Any] | None,
    now: datetime,
    max_message: int | None = None,
) -> dict[str, Any]:
    """`condition` as a metav1.Condition observed at `observed_generation`, keeping the
    lastTransitionTime of `previous` (the object's condition of its type) while its status is the
    same, else `now`; its message cut to `max_message` characters when given."""
    kept = previous.get("lastTransitionTime") if previous is not None else None
    same = previous is not None and previous.get("status") == condition.status and isinstance(kept, str)
    message = condition.message if max_message is None else condition.message[:max_message]
    return {
        "type": condition.type,
        "status": condition.status,
        "reason": condition.reason,
        "message": message,
        "observedGeneration": observed_generation,
        "lastTransitionTime": kept if same else timestamp(now),
    }


def render_conditions(
    wanted: Iterable[tuple[ConditionLike, int]], current: Any, now: datetime, max_message: int | None = None
) -> list[dict[str, Any]]:
    """`wanted` (each a condition and the generation it observed) rendered by `render_condition`
    against `current`, the object's `status.conditions` as it holds them (anything: a malformed
    list counts as none)."""
    previous = {c.get("type"): c for c in current if isinstance(c, Mapping)} if isinstance(current, list) else {}
    return [
        render_condition(condition, generation, previous.get(condition.type), now, max_message)
        for condition, generation in wanted
    ]
