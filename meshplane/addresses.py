"""`host:port` strings, as flags and settings give listen and server addresses.

Owns the one parser every command uses, so `--xds-address`, `--registry-address` and a simulator's
`--registry` read alike. Imports nothing: the CLI and every layer may use it.
"""

from __future__ import annotations


def split_address(address: str, default_port: int | None = None) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:port`) → (host, port); an empty host is 0.0.0.0 (every
    address, for a listener). With `default_port`, a bare host (`meshplane`, `::1`, `[::1]`) takes
    it. Raises ValueError for anything else."""
    if default_port is not None:
        if address.startswith("[") and address.endswith("]"):
            return address[1:-1], default_port
        if not address.startswith("[") and address.count(":") != 1:
            return address, default_port
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} must be host:port")
    return host.strip("[]") or "0.0.0.0", int(port)
