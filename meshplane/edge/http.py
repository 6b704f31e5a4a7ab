"""The Registry mirrored as JSON over HTTP, for tools that cannot speak gRPC.

Bodies and answers are the proto messages in protobuf's JSON mapping (camelCase or proto field
names accepted); credentials are the same `Authorization: Bearer <token>` header. Errors answer
`{"code": "<gRPC status name>", "message": "<reason>"}` with the matching HTTP status.

    POST /v1/register        RegisterRequest   → RegisterResponse
    POST /v1/heartbeat       HeartbeatRequest  → HeartbeatResponse
    POST /v1/deregister      DeregisterRequest → {}
    GET  /v1/devices/{id}                      → Device
    GET  /v1/devices?site=&device_class=&label=key=value   → ListResponse
    GET  /v1/watch?site=&device_class=&label=key=value     → WatchEvent per line (NDJSON), endless
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.discovery.edge.auth import Principal
from meshplane.discovery.edge.registry import ErrorCode, RegistryError
from meshplane.edge.api import Authenticate, RegistryCalls

MAX_BODY = 64 * 1024

HTTP_STATUS = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.UNAVAILABLE: 503,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(message: Message) -> str:
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None)


def _error(code: ErrorCode, message: str) -> web.Response:
    return web.json_response({"code": code.value, "message": message}, status=HTTP_STATUS[code])


def registry_http_app(calls: RegistryCalls, authenticate: Authenticate) -> web.Application:
    def principal_of(request: web.Request) -> Principal:
        principal = authenticate(request.headers.get("Authorization"), [], [])
        if principal is None:
            raise RegistryError(ErrorCode.UNAUTHENTICATED, "missing or unknown credentials (Authorization: Bearer …)")
        return principal

    def unary(message_type: type[Message], call: Callable[[Any, Principal], Awaitable[Message]]) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                principal = principal_of(request)
                body = await request.text() if request.can_read_body else "{}"
                message = message_type()
                try:
                    json_format.Parse(body or "{}", message)
                except json_format.ParseError as error:
                    raise RegistryError(ErrorCode.INVALID_ARGUMENT, f"malformed JSON body: {error}") from None
                answer = await call(message, principal)
            except RegistryError as error:
                return _error(error.code, error.reason)
            return web.Response(text=_json(answer), content_type="application/json")

        return handle

    async def get(request: web.Request) -> web.StreamResponse:
        try:
            answer = await calls.get(pb.GetRequest(device_id=request.match_info["device_id"]), principal_of(request))
        except RegistryError as error:
            return _error(error.code, error.reason)
        return web.Response(text=_json(answer), content_type="application/json")

    def selector(request: web.Request, message: Any) -> Any:
        message.site = request.query.get("site", "")
        message.device_class = request.query.get("device_class", "")
        for label in request.query.getall("label", []):
            key, sep, value = label.partition("=")
            if not sep:
                raise RegistryError(ErrorCode.INVALID_ARGUMENT, f"label {label!r} must be key=value")
            message.labels[key] = value
        return message

    async def list_devices(request: web.Request) -> web.StreamResponse:
        try:
            answer = await calls.list(selector(request, pb.ListRequest()), principal_of(request))
        except RegistryError as error:
            return _error(error.code, error.reason)
        return web.Response(text=_json(answer), content_type="application/json")

    async def watch(request: web.Request) -> web.StreamResponse:
        try:
            events = calls.watch(selector(request, pb.WatchRequest()), principal_of(request))
        except RegistryError as error:
            return _error(error.code, error.reason)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            async for event in events:
                await response.write((_json(event) + "\n").encode())
        except RegistryError as error:
            await response.write((json.dumps({"code": error.code.value, "message": error.reason}) + "\n").encode())
        return response

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/v1/register", unary(pb.RegisterRequest, calls.register))
    app.router.add_post("/v1/heartbeat", unary(pb.HeartbeatRequest, calls.heartbeat))
    app.router.add_post("/v1/deregister", unary(pb.DeregisterRequest, calls.deregister))
    app.router.add_get("/v1/devices/{device_id}", get)
    app.router.add_get("/v1/devices", list_devices)
    app.router.add_get("/v1/watch", watch)
    return app
