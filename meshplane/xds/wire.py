"""Protobuf wire encoding of the few fields meshplane writes by hand.

Why by hand: a DiscoveryResponse is mostly resources that every stream of a group shares. Each
resource is serialised once per version (here, as the bytes of its repeated-field entry), and a
response is those bytes joined with a few per-stream fields. Protobuf's wire format makes a
message's encoding the concatenation of its fields' encodings, in any order, so the result parses
exactly as if the whole message had been built and serialised per stream.
"""

from __future__ import annotations

_LENGTH_DELIMITED = 2
_ONE_BYTE = [bytes((value,)) for value in range(0x80)]


def varint(value: int) -> bytes:
    """Base-128 varint of a non-negative integer."""
    if value < 0x80:  # field tags and short lengths: one byte, shared
        return _ONE_BYTE[value]
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """One length-delimited field (string, bytes or embedded message)."""
    return varint(field_number << 3 | _LENGTH_DELIMITED) + varint(len(payload)) + payload


def string_field(field_number: int, value: str) -> bytes:
    """A string field; proto3 omits empty strings, and so does this."""
    return length_delimited(field_number, value.encode()) if value else b""


# google.protobuf.Any
ANY_TYPE_URL = 1
ANY_VALUE = 2


def any_bytes(type_url: str, message_bytes: bytes) -> bytes:
    """A serialised google.protobuf.Any holding `message_bytes` of type `type_url`."""
    return string_field(ANY_TYPE_URL, type_url) + length_delimited(ANY_VALUE, message_bytes)
