"""Debouncing on a fake clock (looptime): the loop's time jumps, so no test waits for real."""

from __future__ import annotations

import asyncio

import pytest

from meshplane.debounce import Debouncer


class Runs:
    def __init__(self) -> None:
        self.at: list[float] = []

    def __call__(self) -> None:
        self.at.append(asyncio.get_running_loop().time())


async def poke_at(debouncer: Debouncer, times: list[float]) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for at in times:
        await asyncio.sleep(max(0.0, start + at - loop.time()))
        debouncer.poke()


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("pokes", "expected_runs"),
    [
        pytest.param([0.0], [0.0], id="a-lone-change-runs-at-once"),
        pytest.param([0.0, 0.05, 0.09], [0.0, 0.19], id="the-rest-of-a-burst-merges-into-one-after-quiet"),
        pytest.param([0.0, 0.5], [0.0, 0.5], id="separate-changes-run-separately-at-once"),
        pytest.param([0.0, 0.05, 0.3], [0.0, 0.15, 0.3], id="a-change-after-a-quiet-spell-runs-at-once"),
        pytest.param([i * 0.03 for i in range(66)], [0.0, 1.03, 2.05], id="steady-churn-capped-by-max-delay"),
    ],
)
async def test_debounce_schedule(pokes: list[float], expected_runs: list[float]) -> None:
    runs = Runs()
    debouncer = Debouncer(runs, quiet=0.1, max_delay=1.0)
    task = asyncio.create_task(debouncer.run())
    start = asyncio.get_running_loop().time()
    await poke_at(debouncer, pokes)
    await asyncio.sleep(3)
    task.cancel()
    assert [round(t - start, 3) for t in runs.at] == pytest.approx(expected_runs, abs=0.011)
    assert debouncer.runs == len(expected_runs)
    assert debouncer.merged == len(pokes) - len(expected_runs)


@pytest.mark.looptime
async def test_a_storm_costs_one_rebuild_per_max_delay_after_the_leading_one() -> None:
    """10,000 changes, one every millisecond for 10 s: the leading rebuild, then one per second."""
    runs = Runs()
    debouncer = Debouncer(runs, quiet=0.1, max_delay=1.0)
    task = asyncio.create_task(debouncer.run())
    await poke_at(debouncer, [i * 0.001 for i in range(10_000)])
    await asyncio.sleep(3)
    task.cancel()
    assert 10 <= debouncer.runs <= 12
    gaps = [later - earlier for earlier, later in zip(runs.at, runs.at[1:], strict=False)]
    assert min(gaps[1:]) >= 1.0 - 0.011  # after the leading rebuild, never more than one per max_delay
    assert debouncer.pokes == 10_000


def test_debounce_rejects_nonsense_windows() -> None:
    with pytest.raises(ValueError, match="quiet"):
        Debouncer(lambda: None, quiet=0.5, max_delay=0.1)


class LoopClock:
    """Stands for the `time` module in debounce.py: its clocks read the fake loop's time."""

    @staticmethod
    def time() -> float:
        return 1_000_000.0 + asyncio.get_running_loop().time()

    @staticmethod
    def monotonic() -> float:
        return asyncio.get_running_loop().time()


@pytest.mark.looptime
async def test_each_rebuild_knows_when_the_first_change_of_its_window_came(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("meshplane.debounce.time", LoopClock())
    opened: list[tuple[float, float] | None] = []
    debouncer: Debouncer = Debouncer(lambda: opened.append(debouncer.window_opened), quiet=0.1, max_delay=1.0)
    task = asyncio.create_task(debouncer.run())
    start = asyncio.get_running_loop().time()
    await poke_at(debouncer, [0.0, 0.05, 0.09])  # a lone change, then a burst of two run at 0.19
    await asyncio.sleep(3)
    task.cancel()
    assert [(round(wall - 1_000_000.0 - start, 3), round(mono - start, 3)) for wall, mono in filter(None, opened)] == [
        (0.0, 0.0),
        (0.05, 0.05),
    ]
    assert debouncer.window_opened is None  # only while a rebuild runs
