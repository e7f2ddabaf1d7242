"""The app's event queue with several consumers: cancelling one never costs the others an
event, and an end wakes them all."""

from __future__ import annotations

import asyncio

import pytest

from rtguard import ServerEvent
from rtguard._event_queue import EventQueue


async def _waiting(queue: EventQueue, count: int) -> list[asyncio.Task[object]]:
    tasks: list[asyncio.Task[object]] = [asyncio.create_task(queue.get()) for _ in range(count)]
    await asyncio.sleep(0)  # each one waits now
    return tasks


async def test_a_consumer_cancelled_while_it_waits_leaves_the_event_to_the_others() -> None:
    queue = EventQueue(8)
    first, second = await _waiting(queue, 2)
    first.cancel()
    await asyncio.sleep(0)
    event = ServerEvent("response.output_audio.delta", {})
    queue.put(event)
    assert await second is event
    assert first.cancelled()


async def test_an_event_a_consumer_was_woken_for_goes_to_another_if_it_is_cancelled() -> None:
    queue = EventQueue(8)
    first, second = await _waiting(queue, 2)
    event = ServerEvent("response.output_audio.delta", {})
    queue.put(event)  # both are woken; the first is cancelled before it runs
    first.cancel()
    assert await second is event
    with pytest.raises(asyncio.CancelledError):
        await first
    assert len(queue) == 0


async def test_the_end_stops_every_consumer() -> None:
    queue = EventQueue(8)
    consumers = await _waiting(queue, 3)
    queue.end()
    for consumer in consumers:
        with pytest.raises(StopAsyncIteration):
            await consumer
