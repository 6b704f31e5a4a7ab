"""`meshplane status`, `meshplane status sources`, `meshplane config`, `meshplane diff`, `meshplane
changes` and `meshplane wait`: the status endpoint in a terminal.

Reads a running control plane's `/status`, `/config`, `/diff` and `/changes` over HTTP (the standard library's client:
nothing to set up) and prints a table, like `istioctl proxy-status`: one row a proxy, one column
a type, each cell SYNCED, STALE, NACKED or NOT SENT. With `rich` tables where stdout is a terminal,
plain aligned text otherwise (pipes, files, `watch`); `--output json` prints the JSON as served.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

DEFAULT_SERVER = "http://127.0.0.1:9900"
_STATE_STYLES = {"SYNCED": "green", "STALE": "yellow", "NACKED": "bold red", "NOT SENT": "dim"}


class ConsoleError(Exception):
    """The status endpoint could not be read; the message says why."""


def fetch_json(server: str, path: str, params: Mapping[str, str] | None = None, token: str | None = None) -> Any:
    query = urllib.parse.urlencode({key: value for key, value in (params or {}).items() if value is not None})
    url = server.rstrip("/") + path + (f"?{query}" if query else "")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        try:
            reason = json.load(error).get("error", error.reason)
        except (ValueError, AttributeError):
            reason = error.reason
        raise ConsoleError(f"{url}: {error.code} {reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ConsoleError(f"cannot reach the status endpoint at {server}: {reason}") from None


def _age(timestamp: float | None, now: float) -> str:
    if timestamp is None:
        return "never"
    seconds = max(0.0, now - timestamp)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def proxy_rows(document: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The proxy table: headers and one row a proxy, from a `/status` document."""
    proxies = document.get("proxies", [])
    types = list(proxies[0]["types"]) if proxies else ["CDS", "EDS", "LDS", "RDS", "SDS"]
    now = float(document.get("generated_at") or time.time())
    headers = ["NAME", "ROLE", "SITE", *types, "KIND", "CONNECTED"]
    rows = []
    for proxy in proxies:
        states = [proxy["types"].get(type_name, {}).get("state", "NOT SENT") for type_name in types]
        rows.append(
            [
                proxy["node"],
                proxy["role"],
                proxy.get("site") or "-",
                *states,
                proxy["kind"],
                _age(proxy.get("connected_at"), now),
            ]
        )
    return headers, rows


def nack_lines(document: Mapping[str, Any]) -> list[str]:
    """One line per proxy type whose last answer was a NACK: node, type, rejected version, Envoy's message."""
    lines = []
    for proxy in document.get("proxies", []):
        for type_name, entry in proxy["types"].items():
            nack = entry.get("last_nack")
            if entry.get("state") == "NACKED" and nack:
                message = " ".join(str(nack["message"]).split())
                lines.append(f"{proxy['node']} {type_name} NACKED version {nack['version']}: {message}")
    return lines


# How `meshplane status sources` shows a source's `state` (see docs/status-api.md).
_SOURCE_STATES = {"synced": "yes", "serving_last_good": "yes, serving last good", "not_synced": "NO"}


def _source_state(source: Mapping[str, Any]) -> str:
    state = source.get("state")
    if state is None:  # a control plane from before `state` was served
        state = "not_synced" if not source.get("synced") else "serving_last_good" if source.get("errors") else "synced"
    return _SOURCE_STATES.get(str(state), str(state))


def source_rows(document: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The source table: one row a source. LAST SYNC is when it last confirmed it is in sync."""
    now = float(document.get("generated_at") or time.time())
    headers = ["SOURCE", "SYNCED", "LAST SYNC", "OBJECTS", "ERRORS", "NOTES"]
    rows = []
    for source in document.get("sources", []):
        counts = ", ".join(f"{key} {value}" for key, value in (source.get("counts") or {}).items())
        rows.append(
            [
                str(source.get("name")),
                _source_state(source),
                _age(source.get("last_success"), now),
                counts or "-",
                str(len(source.get("errors") or [])),
                str(len(source.get("notes") or [])),
            ]
        )
    return headers, rows


def source_error_lines(document: Mapping[str, Any]) -> list[str]:
    return [
        f"{source.get('name')}: {error}"
        for source in document.get("sources", [])
        for error in source.get("errors") or []
    ]


def source_note_lines(document: Mapping[str, Any]) -> list[str]:
    return [
        f"{source.get('name')}: {note}" for source in document.get("sources", []) for note in source.get("notes") or []
    ]


def config_rows(dump: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The config table: one row a type. A type held over several streams whose versions differ
    (a per-type proxy's EDS over SotW) has no one version: `per stream` (`meshplane status -o json`
    shows each stream's)."""
    headers = ["TYPE", "VERSION", "STATE", "RESOURCES"]
    rows = []
    for type_name, entry in dump.get("types", {}).items():
        names = [resource["name"] for resource in entry.get("resources", [])]
        shown = ", ".join(names[:6]) + (f" … (+{len(names) - 6})" if len(names) > 6 else "")
        version = entry.get("version") or ("per stream" if names else "-")
        rows.append([type_name, version, entry.get("state", "-"), f"{len(names)}: {shown}"])
    return headers, rows


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)]) + "\n"


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO, *, rich: bool, title: str | None = None
) -> None:
    if not rich:
        out.write(plain_table(headers, rows))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # For a person at a terminal: type columns where nothing was sent to anyone are left out, and
    # states are never cut ("NOT SENT" must read as such); names fold rather than vanish.
    states = {i for i in range(len(headers)) if rows and all(row[i] in _STATE_STYLES for row in rows)}
    shown = [i for i in range(len(headers)) if not (i in states and all(row[i] == "NOT SENT" for row in rows))]
    table = Table(title=title, header_style="bold", box=None, pad_edge=False, collapse_padding=True)
    for index in shown:
        if index in states:
            table.add_column(headers[index], no_wrap=True, min_width=max(len(headers[index]), 8))
        else:
            table.add_column(headers[index], overflow="fold", no_wrap=index == 0)
    for row in rows:
        table.add_row(*(Text(str(row[i]), style=_STATE_STYLES.get(str(row[i]), "")) for i in shown))
    Console(file=out).print(table)


def _write(out: TextIO, lines: Sequence[str], heading: str) -> None:
    if lines:
        out.write(f"\n{heading}\n")
        for line in lines:
            out.write(f"  {line}\n")


def status_command(
    server: str,
    *,
    role: str | None = None,
    site: str | None = None,
    stale: bool = False,
    output: str = "table",
    out: TextIO = sys.stdout,
) -> int:
    params = {"role": role, "site": site, "out_of_sync": "true" if stale else None}
    document = fetch_json(server, "/status", {k: v for k, v in params.items() if v is not None})
    if output == "json":
        json.dump(document, out, indent=2)
        out.write("\n")
        return 0
    headers, rows = proxy_rows(document)
    if not rows:
        out.write("no proxy matches\n" if any(params.values()) else "no proxy connected\n")
    else:
        print_table(headers, rows, out, rich=out.isatty())
    _write(out, nack_lines(document), "NACKs:")
    if not document.get("ready", True):
        _write(out, document.get("not_ready_reasons", []), "Not ready:")
    return 0


def sources_command(server: str, *, output: str = "table", out: TextIO = sys.stdout) -> int:
    document = fetch_json(server, "/status")
    if output == "json":
        json.dump(document.get("sources", []), out, indent=2)
        out.write("\n")
        return 0
    headers, rows = source_rows(document)
    print_table(headers, rows, out, rich=out.isatty())
    _write(out, source_error_lines(document), "Errors:")
    _write(out, source_note_lines(document), "Notes:")
    return 0


def config_command(
    server: str,
    node: str | None,
    group: Mapping[str, str],
    *,
    token: str | None = None,
    output: str = "table",
    out: TextIO = sys.stdout,
) -> int:
    params = {"node": node} if node else dict(group)
    dump = fetch_json(server, "/config", params, token)
    if output == "json":
        json.dump(dump, out, indent=2)
        out.write("\n")
        return 0
    what = f"node {node}: last sent" if node else f"group {dump.get('group')}: current"
    out.write(f"{what}\n")
    headers, rows = config_rows(dump)
    print_table(headers, rows, out, rich=out.isatty())
    if dump.get("withheld"):
        out.write(f"\nwithheld without the admin token: {', '.join(dump['withheld'])}\n")
    return 0


# Resources listed per type and kind of difference in `meshplane diff`'s text; `--json` lists all.
MAX_DIFF_LINES = 50


def _listed(entries: Sequence[Mapping[str, Any]], line: Any) -> list[str]:
    shown = [line(entry) for entry in entries[:MAX_DIFF_LINES]]
    if len(entries) > MAX_DIFF_LINES:
        shown.append(f"  … and {len(entries) - MAX_DIFF_LINES:,} more (--json lists every one)")
    return shown


def diff_lines(document: Mapping[str, Any]) -> list[str]:
    """`/diff` as text: per type, how many resources are in sync, then each one that is not:
    `~ name  held → current  (state)` for a version held that is not the current one or not ACKed,
    `+ name  not held → current` for one it should have, `- name  held → not current  (state)` for
    one it holds that is no longer current."""
    lines = []
    for type_name, entry in document.get("types", {}).items():
        lines.append(f"{type_name}  in sync: {int(entry.get('in_sync', 0)):,}")
        lines += _listed(
            entry.get("differing", []),
            lambda item: f"  ~ {item['name']}  {item['held_version']} → {item['current_version']}  ({item['state']})",
        )
        lines += _listed(
            entry.get("missing", []), lambda item: f"  + {item['name']}  not held → {item['current_version']}"
        )
        lines += _listed(
            entry.get("no_longer_current", []),
            lambda item: f"  - {item['name']}  {item['held_version']} → not current  ({item['state']})",
        )
    return lines


def diff_command(server: str, node: str, *, output: str = "table", out: TextIO = sys.stdout) -> int:
    """Prints `/diff?node=NODE`; 0 when the proxy holds exactly what it should, 1 when it does not.
    Raises ConsoleError when the endpoint cannot answer (an unknown node, unreachable)."""
    document = fetch_json(server, "/diff", {"node": node})
    if output == "json":
        json.dump(document, out, indent=2)
        out.write("\n")
    else:
        verdict = "in sync" if document.get("in_sync") else "differs from its group's current config"
        out.write(f"node {node} (group {document.get('group')}): {verdict}\n")
        out.write("".join(f"{line}\n" for line in diff_lines(document)))
    return 0 if document.get("in_sync") else 1


def printable(text: str) -> str:
    """`text` on one line, with control characters shown as escapes: node ids and NACK messages come
    from clients, and must not move a terminal's cursor or hide what follows them."""
    one_line = " ".join(text.split())
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in one_line)


def _named(count: int, names: Sequence[str]) -> str:
    shown = ", ".join(printable(name) for name in names)
    return shown + (f" and {count - len(names)} more" if count > len(names) else "")


def generation_line(generation: Mapping[str, Any]) -> str:
    """`gen 42  12:03:01  policy files (endpoints: default/web)  reached 118 of 120, 2 pending: a, b`;
    a complete generation with a counted ACK ends `, converged in 212 ms` (its `acks.last_seconds`)."""
    proxies = generation.get("proxies", {})
    when = time.strftime("%H:%M:%S", time.localtime(float(generation.get("published_at", 0.0))))
    line = (
        f"gen {generation.get('generation')}  {when}  {printable(str(generation.get('cause', {}).get('summary', '')))}"
        f"  reached {proxies.get('reached', 0)} of {proxies.get('total', 0)}"
    )
    if proxies.get("nacked"):
        nodes = [str(entry.get("node")) for entry in proxies.get("nacked_nodes", [])]
        line += f", {proxies['nacked']} nacked: {_named(proxies['nacked'], nodes)}"
    if proxies.get("pending"):
        line += f", {proxies['pending']} pending: {_named(proxies['pending'], proxies.get('pending_nodes', []))}"
    last = (generation.get("acks") or {}).get("last_seconds")
    if generation.get("complete") and isinstance(last, int | float):
        line += f", converged in {last * 1000:.0f} ms"
    return line


def changes_command(server: str, *, limit: int | None = None, output: str = "table", out: TextIO = sys.stdout) -> int:
    """Prints `/changes` (the newest `limit` generations), one line each, newest first."""
    document = fetch_json(server, "/changes", {"limit": str(limit)} if limit is not None else None)
    if output == "json":
        json.dump(document, out, indent=2)
        out.write("\n")
        return 0
    generations = document.get("generations", [])
    if not generations:
        out.write("nothing published yet\n")
    out.write("".join(f"{generation_line(generation)}\n" for generation in generations))
    return 0


# What `meshplane wait` exits with: every proxy reached the generation, one NACKed it, the time ran
# out, or the endpoint could not answer (unreachable, or the generation is not kept).
WAIT_REACHED, WAIT_NACKED, WAIT_TIMEOUT, WAIT_ERROR = 0, 1, 2, 3
# How often `meshplane wait` asks: a rollout takes seconds; a request is a few milliseconds of the server's.
WAIT_POLL_SECONDS = 0.5


def newest_generation(server: str) -> int | None:
    """The newest generation published now (None: nothing yet); raises ConsoleError when the
    endpoint cannot answer."""
    newest = fetch_json(server, "/changes", {"limit": "1"}).get("newest")
    return None if newest is None else int(newest)


def wait_command(
    server: str,
    generation: str,
    *,
    timeout: float,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Polls `/changes/G` until every proxy the generation concerns has reached it (`WAIT_REACHED`),
    one has NACKed it (`WAIT_NACKED`, naming the proxy and the NACK's message) or `timeout` seconds
    have passed (`WAIT_TIMEOUT`, naming the pending proxies). `generation`: a number, or `latest`
    for the newest at the time of the call. A generation not published yet is waited for; one no
    longer kept, or an endpoint that cannot answer, is `WAIT_ERROR`."""
    try:
        number = newest_generation(server) if generation == "latest" else int(generation)
    except (ConsoleError, ValueError) as error:
        err.write(f"meshplane wait: {error}\n")
        return WAIT_ERROR
    if number is None:
        err.write(f"meshplane wait: {server}: nothing is published yet\n")
        return WAIT_ERROR
    deadline = clock() + timeout
    document: Mapping[str, Any] | None = None
    while True:
        try:
            document = fetch_json(server, f"/changes/{number}")
        except ConsoleError as error:
            try:
                newest = newest_generation(server)
            except ConsoleError as unreachable:
                err.write(f"meshplane wait: {unreachable}\n")
                return WAIT_ERROR
            if newest is not None and newest >= number:
                err.write(f"meshplane wait: {error}\n")  # no longer kept
                return WAIT_ERROR
            document = None  # not published yet: wait for it
        if document is not None:
            proxies = document.get("proxies", {})
            if proxies.get("nacked"):
                for entry in proxies.get("nacked_nodes", []):
                    message = printable(str(entry.get("message") or "no message"))
                    err.write(
                        f"generation {number}: {printable(str(entry.get('node')))} NACKED"
                        f" {printable(str(entry.get('type') or ''))}: {message}\n"
                    )
                return WAIT_NACKED
            if document.get("complete"):
                out.write(f"generation {number}: reached by every proxy ({proxies.get('total', 0)})\n")
                return WAIT_REACHED
        if clock() >= deadline:
            if document is None:
                err.write(f"generation {number}: not published within {timeout:g}s\n")
            else:
                pending = _named(proxies.get("pending", 0), proxies.get("pending_nodes", []))
                err.write(
                    f"generation {number}: {proxies.get('pending', 0)} of {proxies.get('total', 0)} proxies"
                    f" still pending after {timeout:g}s: {pending}\n"
                )
            return WAIT_TIMEOUT
        sleep(WAIT_POLL_SECONDS)
