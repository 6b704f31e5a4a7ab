"""Command-line flags that environment variables can also set: `--tls-cert` ⇔ `MESHPLANE_TLS_CERT`.

Owns the rule that ties a flag to its variable, so the two names can never drift apart: the
variable is `MESHPLANE_` + the flag's name in upper case with dashes as underscores. The client
tools (`meshplane bootstrap`, `meshplane simulate devices`) give their flags a scope, which goes
between the two (`--tls-cert` of `bootstrap` ⇔ `MESHPLANE_BOOTSTRAP_TLS_CERT`): the same flag
name means another file there (a proxy's client certificate, not the server's), and a variable
exported for `meshplane serve` must not change what a tool run in the same shell does. A set,
non-empty variable gives the flag's default (converted by the flag's type); the command line still
wins. Imports nothing heavy: the CLI builds its parser before anything else loads.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any


def variable_of(flag: str, scope: str = "") -> str:
    """`--registry-tls-cert` → `MESHPLANE_REGISTRY_TLS_CERT`; with scope `bootstrap`, `--site` →
    `MESHPLANE_BOOTSTRAP_SITE`."""
    name = flag.lstrip("-").replace("-", "_").upper()
    return f"MESHPLANE_{scope.upper()}_{name}" if scope else f"MESHPLANE_{name}"


def env_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    *,
    help: str,
    default: Any = None,
    type: Callable[[str], Any] = str,
    secret: bool = False,
    scope: str = "",
    **options: Any,
) -> None:
    """Adds `flag` with its default taken from its environment variable when that is set.

    `help` gets the variable's name and the default appended; a `secret` flag's default (which may
    come from the environment) is never shown in `--help`.
    """
    variable = variable_of(flag, scope)
    raw = os.environ.get(variable, "")
    shown = "" if secret else "; default %(default)s"
    parser.add_argument(
        flag,
        type=type,
        default=type(raw) if raw else default,
        help=f"{help} [{variable}{shown}]",
        **options,
    )


TRUE = ("1", "true", "yes", "on")


def env_switch(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, flag: str, *, help: str, scope: str = ""
) -> None:
    """Adds an on/off `flag` (and its `--no-` form), off unless its variable says 1, true, yes or on."""
    variable = variable_of(flag, scope)
    parser.add_argument(
        flag,
        action=argparse.BooleanOptionalAction,
        default=os.environ.get(variable, "").lower() in TRUE,
        help=f"{help} [{variable}=true]",
    )


def gateway_api_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, default_controller_name: str
) -> None:
    """Adds the Gateway API flags of `meshplane serve`: `--gateway-api` (watch Gateway API objects
    and own GatewayClasses) and `--gateway-controller-name` (the classes owned; the caller gives
    the default, `gateway_classes.DEFAULT_CONTROLLER_NAME`, since this module imports nothing of
    meshplane's and the bootstrap tool, which uses it, may not import discovery)."""
    env_switch(
        parser,
        "--gateway-api",
        help="with --kubernetes: watch Gateway API objects and write the status of the GatewayClasses meshplane"
        " owns (docs/kubernetes.md; needs deploy/kubernetes/gateway-api/)",
    )
    env_flag(
        parser,
        "--gateway-controller-name",
        default=default_controller_name,
        help="with --gateway-api: the spec.controllerName of the GatewayClasses meshplane owns",
    )


def meshplane_api_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, kinds: Sequence[str]) -> None:
    """Adds the flags of meshplane's own Kubernetes API to `meshplane serve`: `--meshplane-api`
    (watch the meshplane.io kinds, serve them and write their status) and `--watch-namespaces`
    (the namespaces whose objects of those kinds are served; comma-separated; empty: those of
    `--namespace`, else all). `kinds`: the kinds' names, as `meshplane_api.kinds.KINDS` lists them
    (given, not imported: this module imports nothing heavy)."""
    named = ", ".join(kinds)
    env_switch(
        parser,
        "--meshplane-api",
        help=f"with --kubernetes: watch meshplane's own kinds ({named}), serve them and write their status"
        " (docs/kubernetes-api.md; needs deploy/kubernetes/crds/ and deploy/kubernetes/meshplane-api/)",
    )
    env_flag(
        parser,
        "--watch-namespaces",
        default="",
        help="with --meshplane-api: the namespaces whose objects of meshplane's namespaced kinds are served,"
        " comma-separated (objects elsewhere are ignored and listed in /status); when empty, those of"
        " --namespace, else all",
    )
