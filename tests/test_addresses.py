"""The one `host:port` parser of the listen and server flags."""

from __future__ import annotations

import pytest

from meshplane.addresses import split_address


@pytest.mark.parametrize(
    ("address", "default_port", "expected"),
    [
        ("127.0.0.1:18000", None, ("127.0.0.1", 18000)),
        ("[::1]:9900", None, ("::1", 9900)),
        (":9900", None, ("0.0.0.0", 9900)),  # every address, for a listener
        ("meshplane:18001", 18001, ("meshplane", 18001)),
        ("meshplane", 18001, ("meshplane", 18001)),
        ("fd00::1", 18001, ("fd00::1", 18001)),
        ("[fd00::1]", 18001, ("fd00::1", 18001)),
        ("[fd00::1]:9", 18001, ("fd00::1", 9)),
    ],
)
def test_split_address(address: str, default_port: int | None, expected: tuple[str, int]) -> None:
    assert split_address(address, default_port) == expected


@pytest.mark.parametrize("address", ["meshplane", "127.0.0.1:", "127.0.0.1:http", "[::1]"])
def test_without_a_default_port_a_port_is_required(address: str) -> None:
    with pytest.raises(ValueError, match="must be host:port"):
        split_address(address)
