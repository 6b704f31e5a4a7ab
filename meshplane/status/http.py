"""The operator HTTP endpoint: the dashboard, health, readiness, status, config dumps, diffs and metrics.

- `GET /`: the dashboard (one self-contained HTML page).
- `GET /healthz`: 200 while the process serves. `GET /readyz`: 200 once every source has synced
  and a configuration is published, 503 with the reasons otherwise.
- `GET /status[?role=…&site=…&out_of_sync=true]`: JSON (docs/status-api.md).
- `GET /status/devices[?site=S&limit=N]`, `GET /status/devices/ID`: edge devices as the registry
  holds them, with their certificates' serial, validity and SAN (`devices`); 404 without a
  registry or for a device not registered, 400 with the reason for a malformed id or query.
- `GET /config?node=ID` / `GET /config?role=…&site=…&…`: config dumps (`config_dump`). A group's
  dump is a preview built for the request: the group is checked by the rules a node's metadata
  is (`nodes.group_problem`), built off the event loop one at a time, and stored nowhere, so queries
  cannot grow the publisher's memo or the cache.
- `GET /diff?node=ID`: what a connected proxy holds against its group's current snapshot,
  resource by resource (`diff`): names and versions only, so it needs no admin token.
- `GET /changes[?limit=N]`, `GET /changes/G`: the last generations (publications that changed
  something), their causes, and how many proxies of the groups each touched have reached it
  (`changes`); 404 with the reason for a generation not kept or not published yet.
- `GET /topology`: the mesh as a graph of who routes to whom, bounded (`topology`), for the
  dashboard's picture.
- `GET /metrics`: Prometheus text format.

Read-only by construction: only GET (and HEAD) routes exist, and the handlers are handed read
functions and registries with no way to change a source, a snapshot or a stream. Secret bodies
never appear anywhere; the Secret type of a dump is shown (redacted) only with
`Authorization: Bearer <admin token>`, compared in constant time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from typing import Any

from aiohttp import web

from meshplane.status.changes import changes_document, one_generation, parse_generation, parse_limit
from meshplane.status.config_dump import DumpError, group_dump, group_from_query, node_dump
from meshplane.status.dashboard import dashboard_html
from meshplane.status.devices import DeviceQueryError, checked_device_id, device_document, devices_document, list_query
from meshplane.status.diff import MAX_NODE_ID_LENGTH, node_diff
from meshplane.status.document import ProxyFilter, StatusInputs, proxies_by_node, readiness, status_document
from meshplane.status.metrics import ControlPlaneMetrics
from meshplane.status.topology import CachedTopology
from meshplane.xds.publication import ChangeLog
from meshplane.xds.server.nodes import group_problem

log = logging.getLogger(__name__)

_TRUE = ("1", "true", "yes", "on", "")
_STATUS_PARAMETERS = frozenset({"role", "site", "out_of_sync"})


class _Unauthorized(Exception):
    pass


def authorized(request: web.Request, token: str | None) -> bool:
    """True with a correct bearer token, False without one; raises _Unauthorized for a wrong one
    (a wrong token is an error to report, not a reason to quietly show less)."""
    header = request.headers.get("Authorization")
    if header is None:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or token is None:
        raise _Unauthorized
    # Digests first, so the comparison takes the same time whatever the given token's length.
    given_digest = hashlib.sha256(given.strip().encode()).digest()
    if not hmac.compare_digest(given_digest, hashlib.sha256(token.encode()).digest()):
        raise _Unauthorized
    return True


def _json(document: Any, status: int = 200) -> web.Response:
    response = web.json_response(document, status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status=status)


def status_filter(query: Any) -> ProxyFilter:
    unknown = sorted(set(query) - _STATUS_PARAMETERS)
    if unknown:
        raise DumpError(f"unknown parameter(s) {', '.join(unknown)}; filters are role, site, out_of_sync")
    return ProxyFilter(
        role=query.get("role") or None,
        site=query.get("site") or None,
        out_of_sync="out_of_sync" in query and str(query.get("out_of_sync")).lower() in _TRUE,
    )


def status_app(
    inputs: StatusInputs, metrics: ControlPlaneMetrics | None = None, changes: ChangeLog | None = None
) -> web.Application:
    """The endpoint's routes. `changes`: the publisher's change log; without it `/changes` is 404."""
    # A preview is a whole translation (at 100,000 devices, a gateway's is large): one at a time,
    # in a worker thread, so status requests cannot pile up builds nor stall the xDS streams.
    previews = asyncio.Semaphore(1)
    topologies = CachedTopology()

    async def dashboard(request: web.Request) -> web.Response:
        return web.Response(
            text=dashboard_html(),
            content_type="text/html",
            headers={"Cache-Control": "no-store", "Content-Security-Policy": _DASHBOARD_POLICY},
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        reasons = readiness(inputs)
        if reasons:
            return web.Response(status=503, text="not ready:\n" + "".join(f"- {r}\n" for r in reasons))
        return web.Response(text="ready\n")

    async def status(request: web.Request) -> web.Response:
        try:
            selected = status_filter(request.query)
        except DumpError as error:
            return _error(400, str(error))
        return _json(status_document(inputs, selected))

    async def device_list(request: web.Request) -> web.Response:
        if inputs.devices is None:
            return _error(404, "no edge registry: this control plane serves no devices")
        try:
            site, limit = list_query(request.query)
        except DeviceQueryError as error:
            return _error(400, str(error))
        return _json(devices_document(inputs.devices, site, limit, time.time()))

    async def device(request: web.Request) -> web.Response:
        if inputs.devices is None:
            return _error(404, "no edge registry: this control plane serves no devices")
        if request.query:
            return _error(400, "/status/devices/ID takes no parameters")
        try:
            device_id = checked_device_id(request.match_info["device_id"])
        except DeviceQueryError as error:
            return _error(400, str(error))
        row = inputs.devices.get(device_id)
        if row is None:
            return _error(404, f"device {device_id} is not registered (no live lease)")
        return _json(device_document(row, time.time()))

    async def config(request: web.Request) -> web.Response:
        try:
            allowed = authorized(request, inputs.admin_token)
        except _Unauthorized:
            return _error(401, "wrong admin token" if inputs.admin_token else "no admin token is configured")
        query = dict(request.query)
        node = query.pop("node", None)
        if node is not None:
            if query:
                return _error(400, "node= cannot be combined with other parameters")
            streams = proxies_by_node(inputs.registry).get(node)
            if not streams:
                return _error(404, f"no proxy with node id {node!r} is connected")
            return _json(node_dump(node, streams, allowed))
        try:
            group = group_from_query(query)
        except DumpError as error:
            return _error(400, str(error))
        problem = group_problem(group)
        if problem is not None:
            return _error(400, problem)
        try:
            async with previews:
                snapshot = await asyncio.to_thread(inputs.snapshot_for, group)
        except Exception as error:  # a translator's failure for this group must not end the endpoint
            log.exception("config dump: cannot build the config of group %s", group)
            return _error(500, f"cannot build the config of group {group}: {error}")
        if snapshot is None:
            return _error(503, "no configuration has been built yet")
        return _json(group_dump(group, snapshot, allowed))

    async def diff(request: web.Request) -> web.Response:
        # No token: the document holds names and versions, never contents (diff.py).
        query = dict(request.query)
        node = query.pop("node", None)
        if query:
            return _error(400, f"unknown parameter(s) {', '.join(sorted(query))[:200]!r}; the only one is node")
        if not node:
            return _error(400, "node= is required: the node id of a connected proxy")
        if len(node) > MAX_NODE_ID_LENGTH:
            return _error(400, f"a node id is at most {MAX_NODE_ID_LENGTH} characters; this one has {len(node)}")
        streams = proxies_by_node(inputs.registry).get(node)
        if not streams:
            return _error(404, f"no proxy with node id {node!r} is connected")
        group = max(streams, key=lambda track: track.stream_id).group
        snapshot = inputs.cache.snapshot(group)
        if snapshot is None:
            return _error(503, f"no configuration is published for the proxy's group {group}")
        subscriptions = inputs.subscriptions(node) if inputs.subscriptions is not None else None
        return _json(node_diff(node, streams, snapshot, subscriptions))

    async def change_list(request: web.Request) -> web.Response:
        if changes is None:
            return _error(404, "no change log: this endpoint serves no publisher")
        try:
            limit = parse_limit(request.query)
        except ValueError as error:
            return _error(400, str(error))
        return _json(changes_document(changes, inputs.registry, inputs.cache, limit))

    async def change(request: web.Request) -> web.Response:
        if changes is None:
            return _error(404, "no change log: this endpoint serves no publisher")
        if request.query:
            return _error(400, "/changes/G takes no parameters")
        try:
            number = parse_generation(request.match_info["generation"])
        except ValueError as error:
            return _error(400, str(error))
        try:
            return _json(one_generation(changes, inputs.registry, inputs.cache, number))
        except LookupError as error:
            return _error(404, str(error.args[0]))

    async def topology(request: web.Request) -> web.Response:
        if request.query:
            return _error(400, "/topology takes no parameters")
        # The same bytes while the mesh and the streams are unchanged: every open dashboard polls.
        body = topologies.body(inputs.mesh(), inputs.registry)
        return web.Response(
            body=body, content_type="application/json", charset="utf-8", headers={"Cache-Control": "no-store"}
        )

    async def prometheus(request: web.Request) -> web.Response:
        if metrics is None:
            return web.Response(status=404, text="metrics are not enabled\n")
        body, content_type = metrics.render(request.headers.get("Accept", ""))
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    app = web.Application()
    for path, handler in (
        ("/", dashboard),
        ("/healthz", healthz),
        ("/readyz", readyz),
        ("/status", status),
        ("/status/devices", device_list),
        # Any rest of the path ("/" and newlines too): a malformed id is a 400 with the reason, not a 404.
        (r"/status/devices/{device_id:[\s\S]*}", device),
        ("/config", config),
        ("/diff", diff),
        ("/changes", change_list),
        ("/changes/{generation}", change),
        ("/topology", topology),
        ("/metrics", prometheus),
    ):
        app.router.add_get(path, handler)  # GET and HEAD only: nothing here changes anything
    return app


# The dashboard loads nothing from elsewhere, and may talk to this endpoint only.
_DASHBOARD_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
