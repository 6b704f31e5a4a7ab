"""Command-line flags that environment variables can also set: `--tls-cert` ⇔ `MESHPLANE_TLS_CERT`.

Owns the rule that ties a flag to its variable, so the two names can never drift apart: the
variable is `MESHPLANE_` + the flag's name in upper case with dashes as underscores. A set,
non-empty variable gives the flag's default (converted by the flag's type); the command line still
wins. Imports nothing heavy: the CLI builds its parser before anything else loads.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any


def variable_of(flag: str) -> str:
    """`--registry-tls-cert` → `MESHPLANE_REGISTRY_TLS_CERT`."""
    return "MESHPLANE_" + flag.lstrip("-").replace("-", "_").upper()


def env_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    *,
    help: str,
    default: Any = None,
    type: Callable[[str], Any] = str,
    secret: bool = False,
    **options: Any,
) -> None:
    """Adds `flag` with its default taken from its environment variable when that is set.

    `help` gets the variable's name and the default appended; a `secret` flag's default (which may
    come from the environment) is never shown in `--help`.
    """
    variable = variable_of(flag)
    raw = os.environ.get(variable, "")
    shown = "" if secret else "; default %(default)s"
    parser.add_argument(
        flag,
        type=type,
        default=type(raw) if raw else default,
        help=f"{help} [{variable}{shown}]",
        **options,
    )
