"""Addresses that are, or carry, a forbidden address are refused through the real registration
APIs (gRPC and JSON on a running registry), with a reason naming the embedded address; and site
ranges that together allow everything are refused by `meshplane validate`, as one /0 range is.

The registry's site here allows every address (`0.0.0.0/0`, `::/0`: an operator's worst mistake,
built in code because policy files refuse it), so only the forbidden-address rule can refuse."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.model import Site
from tests.edge_http_server import BIKE_TOKEN, RunningRegistry, post, registry_in_thread
from tests.envoy_harness import REPO

EVERYWHERE = Site("everywhere", "eu-central", "c", (), ("0.0.0.0/0", "::/0"))

REFUSED = [
    pytest.param("2002:7f00:1::1", "6to4 address (2002::/16) of 127.0.0.1, which is a loopback", id="6to4-loopback"),
    pytest.param("2002:a9fe:a9fe::1", "6to4 address (2002::/16) of 169.254.169.254", id="6to4-metadata"),
    pytest.param("2002:0001:0203::1", "6to4 address (2002::/16) of 0.1.2.3", id="6to4-this-network"),
    pytest.param("2001:0:7f00:1::1", "Teredo address (2001::/32) with server 127.0.0.1", id="teredo-server"),
    # The client address is stored inverted (obfuscated): 0x80fffffe is 127.0.0.1.
    pytest.param("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo address (2001::/32) of 127.0.0.1", id="teredo-client"),
    pytest.param(
        "2001:0:4136:e378:8000:63bf:5601:5601", "Teredo address (2001::/32) of 169.254.169.254", id="teredo-metadata"
    ),
    pytest.param("2a00:1450::5efe:7f00:1", "ISATAP address (interface id ::5efe:a.b.c.d) of 127.0.0.1", id="isatap"),
    pytest.param(
        "2a00:1450::200:5efe:a9fe:a9fe", "ISATAP address (interface id ::5efe:a.b.c.d) of 169.254", id="isatap-g"
    ),
    pytest.param("fec0::1", "site-local address (fec0::/10", id="site-local"),
    pytest.param("fec0:1:2::5", "site-local address (fec0::/10", id="site-local-2"),
    pytest.param("0.1.2.3", "is in 0.0.0.0/8", id="this-network"),
    pytest.param("0.255.255.255", "is in 0.0.0.0/8", id="this-network-top"),
    pytest.param("64:ff9b::7f00:1", "NAT64 address (64:ff9b::/96) of 127.0.0.1, which is a loopback", id="nat64"),
    pytest.param("64:ff9b::a9fe:a9fe", "NAT64 address (64:ff9b::/96) of 169.254.169.254", id="nat64-metadata"),
    pytest.param("64:ff9b::a14:105", "NAT64 address (64:ff9b::/96) of 10.20.1.5, a form only", id="nat64-any"),
    pytest.param("64:ff9b:1::a9fe:a9fe", "local-use NAT64 prefix 64:ff9b:1::/48", id="nat64-local-use"),
    pytest.param("::127.0.0.1", "IPv4-compatible address (::/96, deprecated by RFC 4291) of 127.0.0.1", id="compat"),
    pytest.param(
        "::10.20.1.5", "IPv4-compatible address (::/96, deprecated by RFC 4291) of 10.20.1.5", id="compat-any"
    ),
    pytest.param("::ffff:0:7f00:1", "IPv4-translated address (::ffff:0:0:0/96) of 127.0.0.1", id="translated"),
    pytest.param("::ffff:127.0.0.1", "IPv4-mapped address of 127.0.0.1, which is a loopback", id="mapped-loopback"),
    pytest.param("::ffff:169.254.169.254", "IPv4-mapped address of 169.254.169.254", id="mapped-metadata"),
    pytest.param("::ffff:0.1.2.3", "IPv4-mapped address of 0.1.2.3, which is in 0.0.0.0/8", id="mapped-this-network"),
    pytest.param("127.0.0.1", "is a loopback address", id="loopback"),
    pytest.param("::1", "is a loopback address", id="loopback-v6"),
    pytest.param("0.0.0.0", "is the unspecified address", id="unspecified"),
    pytest.param("::", "is the unspecified address", id="unspecified-v6"),
    pytest.param("224.0.0.1", "is a multicast address", id="multicast"),
    pytest.param("ff02::1", "is a multicast address", id="multicast-v6"),
    pytest.param("169.254.1.1", "is a link-local address", id="link-local"),
    pytest.param("fe80::1", "is a link-local address", id="link-local-v6"),
    pytest.param("240.0.0.1", "is a reserved address", id="reserved"),
    pytest.param("255.255.255.255", "is a reserved address", id="broadcast"),
    pytest.param("100.100.100.200", "cloud metadata service address", id="metadata-alibaba"),
    pytest.param("fd00:ec2::254", "cloud metadata service address", id="metadata-aws-v6"),
]
ACCEPTED = [
    pytest.param("10.20.1.5", id="private-v4"),
    pytest.param("fd20::5", id="ula"),
    pytest.param("::ffff:10.20.1.5", id="mapped-private"),
    pytest.param("2002:a14:105::1", id="6to4-of-a-private-address"),
    pytest.param("2001:0:4136:e378:8000:63bf:3fff:fdd2", id="teredo-documented-example"),
    pytest.param("2a00:1450::5", id="global-v6"),
    pytest.param("2a00:1450::5efe:a14:105", id="isatap-of-a-private-address"),
]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with registry_in_thread(tmp_path_factory.mktemp("registry"), sites={EVERYWHERE.id: EVERYWHERE}) as running:
        yield running


@pytest.fixture(scope="module")
def stub(registry: RunningRegistry) -> Iterator[registry_pb2_grpc.RegistryStub]:
    with grpc.insecure_channel(f"127.0.0.1:{registry.port}") as channel:
        yield registry_pb2_grpc.RegistryStub(channel)


def registration(address: str) -> dict[str, object]:
    return {
        "device_id": "bike-1",
        "device_class": "bike",
        "site": EVERYWHERE.id,
        "endpoints": [{"address": address, "port": 8080}],
    }


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_grpc_register_refuses_with_the_embedded_address(
    stub: registry_pb2_grpc.RegistryStub, address: str, reason: str
) -> None:
    request = pb.RegisterRequest(**registration(address))  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as refused:
        stub.Register(request, metadata=(("authorization", f"Bearer {BIKE_TOKEN}"),), timeout=30)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason in (refused.value.details() or ""), refused.value.details()


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_json_register_refuses_with_the_embedded_address(registry: RunningRegistry, address: str, reason: str) -> None:
    answer = post(registry.http_port, "/v1/register", json.dumps(registration(address)).encode())
    assert answer.status == 403, answer
    assert answer.json()["code"] == "PERMISSION_DENIED"
    assert reason in answer.json()["message"]


@pytest.mark.parametrize("address", ACCEPTED)
def test_addresses_that_carry_nothing_forbidden_still_register(
    stub: registry_pb2_grpc.RegistryStub, registry: RunningRegistry, address: str
) -> None:
    request = pb.RegisterRequest(**registration(address))  # type: ignore[arg-type]
    stub.Register(request, metadata=(("authorization", f"Bearer {BIKE_TOKEN}"),), timeout=30)
    answer = post(registry.http_port, "/v1/register", json.dumps(registration(address)).encode())
    assert answer.status == 200, answer


SITE = """sites:
  - id: gym
    region: eu
    device_ranges: [{ranges}]
"""


@pytest.mark.parametrize(
    ("ranges", "refused"),
    [
        pytest.param(
            '"0.0.0.0/1", "128.0.0.0/1"', "0.0.0.0/1, 128.0.0.0/1 together allow every address", id="v4-halves"
        ),
        pytest.param(
            '"0.0.0.0/2", "64.0.0.0/2", "128.0.0.0/2", "192.0.0.0/3", "224.0.0.0/3"',
            "together allow every address (0.0.0.0/0)",
            id="v4-pieces",
        ),
        pytest.param('"::/1", "8000::/1"', "::/1, 8000::/1 together allow every address (::/0)", id="v6-halves"),
        pytest.param('"0.0.0.0/0"', "allows every address", id="v4-everything"),
        pytest.param('"::/0"', "allows every address", id="v6-everything"),
        pytest.param('"0.0.0.0/1", "128.0.0.0/2", "::/1"', None, id="wide-but-not-everything"),
        pytest.param('"10.20.0.0/16", "fd20::/48"', None, id="a-site"),
    ],
)
def test_validate_refuses_site_ranges_that_together_allow_everything(
    tmp_path: Path, ranges: str, refused: str | None
) -> None:
    (tmp_path / "sites.yaml").write_text(SITE.format(ranges=ranges))
    result = subprocess.run(
        [sys.executable, "-m", "meshplane", "validate", "--config", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    if refused is None:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 1, result.stdout
        assert refused in result.stderr
