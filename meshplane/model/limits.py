"""The limits proxies hold configuration to, so that what the model accepts a proxy accepts.

Owns the checks of single values that Envoy (and grpcio) refuse a whole resource for: regexes
(compiled by RE2 itself under Envoy's program-size limit), HTTP header names, control characters
in paths, and the smallest positive duration. Each answers "why not" as text, or None; the model's
`problems()` and the policy-file reader (which knows the line) both ask here, so each rule is
written once. Must not know Envoy's wire types nor where a value came from.
"""

from __future__ import annotations

import functools
import re

# google-re2, the Python binding of the RE2 library Envoy links: the same parser, the same program.
import re2  # type: ignore[import-untyped]

# Envoy compiles every `safe_regex` with RE2 and refuses the whole resource when the compiled
# program is bigger than the runtime key `re2.max_program_size.error_level`: 100 unless the
# operator's bootstrap sets it (CompiledGoogleReMatcher in Envoy's source/common/common/regex.cc).
ENVOY_REGEX_MAX_PROGRAM_SIZE = 100
# The memory Envoy lets RE2 compile in at that limit, max(8 MiB, limit x 1 KiB): RE2's own default.
# A pattern that needs more fails to compile there as here.
_RE2_MAX_MEM = 8 << 20

# An HTTP header name (RFC 9110 token) in lowercase, as proxies match them; `:` first for a
# pseudo-header (`:method`, `:authority`, `:path`). Envoy refuses names holding NUL, CR or LF; it
# takes other odd ones (a space, a parenthesis) that no request can carry, so a rule naming one
# could never match: refused too.
_HEADER_NAME = re.compile(r":?[-!#$%&'*+.^_`|~0-9a-z]+")
# Control characters: Envoy refuses NUL, CR and LF in a path it writes (prefix_rewrite) and every
# control character but tab in a health check's path; no valid request path holds any.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Envoy keeps timeouts and intervals in whole milliseconds: a positive duration under 1 ms becomes 0,
# which turns a route timeout off, makes a connect timeout fire at once, and (under 1 ns, 0 on the
# wire) gets a cluster refused outright ("value must be greater than 0s").
MIN_TIMEOUT = 0.001


# Pure in `pattern`, and asked of the same patterns again and again: by the policy-file reader, then by
# every `problems()` of every reload. Memoised so that each distinct pattern is compiled by RE2 once.
@functools.lru_cache(maxsize=4096)
def regex_problem(pattern: str) -> str | None:
    """Why Envoy would refuse `pattern` as a `safe_regex`, or None when it takes it.

    Checked as Envoy checks it: compiled by RE2 with Envoy's options (RE2's defaults, quiet, the
    same memory budget), then refused when the program is bigger than
    `ENVOY_REGEX_MAX_PROGRAM_SIZE`. Envoy refuses a whole route configuration for one such regex,
    and every proxy keeps its old routes; refused here, the last good policy keeps serving instead.
    """
    if not pattern:
        return "a regex must not be empty"
    options = re2.Options()
    options.log_errors = False  # RE2 would print every bad pattern on stderr
    options.max_mem = _RE2_MAX_MEM
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as error:
        reason = error.args[0] if error.args else error
        text = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
        return f"invalid regex {pattern!r}: {text} (Envoy uses RE2 syntax: no lookaround, no backreferences)"
    size = int(compiled.programsize)
    if size > ENVOY_REGEX_MAX_PROGRAM_SIZE:
        return (
            f"regex {pattern!r} compiles to an RE2 program of size {size}, over Envoy's limit of "
            f"{ENVOY_REGEX_MAX_PROGRAM_SIZE} (runtime key re2.max_program_size.error_level), so Envoy would "
            "refuse the routes; make it smaller (fewer or shorter repetitions, classes, alternatives)"
        )
    return None


def header_name_problem(name: str) -> str | None:
    """Why `name` cannot be the name of a header a route matches or hashes on; None when it can."""
    if _HEADER_NAME.fullmatch(name):
        return None
    return (
        f"header name {name!r} must be a lowercase HTTP header name (letters, digits and !#$%&'*+-.^_`|~; "
        "':' first for a pseudo-header)"
    )


def has_control_characters(text: str) -> bool:
    """True when `text` holds a control character (see `_CONTROL`)."""
    return _CONTROL.search(text) is not None
