"""`/status/devices` and `/status/devices/<id>`: edge devices as the control plane holds them.

Owns the documents of one device's registration (its lease and the certificate last issued to it)
and of a bounded list of a site's devices, and the one rule of when a certificate warrants a
warning (`WARN_FRACTION`). Pure reads of a `DeviceLookup` the composition root hands over; it must
not write to the registry, and never shows a certificate's bytes or any key: only what the
registry keeps of it (serial, validity, SAN).

The registry's rows are read through structural types (`RegistrationView`), not the registry's own
classes: status imports no source (the import contract "Status reads, never writes").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from meshplane.model import is_device_id, is_site_id

# Under this share of its lifetime left, a certificate is shown with a warning: a device renews at
# half its lifetime, so one below a fifth has missed renewals.
WARN_FRACTION = 0.2
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_SHOWN_ID = 64  # characters of a refused id quoted back


class CertificateView(Protocol):
    @property
    def serial(self) -> str: ...
    @property
    def not_after(self) -> float: ...
    @property
    def uri_san(self) -> str: ...
    @property
    def not_before(self) -> float | None: ...


class EndpointView(Protocol):
    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int: ...


class DeviceView(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def device_class(self) -> str: ...
    @property
    def site(self) -> str: ...
    @property
    def endpoints(self) -> Sequence[EndpointView]: ...
    @property
    def version(self) -> str: ...
    @property
    def labels(self) -> Sequence[tuple[str, str]]: ...


class RegistrationView(Protocol):
    """A live registration as the registry keeps it; times in seconds since the epoch."""

    @property
    def device(self) -> DeviceView: ...
    @property
    def ttl(self) -> float: ...
    @property
    def expires_at(self) -> float: ...
    @property
    def registered_at(self) -> float: ...
    @property
    def certificate(self) -> CertificateView | None: ...


@dataclass(frozen=True, slots=True)
class DeviceLookup:
    """Read functions over the edge registry's live devices.

    `get(id)`: the live registration of that device, None when none. `first(site, limit)`: the
    first `limit` live registrations by id (of `site` only, when not None) and how many there are
    in all; it must cost no more than one pass over the devices.
    """

    get: Callable[[str], RegistrationView | None]
    first: Callable[[str | None, int], tuple[Sequence[RegistrationView], int]]


class DeviceQueryError(ValueError):
    """A malformed device id or list query; the message says why (answered 400)."""


def _quoted(text: str) -> str:
    # Client bytes: repr escapes control characters, and the cut bounds the answer.
    return repr(text[:MAX_SHOWN_ID]) + ("…" if len(text) > MAX_SHOWN_ID else "")


def checked_device_id(value: str) -> str:
    """`value` when it is a device id the registry could hold, else DeviceQueryError saying why."""
    if not is_device_id(value):
        raise DeviceQueryError(
            f"device id {_quoted(value)} is malformed: 1-128 characters of [A-Za-z0-9._-],"
            " starting with a letter or digit"
        )
    return value


def list_query(query: Mapping[str, str]) -> tuple[str | None, int]:
    """(site, limit) of `?site=S&limit=N`; DeviceQueryError for anything else or a bad value."""
    unknown = sorted(set(query) - {"site", "limit"})
    if unknown:
        shown = ", ".join(_quoted(name) for name in unknown[:4])
        raise DeviceQueryError(f"unknown parameter(s) {shown}; the parameters are site and limit")
    site = query.get("site") or None
    if site is not None and not is_site_id(site):
        raise DeviceQueryError(f"site {_quoted(site)} is not a site id (an RFC 1123 label)")
    text = query.get("limit", str(DEFAULT_LIMIT))
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise DeviceQueryError(f"limit {_quoted(text)} must be a whole number from 1 to {MAX_LIMIT}")
    return site, int(text)


def certificate_document(certificate: CertificateView | None, now: float) -> dict[str, Any] | None:
    """What is shown of a device's certificate at `now`: never its bytes. `warning` is true when it
    has expired or under WARN_FRACTION of its lifetime is left (unknown lifetime: only expired)."""
    if certificate is None:
        return None
    left = certificate.not_after - now
    lifetime = certificate.not_after - certificate.not_before if certificate.not_before is not None else None
    expired = left <= 0
    low = lifetime is not None and lifetime > 0 and left < WARN_FRACTION * lifetime
    return {
        "serial": certificate.serial,
        "not_before": certificate.not_before,
        "not_after": certificate.not_after,
        "uri_san": certificate.uri_san,
        "expired": expired,
        "seconds_left": max(0.0, left),
        "lifetime_seconds": lifetime,
        "warning": expired or low,
    }


def device_document(row: RegistrationView, now: float) -> dict[str, Any]:
    """One device's registration at `now`. A lease is renewed to `now + ttl`, so the last
    heartbeat (or registration) was at `expires_at - ttl`."""
    device = row.device
    return {
        "id": device.id,
        "class": device.device_class,
        "site": device.site,
        "version": device.version,
        "labels": dict(device.labels),
        "addresses": [{"address": endpoint.address, "port": endpoint.port} for endpoint in device.endpoints],
        "registered_at": row.registered_at,
        "lease": {
            "ttl_seconds": row.ttl,
            "expires_at": row.expires_at,
            "expires_in_seconds": max(0.0, row.expires_at - now),
            "last_heartbeat_at": row.expires_at - row.ttl,
        },
        "certificate": certificate_document(row.certificate, now),
    }


def devices_document(lookup: DeviceLookup, site: str | None, limit: int, now: float) -> dict[str, Any]:
    """The first `limit` live devices by id (of `site`, when given), and how many there are."""
    rows, total = lookup.first(site, limit)
    return {
        "generated_at": now,
        "site": site,
        "limit": limit,
        "count": total,
        "devices": [device_document(row, now) for row in rows],
    }
