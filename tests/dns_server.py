"""A tiny DNS server over UDP for tests: the names a test controls, answered from a table it changes.

Owns the few parts of RFC 1035 a stub resolver (Envoy's c-ares) needs: one question per query, A
records from `DnsServer.records`, an empty answer (NOERROR, no records) for any other type of a
known name (the AAAA query of a resolver that asks for both), NXDOMAIN for an unknown name. Every
answer is authoritative and carries `ttl`. A malformed datagram is dropped, as a real server
would. Runs on the test's event loop; binds a 127.0.0.x address only. Must not be used outside
tests.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from collections import Counter
from dataclasses import dataclass, field

from tests.ports import free_port

_HEADER = struct.Struct("!HHHHHH")  # id, flags, question, answer, authority and additional counts
_QUESTION_TAIL = struct.Struct("!HH")  # type, class
_ANSWER = struct.Struct("!HHHIH")  # name (a pointer), type, class, TTL, data length
_POINTER_TO_QUESTION = 0xC00C  # the question's name begins right after the 12-byte header
_TYPE_A, _CLASS_IN = 1, 1
_QR, _AA, _RD, _RA = 0x8000, 0x0400, 0x0100, 0x0080
_NOERROR, _FORMERR, _NXDOMAIN = 0, 1, 3
_MAX_LABEL = 63


@dataclass
class DnsServer:
    """The table a test controls (lowercase name → IPv4 addresses) and what was asked of it.

    `queries` counts the A and AAAA questions asked per name, so a test can wait until a proxy has
    looked a name up again rather than sleep."""

    host: str
    port: int
    ttl: int = 1
    records: dict[str, tuple[str, ...]] = field(default_factory=dict)
    queries: Counter[str] = field(default_factory=Counter)
    transport: asyncio.DatagramTransport | None = None

    def set(self, name: str, *addresses: str) -> None:
        """From now on `name` resolves to `addresses` (IPv4)."""
        self.records[name.lower()] = tuple(str(ipaddress.IPv4Address(a)) for a in addresses)

    def answer(self, query: bytes) -> bytes | None:
        """The response to `query`, or None for a datagram that is no DNS query."""
        if len(query) < _HEADER.size:
            return None
        ident, flags, questions, _, _, _ = _HEADER.unpack_from(query)
        if flags & _QR:
            return None  # a response, not a query
        parsed = _question(query) if questions == 1 else None
        if parsed is None:
            return _HEADER.pack(ident, _QR | _AA | (flags & _RD) | _RA | _FORMERR, 0, 0, 0, 0)
        name, qtype, qclass, end = parsed
        self.queries[name] += 1
        addresses = self.records.get(name)
        answers = b""
        if addresses is not None and qtype == _TYPE_A and qclass == _CLASS_IN:
            for address in addresses:
                packed = ipaddress.IPv4Address(address).packed
                answers += _ANSWER.pack(_POINTER_TO_QUESTION, _TYPE_A, _CLASS_IN, self.ttl, 4) + packed
        code = _NXDOMAIN if addresses is None else _NOERROR
        count = len(addresses) if answers and addresses is not None else 0
        header = _HEADER.pack(ident, _QR | _AA | (flags & _RD) | _RA | code, 1, count, 0, 0)
        return header + query[_HEADER.size : end] + answers

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _question(query: bytes) -> tuple[str, int, int, int] | None:
    """The one question's (lowercase name, type, class, offset after it); None when malformed."""
    labels: list[str] = []
    at = _HEADER.size
    while True:
        if at >= len(query):
            return None
        length = query[at]
        at += 1
        if length == 0:
            break
        if length > _MAX_LABEL or at + length > len(query):
            return None  # a compression pointer or a cut label: no query of a stub resolver has one
        labels.append(query[at : at + length].decode("ascii", errors="replace").lower())
        at += length
    if at + _QUESTION_TAIL.size > len(query):
        return None
    qtype, qclass = _QUESTION_TAIL.unpack_from(query, at)
    return ".".join(labels), qtype, qclass, at + _QUESTION_TAIL.size


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        response = self.server.answer(data)
        if response is not None and self.server.transport is not None:
            self.server.transport.sendto(response, addr)


async def start_dns_server(host: str = "127.0.0.1") -> DnsServer:
    """A DNS server on `host` (a 127.0.0.x address) at a port from `free_port()`; close it with `close()`."""
    server = DnsServer(host, free_port())
    loop = asyncio.get_running_loop()
    server.transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(server), local_addr=(host, server.port))
    return server
