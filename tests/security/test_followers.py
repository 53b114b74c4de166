"""Many clients following event streams at once do not starve status reads.

Each open stream holds a Redis connection while it waits for news; with a
single shared pool of 100 (redis-py's default), 150 followers made every
other request fail with 503. Found by ``benchmarks/load.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

FOLLOWERS_DB = 11
FOLLOWERS = 150
READERS = 100


@pytest.fixture(scope="module")
def api(start_api: Any, key_settings: dict[str, str]) -> Iterator[Any]:
    # Every follower is Alice: her cap on open streams must not be what the test meets.
    with start_api(FOLLOWERS_DB, max_streams_per_caller=str(FOLLOWERS), **key_settings) as api:
        yield api


async def _follow(api: Any, job_id: str, started: asyncio.Event, opened: list[int], stop: asyncio.Event) -> int:
    """Open the job's event stream, read its first event, hold it open until ``stop``; the status code."""
    async with httpx.AsyncClient(base_url=api.url, headers={"Authorization": f"Bearer {api.keys['alice']}"},
                                 timeout=httpx.Timeout(10.0, read=60.0)) as client:
        async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            # Held until the end: a line iterator dropped after ``break`` is finalized, which
            # closes the connection and ends the stream on the server.
            lines = response.aiter_lines()
            try:
                if response.status_code == 200:
                    async for line in lines:
                        if line.startswith("data:"):
                            break
                opened.append(response.status_code)
                if len(opened) == FOLLOWERS:
                    started.set()
                await stop.wait()
                return response.status_code
            finally:
                await lines.aclose()


def _waiting_streams(api: Any) -> int:
    """How many connections of the API's database wait in a blocking XREAD now (Redis ``CLIENT LIST``)."""
    return sum(1 for c in api.redis.client_list()
               if str(c.get("db")) == str(FOLLOWERS_DB) and "b" in c.get("flags", "") and c.get("cmd") == "xread")


async def _until_every_stream_waits_on_redis(api: Any, *, timeout_s: float = 60.0) -> None:
    # A stream re-blocks every few seconds (its XREAD times out, it checks on the job, waits
    # again): keep looking until one moment shows all of them waiting at once.
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (waiting := await asyncio.to_thread(_waiting_streams, api)) < FOLLOWERS:
        assert asyncio.get_running_loop().time() < deadline, f"only {waiting} of {FOLLOWERS} streams wait on Redis"
        await asyncio.sleep(0.05)


async def _scenario(api: Any, job_id: str) -> tuple[list[int], list[int]]:
    started, stop, opened = asyncio.Event(), asyncio.Event(), []
    followers = [asyncio.create_task(_follow(api, job_id, started, opened, stop)) for _ in range(FOLLOWERS)]
    await asyncio.wait_for(started.wait(), timeout=60)
    await _until_every_stream_waits_on_redis(api)  # each holds a Redis connection now
    async with httpx.AsyncClient(base_url=api.url, headers={"Authorization": f"Bearer {api.keys['alice']}"},
                                 limits=httpx.Limits(max_connections=READERS), timeout=30.0) as client:
        reads = await asyncio.gather(*(client.get(f"/v1/jobs/{job_id}") for _ in range(READERS)))
    stop.set()
    return list(await asyncio.gather(*followers)), [r.status_code for r in reads]


@pytest.mark.slow
def test_status_reads_stay_available_while_many_clients_follow_streams(api: Any, image64: bytes) -> None:
    job = api.submit_ok(api.client("alice"), image64)  # stays queued: no worker here
    streams, reads = asyncio.run(_scenario(api, job["id"]))
    assert streams == [200] * FOLLOWERS
    assert reads == [200] * READERS
    assert "Redis unavailable" not in api.log_tail(lines=1000)
