"""What some tests need from the machine, and what happens when it is missing.

A missing precondition FAILS its tests: `make test` and CI install everything these tests need
(`make kube-apiserver`, openssl, root for network namespaces, the go-control-plane baseline beside
the repository), so a skip there would only hide a broken install step. A developer whose machine
cannot have one (no root, say) sets MESHPLANE_ALLOW_MISSING_PRECONDITIONS=1 to have exactly those
tests skipped, by name and reason, and nothing else.
"""

from __future__ import annotations

import os

import pytest

ALLOW_MISSING = os.environ.get("MESHPLANE_ALLOW_MISSING_PRECONDITIONS") == "1"


def requires(missing: str | None) -> pytest.MarkDecorator:
    """Marks tests that need something; `missing` says what is missing (None: nothing). They are
    skipped only when missing preconditions are allowed; otherwise `require` fails them."""
    return pytest.mark.skipif(ALLOW_MISSING and missing is not None, reason=missing or "")


def require(missing: str | None) -> None:
    """Fails the running test when its precondition is missing."""
    if missing is not None:
        pytest.fail(
            f"missing precondition: {missing} (on a machine that cannot have it, set "
            "MESHPLANE_ALLOW_MISSING_PRECONDITIONS=1 to skip the tests that need it)"
        )
