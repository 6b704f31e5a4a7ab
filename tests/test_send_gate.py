"""The send gate: response bytes handed to gRPC are bounded; small sends pass, large ones take turns."""

from __future__ import annotations

import asyncio

from meshplane.xds.server.stream import SendGate


async def test_sends_within_the_budget_pass_at_once_and_the_rest_wait_their_turn() -> None:
    gate = SendGate(budget=10)
    first = await gate.acquire(6)
    second = await gate.acquire(4)
    assert gate.in_flight == 10
    waiting = asyncio.create_task(gate.acquire(6))
    behind = asyncio.create_task(gate.acquire(1))  # arrives later: waits behind, even though it would fit
    await asyncio.sleep(0)
    assert not waiting.done()
    assert not behind.done()
    first()
    first()  # releasing twice is harmless
    third = await waiting
    assert gate.in_flight == 4 + 6
    await asyncio.sleep(0)
    assert not behind.done()  # the budget is full again
    second()
    fourth = await behind
    assert gate.in_flight == 6 + 1
    third()
    fourth()
    assert gate.in_flight == 0


async def test_a_response_larger_than_the_budget_still_goes_alone() -> None:
    gate = SendGate(budget=10)
    release = await gate.acquire(50)
    assert gate.in_flight == 50
    release()
    assert gate.in_flight == 0


async def test_a_stalled_send_gives_its_share_back_after_the_hold_time() -> None:
    gate = SendGate(budget=10, hold=0.01)
    await gate.acquire(10)  # never released by its stream
    waiting = asyncio.create_task(gate.acquire(10))
    release = await asyncio.wait_for(waiting, 5)
    release()
    assert gate.in_flight == 0


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    gate = SendGate(budget=10)
    release = await gate.acquire(10)
    waiting = asyncio.create_task(gate.acquire(5))
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    release()
    assert gate.in_flight == 0
