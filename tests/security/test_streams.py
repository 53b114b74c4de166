"""Open event streams per caller are capped (429 ``too_many_streams``), across API processes.

Two API processes share one Redis database with keys configured; no worker
runs, so every job stays queued and its event stream stays open until the
client closes it. Streams are real HTTP connections (httpx streaming).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from core.store import Keys, StreamLeases

STREAMS_DB = 13
OPEN_STREAMS_DB = 14
LEASES_DB = 15
MAX_STREAMS = 3
RELEASE_TIMEOUT_S = 10.0  # well under a stream's lease (30 s): a closed stream is returned, not left to lapse


@pytest.fixture(scope="module")
def apis(start_api: Any, key_settings: dict[str, str]) -> Iterator[tuple[Any, Any]]:
    """Two API processes on the same Redis database."""
    settings = {"max_streams_per_caller": str(MAX_STREAMS), **key_settings}
    with start_api(STREAMS_DB, **settings) as first, start_api(STREAMS_DB, **settings) as second:
        yield first, second


@pytest.fixture(scope="module")
def job(apis: tuple[Any, Any], image64: bytes) -> dict[str, Any]:
    first, _ = apis
    return first.submit_ok(first.client("alice"), image64)  # stays queued: no worker here


@contextmanager
def _stream(http: httpx.Client, job_id: str) -> Iterator[httpx.Response]:
    """Open the job's event stream; read its first event if it opened (then it is surely counted)."""
    with http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(10.0, read=60.0)) as response:
        if response.status_code != 200:
            response.read()
            yield response
            return
        # Held until the end: a line iterator dropped early is finalized, which closes the connection.
        lines = response.iter_lines()
        try:
            while not next(lines).startswith("data:"):
                pass
            yield response
        finally:
            lines.close()


def _open(stack: ExitStack, http: httpx.Client, job_id: str) -> httpx.Response:
    return stack.enter_context(_stream(http, job_id))


def _too_many(response: httpx.Response, error_of: Callable[..., str]) -> str:
    assert response.status_code == 429, f"expected a refusal, the stream opened ({response.status_code})"
    message = error_of(response, 429, "too_many_streams")
    assert response.headers["retry-after"].isdigit() and int(response.headers["retry-after"]) > 0
    return message


def _until_accepted(http: httpx.Client, job_id: str, stack: ExitStack) -> httpx.Response:
    """Poll until a new stream opens (the freed slot is seen); fail after ``RELEASE_TIMEOUT_S``."""
    deadline = time.monotonic() + RELEASE_TIMEOUT_S
    while True:
        inner = ExitStack()
        response = inner.enter_context(_stream(http, job_id))
        if response.status_code == 200:
            stack.push(inner.__exit__)
            return response
        inner.close()
        assert response.status_code == 429, response.text
        assert time.monotonic() < deadline, "the closed stream's slot was never given back"
        time.sleep(0.05)


def test_streams_past_the_cap_are_429_on_every_api_process_until_one_closes(
        apis: tuple[Any, Any], job: dict[str, Any], image64: bytes, error_of: Any) -> None:
    first, second = apis
    alice_a, alice_b = first.client("alice"), second.client("alice")
    with ExitStack() as streams:
        held = ExitStack()
        streams.enter_context(held)
        opened = [_open(held, alice_a, job["id"]) for _ in range(MAX_STREAMS - 1)]
        opened.append(_open(streams, alice_b, job["id"]))  # counted together, whichever process serves it
        assert [r.status_code for r in opened] == [200] * MAX_STREAMS

        for http in (alice_a, alice_b):
            with _stream(http, job["id"]) as refused:
                assert str(MAX_STREAMS) in _too_many(refused, error_of)
        # The cap is per caller: other keys still follow (Bob his own job, the admin Alice's).
        bob = second.client("bob")
        with _stream(bob, first.submit_ok(bob, image64)["id"]) as bobs:
            assert bobs.status_code == 200
        with _stream(first.client("admin"), job["id"]) as admins:
            assert admins.status_code == 200

        held.close()  # Alice closes the streams she holds on the first process
        _until_accepted(alice_b, job["id"], streams)
        _until_accepted(alice_a, job["id"], streams)
        with _stream(alice_a, job["id"]) as refused:
            _too_many(refused, error_of)
    # Every slot comes back once the connections are closed.
    with ExitStack() as streams:
        for _ in range(MAX_STREAMS):
            _until_accepted(alice_a, job["id"], streams)


def test_refused_requests_take_no_slot(apis: tuple[Any, Any], job: dict[str, Any], error_of: Any) -> None:
    first, _ = apis
    alice = first.client("alice")
    for _ in range(MAX_STREAMS + 2):
        error_of(alice.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "yesterday"}),
                 422, "invalid_parameter")
        error_of(alice.get(f"/v1/jobs/{'A' * 22}/events"), 404, "not_found")
    with ExitStack() as streams:
        for _ in range(MAX_STREAMS):
            _until_accepted(alice, job["id"], streams)


def test_without_keys_streams_are_capped_per_client_address(start_api: Any, image64: bytes,
                                                           error_of: Any) -> None:
    with start_api(OPEN_STREAMS_DB, max_streams_per_caller=str(MAX_STREAMS)) as api:
        local = api.client()
        job = api.submit_ok(local, image64)
        # Another loopback address is another client (Linux routes all of 127/8 to the loopback).
        other = httpx.Client(base_url=api.url, timeout=30.0,
                             transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        api.clients.append(other)
        with ExitStack() as streams:
            assert [_open(streams, local, job["id"]).status_code for _ in range(MAX_STREAMS)] == [200] * MAX_STREAMS
            with _stream(local, job["id"]) as refused:
                _too_many(refused, error_of)
            assert _open(streams, other, job["id"]).status_code == 200


def test_a_lease_that_is_not_renewed_lapses_and_a_renewed_one_holds(redis_server: Any) -> None:
    # What stops a crashed API process's streams from counting for ever.
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + f"/{LEASES_DB}", decode_responses=True)
        keys = Keys(prefix=f"t{uuid.uuid4().hex[:8]}")
        leases = StreamLeases(client, keys, lease_s=0.3)
        try:
            kept, dropped = await leases.acquire("key:a", limit=2), await leases.acquire("key:a", limit=2)
            assert kept and dropped and await leases.acquire("key:a", limit=2) is None
            assert await leases.acquire("key:b", limit=2)  # another caller
            # Renew one, leave the other: only the renewed one still counts once the other lapses.
            deadline = time.monotonic() + 10
            while (third := await leases.acquire("key:a", limit=2)) is None:
                assert time.monotonic() < deadline, "an unrenewed lease never lapsed"
                await leases.renew("key:a", kept)
                await asyncio.sleep(0.05)
            await leases.renew("key:a", kept)
            assert await leases.acquire("key:a", limit=2) is None  # kept and third
            await leases.release("key:a", third)
            assert await leases.acquire("key:a", limit=2)
            # Nothing is left behind: the key expires with its last lease.
            while await client.exists(keys.streams("key:a")):
                assert time.monotonic() < deadline + 10, "the lease set never expired"
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    asyncio.run(scenario())
