"""Raw HTTP/2 bytes for tests that speak to a gRPC port through a plain socket: the client's opening
bytes, and the frame types in what the server sent back."""

from __future__ import annotations

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type SETTINGS, no flags, stream 0
GOAWAY = 0x7


def frame_types(data: bytes) -> list[int]:
    """The types of the HTTP/2 frames in `data` (whole frames only)."""
    types = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        types.append(data[3])
        data = data[9 + length :]
    return types
