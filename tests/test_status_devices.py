"""`/status/devices` and `/status/devices/<id>` of a running control plane with the edge registry and
its CA (all in-process on 127.0.0.1 ports the OS picks): devices register over the real gRPC API,
with CSRs, and the endpoint shows their registrations and certificates as the registry holds them,
never a certificate's bytes. The documents are validated against docs/status-api.schema.json; the
certificate counters are read from `/metrics`."""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import jsonschema
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.app import ControlPlane, Settings
from meshplane.discovery.registry.auth import token_digest
from meshplane.discovery.registry.registry import LeaseSettings
from meshplane.discovery.registry.store import CertificateRecord
from meshplane.registry_api.console import _time_left, _to_the_second, certificate_line
from meshplane.registry_api.server import EdgeSettings
from meshplane.status.devices import certificate_document
from meshplane.status.document import StatusInputs
from meshplane.status.http import status_app
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publication import PublishState
from meshplane.xds.server.tracking import StreamRegistry
from tests.certificates import csr_for, key_pem, make_ca
from tests.edge_plane import QUICK, running_control_plane
from tests.polling import eventually

REPO = Path(__file__).parent.parent
SCHEMA = json.loads((REPO / "docs" / "status-api.schema.json").read_text())
BIKES = "status-devices-bikes"
METADATA = (("authorization", f"Bearer {BIKES}"),)


def valid(document: Any, definition: str) -> Any:
    jsonschema.validate(document, {**SCHEMA, "$ref": f"#/$defs/{definition}"})
    return document


@dataclass
class RegistryCa:
    """The registry's CA: one key, and a certificate that `write` (re)writes with a chosen end."""

    key: ec.EllipticCurvePrivateKey
    certificate_path: Path
    key_path: Path

    def write(self, seconds_left: float) -> None:
        ca = make_ca("devices-ca", lifetime=datetime.timedelta(seconds=seconds_left), key=self.key)
        temporary = self.certificate_path.with_name(".ca.pem.tmp")
        temporary.write_bytes(ca.certificate_pem)
        temporary.rename(self.certificate_path)


@dataclass
class Plane:
    plane: ControlPlane
    stub: Any  # registry_pb2_grpc.RegistryStub on a grpc.aio channel
    ca: RegistryCa
    url: str  # the status endpoint

    async def register(
        self, device: str, *, site: str = "gym", ttl: int = 600, csr: bool = True
    ) -> x509.Certificate | None:
        """Registers `device` of class bike at 198.18.0.5 (with a new key's CSR when `csr`); the
        certificate issued, None without a CSR."""
        key = ec.generate_private_key(ec.SECP256R1())
        answer = await self.stub.Register(
            pb.RegisterRequest(
                device_id=device,
                device_class="bike",
                site=site,
                endpoints=[pb.Endpoint(address="198.18.0.5", port=8080)],
                version="2.0.1",
                labels={"fleet": "north"},
                ttl_seconds=ttl,
                csr=csr_for(key) if csr else "",
            ),
            metadata=METADATA,
        )
        return x509.load_pem_x509_certificate(answer.certificate.encode()) if csr else None


@contextlib.asynccontextmanager
async def devices_plane(directory: Path) -> AsyncIterator[Plane]:
    """A running control plane (`QUICK`) with sites `gym` and `pool` (198.18.0.0/24 both), the
    registry's CA (valid two days), and a class token for bikes."""
    policy = directory / "policy"
    policy.mkdir()
    (policy / "sites.yaml").write_text(
        "sites:\n"
        "  - {id: gym, region: local, device_ranges: ['198.18.0.0/24']}\n"
        "  - {id: pool, region: local, device_ranges: ['198.18.0.0/24']}\n"
    )
    tokens = directory / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{sha256: {token_digest(BIKES)}, class: bike}}\n")
    key = ec.generate_private_key(ec.SECP256R1())
    ca = RegistryCa(key, directory / "ca.pem", directory / "ca.key")
    ca.write(2 * 24 * 3600)
    ca.key_path.write_bytes(key_pem(key))
    edge = EdgeSettings(
        db=str(directory / "registry.db"),
        address="127.0.0.1:0",
        http_address="127.0.0.1:0",
        tokens=tokens,
        ca_certificate=ca.certificate_path,
        ca_key=ca.key_path,
        leases=LeaseSettings(default_ttl=30, min_ttl=1, check_interval=0.1),
    )
    settings = Settings(
        config=policy,
        xds_address="127.0.0.1:0",
        status_address="127.0.0.1:0",
        edge=edge,
        **QUICK,  # type: ignore[arg-type]
    )
    async with (
        running_control_plane(settings) as plane,
        grpc.aio.insecure_channel(f"127.0.0.1:{plane.edge.port}") as channel,  # type: ignore[union-attr]
    ):
        yield Plane(plane, registry_pb2_grpc.RegistryStub(channel), ca, f"http://127.0.0.1:{plane.status_port}")


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    async with devices_plane(tmp_path) as running:
        yield running


async def get(url: str) -> tuple[int, Any, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
        return response.status, json.loads(text), text


async def test_a_device_shows_its_registration_and_certificate_but_never_the_certificate_itself(
    plane: Plane,
) -> None:
    issued = await plane.register("bike-1")
    assert issued is not None
    status, document, text = await get(f"{plane.url}/status/devices/bike-1")
    assert status == 200, document
    valid(document, "device")
    assert (document["id"], document["class"], document["site"], document["version"]) == (
        "bike-1",
        "bike",
        "gym",
        "2.0.1",
    )
    assert document["labels"] == {"fleet": "north"}
    assert document["addresses"] == [{"address": "198.18.0.5", "port": 8080}]
    lease = document["lease"]
    assert lease["ttl_seconds"] == 600
    assert lease["last_heartbeat_at"] == pytest.approx(lease["expires_at"] - 600)
    assert 0 < lease["expires_in_seconds"] <= 600
    certificate = document["certificate"]
    assert certificate["serial"] == f"{issued.serial_number:x}"
    assert certificate["not_after"] == issued.not_valid_after_utc.timestamp()
    assert certificate["not_before"] == issued.not_valid_before_utc.timestamp()
    assert certificate["uri_san"] == "spiffe://meshplane.local/site/gym/device/bike-1"
    assert certificate["lifetime_seconds"] == pytest.approx(2 * 600 + 60)  # two leases and the skew
    assert certificate["expired"] is False
    assert certificate["warning"] is False
    assert 0 < certificate["seconds_left"] <= 1200
    assert "BEGIN" not in text  # no PEM block: neither the certificate nor a key


async def test_a_device_registered_without_a_csr_shows_no_certificate(plane: Plane) -> None:
    await plane.register("bike-plain", csr=False)
    status, document, _ = await get(f"{plane.url}/status/devices/bike-plain")
    assert status == 200
    assert valid(document, "device")["certificate"] is None


async def test_a_certificate_near_its_end_is_flagged(plane: Plane) -> None:
    """The CA's own end caps a certificate: under a CA ending in 12 s, a new certificate has at most
    12 s of its 72 s and more lifetime left, under a fifth: flagged, and still not expired."""
    plane.ca.write(12)  # the registry re-reads its CA files when they change
    await plane.register("bike-late", ttl=6)
    status, document, _ = await get(f"{plane.url}/status/devices/bike-late")
    assert status == 200
    certificate = valid(document, "device")["certificate"]
    assert certificate["warning"] is True
    assert certificate["seconds_left"] <= 12
    assert certificate["lifetime_seconds"] >= 60


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("/status/devices/nobody", 404, "device nobody is not registered"),
        ("/status/devices/bad%20id", 400, "'bad id' is malformed"),
        ("/status/devices/-dash", 400, "is malformed"),
        ("/status/devices/a/b", 400, "'a/b' is malformed"),
        ("/status/devices/" + "x" * 129, 400, "is malformed"),
        ("/status/devices/%0a%1b", 400, r"'\n\x1b' is malformed"),
        ("/status/devices/bike-1?x=1", 400, "takes no parameters"),
        ("/status/devices?limit=0", 400, "limit '0' must be a whole number from 1 to 500"),
        ("/status/devices?limit=501", 400, "from 1 to 500"),
        ("/status/devices?limit=%D9%A3", 400, "must be a whole number"),  # an Arabic-Indic digit
        ("/status/devices?site=Not_A_Site", 400, "is not a site id"),
        ("/status/devices?sight=gym", 400, "unknown parameter(s) 'sight'"),
    ],
    ids=[
        "unknown",
        "space",
        "leading-dash",
        "slash",
        "too-long",
        "control-bytes",
        "parameters",
        "limit-zero",
        "limit-over",
        "limit-not-ascii",
        "bad-site",
        "unknown-parameter",
    ],
)
async def test_refusals_say_why(plane: Plane, path: str, status: int, reason: str) -> None:
    answered, document, _ = await get(plane.url + path)
    assert answered == status, document
    assert reason in valid(document, "error")["error"]


async def test_the_list_is_bounded_first_by_id_and_counts_them_all(plane: Plane) -> None:
    for device in ("bike-3", "bike-1", "bike-2"):
        await plane.register(device)
    await plane.register("bike-0", site="pool", csr=False)
    status, listing, _ = await get(f"{plane.url}/status/devices?site=gym&limit=2")
    assert status == 200
    valid(listing, "devices")
    assert (listing["site"], listing["limit"], listing["count"]) == ("gym", 2, 3)
    assert [device["id"] for device in listing["devices"]] == ["bike-1", "bike-2"]
    _, everything, _ = await get(f"{plane.url}/status/devices")
    assert (everything["site"], everything["limit"], everything["count"]) == (None, 50, 4)
    assert [device["id"] for device in valid(everything, "devices")["devices"]] == [
        "bike-0",
        "bike-1",
        "bike-2",
        "bike-3",
    ]
    _, empty, _ = await get(f"{plane.url}/status/devices?site=nowhere")
    assert (valid(empty, "devices")["count"], empty["devices"]) == (0, [])


async def test_certificate_counters_reach_metrics(plane: Plane) -> None:
    """Issued, refused and revoked identities, and the devices holding a certificate, as counted by
    the registry: revoked is a lease ending while its certificate is still valid."""
    await plane.register("bike-1")
    with pytest.raises(grpc.aio.AioRpcError):
        await plane.stub.Register(
            pb.RegisterRequest(
                device_id="bike-9",
                device_class="bike",
                site="gym",
                endpoints=[pb.Endpoint(address="198.18.0.5", port=8080)],
                csr="-----BEGIN CERTIFICATE REQUEST-----\nnot one\n-----END CERTIFICATE REQUEST-----\n",
            ),
            metadata=METADATA,
        )
    # Its lease lapses after 3 s, its certificate (2 x the lease) after 6 s: the sweep (every 0.1 s)
    # must see the lease end while the certificate is valid, with room for a loaded machine.
    await plane.register("bike-short", ttl=3)

    async def scraped() -> dict[str, float] | None:
        async with aiohttp.ClientSession() as session, session.get(f"{plane.url}/metrics") as response:
            text = await response.text()
        found = {}
        for line in text.splitlines():
            if (
                line.startswith(("meshplane_source_events_total{", "meshplane_source_objects{"))
                and "edge-registry" in line
            ):
                name, _, value = line.rpartition(" ")
                found[name] = float(value)
        revoked = 'meshplane_source_events_total{event="identity_revocations",source="edge-registry"}'
        return found if found.get(revoked) == 1 else None

    found = await eventually(scraped, "the short lease's end counted as an identity revoked")
    assert found['meshplane_source_events_total{event="certificates_issued",source="edge-registry"}'] == 2
    assert found['meshplane_source_events_total{event="csr_refused",source="edge-registry"}'] == 1
    assert found['meshplane_source_objects{kind="devices_with_certificates",source="edge-registry"}'] == 1


async def test_without_a_registry_there_are_no_devices() -> None:
    inputs = StatusInputs(sources=list, publish_state=PublishState, cache=SnapshotCache(), registry=StreamRegistry())
    runner = web.AppRunner(status_app(inputs), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        for path in ("/status/devices", "/status/devices/bike-1"):
            status, document, _ = await get(url + path)
            assert status == 404
            assert "no edge registry" in valid(document, "error")["error"]
    finally:
        await runner.cleanup()


NOW = 1_900_000_000.0


@pytest.mark.parametrize(
    ("not_before", "not_after", "expired", "warning", "left"),
    [
        (NOW - 60, NOW + 1140, False, False, 1140),  # just issued: 95 % left
        (NOW - 900, NOW + 300, False, False, 300),  # a quarter left
        (NOW - 1000, NOW + 200, False, True, 200),  # a sixth left
        (NOW - 1200, NOW, True, True, 0),  # ends now
        (NOW - 1300, NOW - 100, True, True, 0),  # ended
        (None, NOW + 10, False, False, 10),  # lifetime unknown (stored before it was kept)
        (None, NOW - 1, True, True, 0),
    ],
    ids=["fresh", "a-quarter-left", "a-sixth-left", "ends-now", "ended", "no-lifetime", "no-lifetime-ended"],
)
def test_when_a_certificate_is_flagged(
    not_before: float | None, not_after: float, expired: bool, warning: bool, left: float
) -> None:
    shown = certificate_document(CertificateRecord("ab", not_after, "spiffe://x/site/a/device/b", not_before), NOW)
    assert shown is not None
    valid({"id": "b", "class": "c", "site": "a", "version": "", "labels": {}, "addresses": [], "registered_at": NOW,
           "lease": {"ttl_seconds": 1, "expires_at": NOW, "expires_in_seconds": 0, "last_heartbeat_at": NOW},
           "certificate": shown}, "device")  # fmt: skip
    assert (shown["expired"], shown["warning"], shown["seconds_left"]) == (expired, warning, left)


@pytest.mark.parametrize(
    ("not_after", "shown"),
    [
        ("2030-01-01T00:00:00Z", "  expires in 20 min"),
        ("2030-01-01T00:00:00.123456789Z", "  expires in 20 min"),
        ("2029-12-31T23:40:00Z", "  EXPIRED"),
        ("not a time", ""),
    ],
    ids=["minutes", "nanoseconds", "expired", "unreadable"],
)
def test_devices_get_says_how_long_the_certificate_has_left(not_after: str, shown: str) -> None:
    """`meshplane devices get`'s CERTIFICATE line (the registry's JSON mirror gives RFC 3339 times)."""
    now = datetime.datetime(2029, 12, 31, 23, 40, tzinfo=datetime.UTC).timestamp()
    assert _time_left(_to_the_second(not_after), now) == shown
    line = certificate_line({"certificate": {"serial": "ab", "not_after": not_after, "uri_san": "spiffe://x"}})
    assert line.startswith("CERTIFICATE  serial ab  not after ")
    assert line.endswith("  SAN spiffe://x")
