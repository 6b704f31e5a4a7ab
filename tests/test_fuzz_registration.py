"""Property tests for registration validation: whatever a device sends (ids, classes, sites,
addresses of every kind, ports, labels, oversized fields), `EdgeRegistry.register` either accepts it
or raises `RegistryError` with a reason, never anything else; and whatever it accepts has every
address inside its site's ranges and none that `forbidden_address_reason` refuses."""

from __future__ import annotations

import asyncio
import ipaddress

from hypothesis import event, given, settings
from hypothesis import strategies as st

from meshplane.discovery.registry.auth import Principal, PrincipalKind
from meshplane.discovery.registry.registry import EdgeRegistry, LeaseSettings, RegisterInput, RegistryError
from meshplane.discovery.registry.store import MemoryStore
from meshplane.model import GatewayAddress, Site, forbidden_address_reason

BERLIN = Site("gym-berlin", "eu-central", "a", (GatewayAddress("10.20.0.2", 15080),), ("10.20.0.0/16", "fd20::/48"))
MUNICH = Site("gym-munich", "eu-central", "b", (GatewayAddress("10.30.0.2", 15080),), ("10.30.0.0/16",))
# An operator's far too wide ranges: the forbidden addresses must still be refused.
EVERYWHERE = Site("everywhere", "eu-central", "c", (), ("0.0.0.0/0", "::/0"))
SITES = {site.id: site for site in (BERLIN, MUNICH, EVERYWHERE)}

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
special = st.sampled_from(
    [
        "10.20.1.5",
        "10.30.255.254",
        "fd20::5",
        "fd20:0:0::0005",
        "::ffff:10.20.1.5",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "127.0.0.1",
        "::1",
        "169.254.169.254",
        "169.254.1.1",
        "fe80::1",
        "fe80::1%eth0",
        "fd20::1%eth0",
        "fd00:ec2::254",
        "100.100.100.200",
        "192.0.0.192",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "ff02::1",
        "240.0.0.1",
        "255.255.255.255",
        "10.20.1.5/32",
        "010.020.001.005",
        " 10.20.1.5",
        "10.20.1.5\n",
        "localhost",
        "",
        "2130706433",
        "0x7f.1",
    ]
)
in_berlin = st.integers(min_value=0, max_value=2**16 - 1).map(lambda n: str(ipaddress.ip_address(0x0A140000 + n)))
addresses = st.one_of(ipv4, ipv6, special, in_berlin, st.text(max_size=40))
ports = st.one_of(st.integers(min_value=-(2**40), max_value=2**40), st.integers(min_value=0, max_value=65536))
ids = st.one_of(
    st.from_regex(r"\A[a-z0-9][a-z0-9._-]{0,20}\Z"),
    st.text(max_size=40),
    st.text(min_size=120, max_size=300, alphabet="ab"),
)
classes = st.one_of(st.sampled_from(["bike", "Bike", "bike_1", "-bike", "b" * 64, "b" * 63]), st.text(max_size=20))
sites = st.one_of(st.sampled_from(sorted(SITES)), st.text(max_size=12))
labels = st.one_of(
    st.dictionaries(st.from_regex(r"\A[a-z][a-z0-9._/-]{0,10}\Z"), st.text(max_size=20), max_size=4),
    st.dictionaries(st.text(max_size=80), st.text(max_size=300), max_size=20),
)
requests = st.builds(
    RegisterInput,
    device_id=ids,
    device_class=classes,
    site=sites,
    endpoints=st.lists(st.tuples(addresses, ports), max_size=10).map(tuple),
    version=st.one_of(st.text(max_size=10), st.text(min_size=60, max_size=100)),
    labels=labels,
    ttl_seconds=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 100).map(float)),
    lease_id=st.one_of(st.just(""), st.text(max_size=80)),
)


async def register(request: RegisterInput) -> tuple[EdgeRegistry, RegistryError | None]:
    registry = EdgeRegistry(
        MemoryStore(), lambda: SITES, leases=LeaseSettings(default_ttl=30, min_ttl=1, max_ttl=60, check_interval=1)
    )
    principal = Principal(PrincipalKind.CLASS, request.device_class)
    try:
        await registry.register(principal, request)
    except RegistryError as refused:
        return registry, refused
    return registry, None


def check_accepted(registry: EdgeRegistry, request: RegisterInput) -> None:
    (device,) = registry.devices()
    assert device.id == request.device_id
    site = SITES[device.site]
    networks = site.networks()
    assert device.endpoints
    for endpoint in device.endpoints:
        assert forbidden_address_reason(endpoint.address) is None, endpoint
        assert "%" not in endpoint.address, endpoint  # no IPv6 zone index: Envoy cannot use one
        ip = ipaddress.ip_address(endpoint.address)
        assert any(ip in network for network in networks), endpoint
        assert 1 <= endpoint.port <= 65535
    assert device.problems(SITES) == []


@settings(max_examples=1500, deadline=None)
@given(requests)
def test_register_accepts_only_safe_addresses_or_refuses_with_a_reason(request: RegisterInput) -> None:
    registry, refused = asyncio.run(register(request))
    event("accepted" if refused is None else f"refused: {refused.code.value}")
    if refused is not None:
        assert isinstance(refused.reason, str)
        assert refused.reason
        assert registry.devices() == ()
        return
    check_accepted(registry, request)


@settings(max_examples=1500, deadline=None)
@given(
    st.sampled_from(sorted(SITES)),
    st.lists(st.tuples(st.one_of(special, in_berlin, ipv4, ipv6), st.integers(1, 65535)), min_size=1, max_size=8),
)
def test_well_formed_requests_with_any_address(site: str, endpoints: list[tuple[str, int]]) -> None:
    """Everything but the addresses is valid, so the addresses alone decide."""
    request = RegisterInput("bike-1", "bike", site, tuple(endpoints), "1.0", {"row": "a"}, 10)
    registry, refused = asyncio.run(register(request))
    event("accepted" if refused is None else f"refused: {refused.code.value}")
    if refused is not None:
        assert refused.reason
        named = (f"address {address} " in refused.reason or repr(address) in refused.reason for address, _ in endpoints)
        assert any(named), refused.reason
        return
    check_accepted(registry, request)
    for address, _ in endpoints:
        assert forbidden_address_reason(address) is None
