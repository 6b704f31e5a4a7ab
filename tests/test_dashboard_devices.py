"""The dashboard's device lookup as a browser shows it: headless Chromium loads `/?device=ID` or
`/?site=SITE` from a running control plane whose registry's CA issued the devices' certificates,
and the DOM it dumps shows each device's registration and certificate (serial, not-after, SAN,
time left), a certificate near its end flagged, and refusals as text."""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.test_dashboard import Page, dashboard_when
from tests.test_status_devices import Plane, devices_plane


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    async with devices_plane(tmp_path) as running:
        yield running


def device_row(page: Page, device: str) -> str:
    return page.one("tr", data_device=device).content


async def test_a_device_lookup_shows_its_registration_and_certificate(plane: Plane) -> None:
    issued = await plane.register("bike-1")
    assert issued is not None
    page = await dashboard_when(f"{plane.url}/?device=bike-1", lambda page: page.find("tr", data_device="bike-1"))
    row = page.one("tr", data_device="bike-1")
    assert row.attrs["data-certificate"] == "ok"
    assert "warning" not in row.attrs["class"]
    text = row.content
    assert f"{issued.serial_number:x}" in text
    assert "spiffe://meshplane.local/site/gym/device/bike-1" in text
    assert issued.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ") in text
    assert "198.18.0.5:8080" in text
    # Lease 600 s, certificate 1,260 s of which about 1,200 left: "20 min" then "95 %" or so.
    assert "10 min" in text
    assert "% of its lifetime" in text
    assert page.one("div", id="device-note").content == "device bike-1"


async def test_a_site_listing_flags_a_certificate_near_its_end(plane: Plane) -> None:
    await plane.register("bike-1")
    plane.ca.write(12)  # from now on the CA's end caps new certificates: at most 12 s of 72 s left
    await plane.register("bike-2", ttl=6)
    await plane.register("bike-3", csr=False)
    page = await dashboard_when(f"{plane.url}/?site=gym", lambda page: len(page.find("tr", class_="device")) >= 1)
    assert page.one("tr", data_device="bike-1").attrs["data-certificate"] == "ok"
    late = page.one("tr", data_device="bike-2")
    assert late.attrs["data-certificate"] in ("warning", "expired")
    assert late.attrs["class"] in ("device warning", "device expired")
    assert page.one("tr", data_device="bike-3").attrs["data-certificate"] == "none"
    assert page.one("div", id="device-note").content.startswith("site gym: 3 devices registered")
    # The flagged cell is styled apart (its rule is in the page's own stylesheet).
    assert "tr.device.warning td.certificate" in page.dom


@pytest.mark.parametrize(
    ("device", "note"),
    [
        ("nobody", "device nobody is not registered (no live lease)"),
        ("<img src=x onerror=alert(1)>", "device id '<img src=x onerror=alert(1)>' is malformed"),
    ],
    ids=["unknown", "markup"],
)
async def test_a_lookup_refused_says_why_as_text(plane: Plane, device: str, note: str) -> None:
    url = f"{plane.url}/?device={urllib.parse.quote(device, safe='')}"
    page = await dashboard_when(
        url, lambda page: page.one("div", id="device-note").content.startswith(("device", "cannot"))
    )
    assert page.one("div", id="device-note").content.startswith(note)
    assert not page.find("tr", class_="device")
    assert not page.find("img")
