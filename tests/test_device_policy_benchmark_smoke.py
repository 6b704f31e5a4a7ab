"""benchmarks/device_policy.py keeps working: its component figure in process, and one tiny run of
the whole command (the user path through `meshplane serve`, a real gateway Envoy and a device
namespace). Figures are reported, never asserted as times; what is asserted is that each is there
and that device policy adds what it should to the route configuration."""

from __future__ import annotations

import pytest

from benchmarks import device_policy
from tests.netns import unavailable_reason
from tests.preconditions import requires
from tests.test_edge_benchmark_smoke import figures_of


def test_the_component_figure_grows_the_route_config_with_policy_and_devices() -> None:
    without = device_policy.component_figures(30, governed=False, repeat=2)
    small = device_policy.component_figures(30, governed=True, repeat=2)
    large = device_policy.component_figures(90, governed=True, repeat=2)
    assert (without["devices"], without["policy"], small["policy"]) == (30, False, True)
    # Per-device data is in the route configuration with policy, and only with it.
    assert large["route_config_bytes"] > small["route_config_bytes"] > without["route_config_bytes"] > 0
    assert (
        device_policy.component_figures(90, governed=False, repeat=1)["route_config_bytes"]
        == (without["route_config_bytes"])
    )
    for figures in (without, small, large):
        assert set(figures["translate_ms"]) == {"median", "p99"}


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
@requires(unavailable_reason())
def test_the_command_runs_tiny_through_the_served_process() -> None:
    tiny = ["--sizes", "20", "--repeat", "1", "--user-sizes", "30", "--runs", "2"]
    figures = figures_of("benchmarks.device_policy", *tiny)
    assert [(entry["devices"], entry["policy"]) for entry in figures["component"]] == [(20, False), (20, True)]
    user = figures["user_path"]["30"]
    assert user["devices_at_site"] == 31
    assert len(user["registration_to_enforced_ms"]["runs"]) == 2
    assert len(figures["load_average_start"]) == 3
