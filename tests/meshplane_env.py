"""MESHPLANE_* variables give flag defaults, so a test that parses meshplane's command line must say
which are set: the developer's shell may export any."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

PREFIX = "MESHPLANE_"


@contextlib.contextmanager
def only_these_variables(variables: Mapping[str, str]) -> Iterator[None]:
    """Exactly `variables` as this process's MESHPLANE_* environment (none of the test's own) while
    inside; the previous ones are put back after."""
    saved = {key: value for key, value in os.environ.items() if key.startswith(PREFIX)}
    try:
        for key in saved:
            del os.environ[key]
        os.environ.update(variables)
        yield
    finally:
        for key in [key for key in os.environ if key.startswith(PREFIX)]:
            del os.environ[key]
        os.environ.update(saved)


def without_meshplane_variables() -> dict[str, str]:
    """This process's environment minus every MESHPLANE_* variable, for a subprocess."""
    return {key: value for key, value in os.environ.items() if not key.startswith(PREFIX)}
