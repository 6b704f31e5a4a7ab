"""`meshplane simulate devices --certificates` against a real edge-gateway Envoy of a site with TLS:
each simulated device registers with a CSR of its own key, its traffic passes the gateway's mTLS
with the certificate the registry issued, and it renews the certificate by registering again
before half its lifetime, while its requests go on. The plane is tests/test_edge_zero_trust.py's
(the registry's CA, a gym site with `tls`, an echo service behind the gateway)."""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path

import aiohttp
import pytest

from meshplane.cli import _parser as parser
from meshplane.simulate.cli import BadArguments, fleet_options, summary_table
from meshplane.simulate.fleet import Fleet, FleetOptions, FleetStats
from meshplane.simulate.identity import RENEW_AT, new_key_and_csr, take_certificate
from tests.certificates import make_ca
from tests.polling import eventually
from tests.test_edge_zero_trust import BIKES, Edge, running_zero_trust

# Inside the zero-trust plane's device range (`address`/32); traffic leaves from 127.0.0.1, which
# the gateway's device listener accepts: it checks the certificate, not the source address.
DEVICE_ADDRESS = "198.18.0.7"
COUNT = 3
TTL = 6  # a certificate lives two leases: 12 s, renewed at most 4.8 s after it came


async def status_device(edge: Edge, device: str) -> dict[str, object]:
    url = f"http://127.0.0.1:{edge.plane.status_port}/status/devices/{device}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, await response.text()
        document: dict[str, object] = json.loads(await response.text())
        return document


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
async def test_simulated_devices_use_their_certificates_through_the_gateway_and_renew_them(tmp_path: Path) -> None:
    async with running_zero_trust(tmp_path, DEVICE_ADDRESS) as edge:
        options = FleetOptions(
            registry=f"127.0.0.1:{edge.plane.edge.port}",  # type: ignore[union-attr]
            site="gym",
            count=COUNT,
            address=DEVICE_ADDRESS,
            token=BIKES,
            ttl_seconds=TTL,
            certificates=True,
            traffic_url=f"https://127.0.0.1:{edge.from_devices}/",
            traffic_host="api",
            traffic_rate=30,
            traffic_ca=edge.site_ca_path,
        )
        fleet = Fleet(options)
        stop = asyncio.Event()
        run = asyncio.create_task(fleet.run(stop))
        try:
            await asyncio.wait_for(fleet.registered.wait(), 60)
            first = {device: await status_device(edge, device) for device in fleet.device_ids}

            # The gateway learns of each device over xDS: requests pass once it has.
            async def flowing() -> FleetStats | None:
                stats = fleet.stats.snapshot()
                return stats if stats.requests_ok >= 3 * COUNT else None

            before = await eventually(flowing, "requests passing the gateway's mTLS")

            async def renewed_twice() -> FleetStats | None:
                stats = fleet.stats.snapshot()
                return (
                    stats
                    if stats.certificates_renewed >= 2 * COUNT and stats.requests_ok > before.requests_ok + 10
                    else None
                )

            during = await eventually(renewed_twice, "every device renewing its certificate twice", deadline=90)
        finally:
            stop.set()
            stats = await asyncio.wait_for(run, 60)
        assert stats.certificates_issued == COUNT
        assert not stats.refused
        assert not stats.renewals_failed
        # Renewals change no device and need no new config: not one request failed across them.
        assert during.requests_failed == before.requests_failed, during.requests_failed
        assert stats.deregistered == COUNT
        assert "certificates" in summary_table(stats)
        for device, document in first.items():
            certificate = document["certificate"]
            assert isinstance(certificate, dict)
            assert certificate["uri_san"] == f"spiffe://meshplane.local/site/gym/device/{device}"
            assert certificate["lifetime_seconds"] == pytest.approx(2 * TTL + 60)


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
async def test_a_renewed_certificate_replaces_the_last_one_in_the_registry(tmp_path: Path) -> None:
    """The registry (as `/status/devices` shows it) holds the certificate of the device's latest
    registration: a renewal's serial replaces the first one's."""
    async with running_zero_trust(tmp_path, DEVICE_ADDRESS) as edge:
        options = FleetOptions(
            registry=f"127.0.0.1:{edge.plane.edge.port}",  # type: ignore[union-attr]
            site="gym",
            count=1,
            address=DEVICE_ADDRESS,
            token=BIKES,
            ttl_seconds=TTL,
            certificates=True,
        )
        fleet = Fleet(options)
        stop = asyncio.Event()
        run = asyncio.create_task(fleet.run(stop))
        try:
            await asyncio.wait_for(fleet.registered.wait(), 60)
            (device,) = fleet.device_ids
            first = (await status_device(edge, device))["certificate"]
            assert isinstance(first, dict)

            async def replaced() -> dict[str, object] | None:
                shown = (await status_device(edge, device))["certificate"]
                assert isinstance(shown, dict)
                return shown if shown["serial"] != first["serial"] else None

            later = await eventually(replaced, "the registry holding the renewed certificate", deadline=60)
            assert later["not_after"] > first["not_after"]
            assert later["expired"] is False
        finally:
            stop.set()
            stats = await asyncio.wait_for(run, 60)
        assert stats.certificates_renewed >= 1


def test_a_certificate_for_another_key_is_not_taken(tmp_path: Path) -> None:
    key, _ = new_key_and_csr()
    pem = make_ca("ca", lifetime=datetime.timedelta(hours=1)).certificate_pem.decode()
    with pytest.raises(ValueError, match="not for the key"):
        take_certificate(key, pem, "", directory=tmp_path, name="d", trust=None)
    assert list(tmp_path.iterdir()) == []  # nothing written for it
    assert 0 < RENEW_AT < 0.5


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"traffic_url": "http://127.0.0.1:1/", "traffic_host": "api"}, "traffic_url must be https://"),
        ({"certificates": False, "traffic_ca": Path("ca.pem")}, "traffic_ca goes with certificates"),
    ],
    ids=["plain-traffic", "ca-without-certificates"],
)
def test_certificate_options_that_cannot_work_are_refused(changes: dict[str, object], problem: str) -> None:
    base: dict[str, object] = {
        "registry": "127.0.0.1:1",
        "site": "gym",
        "count": 1,
        "address": DEVICE_ADDRESS,
        "certificates": True,
    }
    options = FleetOptions(**{**base, **changes})  # type: ignore[arg-type]
    assert any(problem in found for found in options.problems())


def test_the_certificate_flags_reach_the_fleet_options(tmp_path: Path) -> None:
    trust = tmp_path / "gateways-ca.pem"
    trust.write_text("-----BEGIN-----\n")
    common = ("simulate", "devices", "--count", "2", "--site", "gym", "--address", DEVICE_ADDRESS)
    arguments = [*common, "--certificates", "--traffic-ca", str(trust)]
    options, _ = fleet_options(parser().parse_args(arguments))
    assert (options.certificates, options.traffic_ca) == (True, trust)
    with pytest.raises(BadArguments, match="--traffic-ca"):
        fleet_options(parser().parse_args([*common, "--certificates", "--traffic-ca", str(tmp_path / "missing")]))
