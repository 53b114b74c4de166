"""Load test of a running ``dip serve``: job submissions, then many clients polling and streaming.

    python benchmarks/load.py                           # against http://127.0.0.1:8000
    python benchmarks/load.py --start --duration 30     # starts its own `dip serve` in a temp dir
    DIP_LOAD_KEY=<api key> python benchmarks/load.py    # a server that needs a key

Every client uses one key, so a server of your own needs DIP_MAX_STREAMS_PER_CALLER
of at least the number of streaming clients (``--start`` sets it).

First ``--jobs`` small jobs are submitted (32 px images, 20 iterations each:
more work than a CPU worker gets through in a minute, so the workers stay
busy for the whole run). Then
``--clients`` concurrent clients run for ``--duration`` seconds: most poll a
random job's status every ``--poll-interval`` seconds, one in ``--stream-every``
follows a job's event stream (SSE) to its end and picks another. At the end the
jobs still unfinished are canceled and every job submitted here is deleted
(``--keep`` leaves them). Loopback addresses only. Prints one table; exits 1 if
any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from core.process import free_port  # noqa: E402
from stack.supervisor import is_loopback  # noqa: E402

TERMINAL = ("succeeded", "failed", "canceled")
REQUEST_TIMEOUT_S = 30.0
STARTUP_TIMEOUT_S = 180.0


@dataclass
class Tally:
    """What the clients saw."""

    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    status_latencies_s: list[float] = field(default_factory=list)
    submit_latencies_s: list[float] = field(default_factory=list)
    streams_opened: int = 0
    streams_completed: int = 0  # ended by the job's terminal status event
    streams_cut: int = 0  # still open when the run ended
    events: int = 0

    def error(self, kind: str) -> None:
        self.errors[kind] += 1


# -- the clients -----------------------------------------------------------------


def tiny_png(size: int, seed: int) -> bytes:
    """A smooth RGB picture: quick to fit, different per job."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    pixels = np.stack([0.5 + 0.4 * np.sin(3 * x + seed), 0.5 + 0.4 * np.cos(2 * y - seed), x * y], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


async def submit_jobs(client: httpx.AsyncClient, tally: Tally, *, count: int, size: int,
                      iterations: int) -> list[str]:
    """Submit ``count`` denoising jobs, a few at a time; returns their ids."""
    fields = {"task": "denoise", "add_noise_sigma": "25", "iterations": str(iterations), "early_stop": "off",
              "log_every": "10"}
    gate = asyncio.Semaphore(8)

    async def one(index: int) -> str | None:
        async with gate:
            started = time.perf_counter()
            response = await _request(client, tally, "POST", "/v1/jobs", data=fields,
                                      files={"image": ("image.png", tiny_png(size, index), "image/png")})
            if response is None or response.status_code != 202:
                return None
            tally.submit_latencies_s.append(time.perf_counter() - started)
            return response.json()["id"]

    ids = await asyncio.gather(*(one(i) for i in range(count)))
    return [job_id for job_id in ids if job_id is not None]


async def poll(client: httpx.AsyncClient, tally: Tally, job_ids: list[str], *, deadline: float,
               interval_s: float, rng: random.Random) -> None:
    """Read a random job's status every ``interval_s`` until ``deadline``."""
    await asyncio.sleep(rng.uniform(0, interval_s))  # spread the clients out
    while time.monotonic() < deadline:
        started = time.perf_counter()
        response = await _request(client, tally, "GET", f"/v1/jobs/{rng.choice(job_ids)}")
        if response is not None and response.status_code == 200:
            tally.status_latencies_s.append(time.perf_counter() - started)
        await asyncio.sleep(max(0.0, min(interval_s, deadline - time.monotonic())))


async def stream(client: httpx.AsyncClient, tally: Tally, job_ids: list[str], *, deadline: float,
                 pause_s: float, rng: random.Random) -> None:
    """Follow random jobs' event streams to their end, one after the other, until ``deadline``."""
    while (left := deadline - time.monotonic()) > 0:
        try:
            async with asyncio.timeout(left):
                await _follow(client, tally, rng.choice(job_ids))
                # A finished job's stream replays and ends at once: no hot loop over those.
                await asyncio.sleep(pause_s)
        except TimeoutError:
            tally.streams_cut += 1
            return


async def _follow(client: httpx.AsyncClient, tally: Tally, job_id: str) -> None:
    tally.requests += 1
    tally.streams_opened += 1
    event = ""
    try:
        async with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(10.0, read=60.0)) as r:
            if r.status_code != 200:
                tally.error(f"events: HTTP {r.status_code}")
                return
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    event = line.removeprefix("event:").strip()
                elif line.startswith("data:"):
                    tally.events += 1
                    if event == "status" and json.loads(line.removeprefix("data:"))["status"] in TERMINAL:
                        tally.streams_completed += 1
                        return
        tally.error("events: stream ended without a terminal status")
    except httpx.HTTPError as exc:
        tally.error(f"events: {type(exc).__name__}")


async def _request(client: httpx.AsyncClient, tally: Tally, method: str, url: str,
                   **kwargs: object) -> httpx.Response | None:
    """One request; any failure (a transport error or a status >= 400) is counted as an error."""
    tally.requests += 1
    try:
        response = await client.request(method, url, **kwargs)  # type: ignore[arg-type]
    except httpx.HTTPError as exc:
        tally.error(f"{method}: {type(exc).__name__}")
        return None
    if response.status_code >= 400:
        tally.error(f"{method}: HTTP {response.status_code}")
    return response


async def final_statuses(client: httpx.AsyncClient, job_ids: list[str]) -> Counter[str]:
    """How many of the jobs are in each status now."""
    replies = await asyncio.gather(*(client.get(f"/v1/jobs/{job_id}") for job_id in job_ids))
    return Counter(r.json()["status"] if r.status_code == 200 else f"HTTP {r.status_code}" for r in replies)


async def cleanup(client: httpx.AsyncClient, job_ids: list[str]) -> None:
    """Cancel the unfinished jobs and delete them all."""
    for job_id in job_ids:
        if (await client.post(f"/v1/jobs/{job_id}/cancel")).status_code == 202:
            for _ in range(100):  # a running job stops within a second or two
                if (await client.get(f"/v1/jobs/{job_id}")).json()["status"] in TERMINAL:
                    break
                await asyncio.sleep(0.1)
        await client.delete(f"/v1/jobs/{job_id}")


async def run_load(args: argparse.Namespace, url: str, key: str | None) -> tuple[Tally, Counter[str], float]:
    tally = Tally()
    options = {"base_url": url, "headers": {"Authorization": f"Bearer {key}"} if key else {},
               "timeout": REQUEST_TIMEOUT_S}
    async with httpx.AsyncClient(**options) as client:
        job_ids = await submit_jobs(client, tally, count=args.jobs, size=args.size, iterations=args.iterations)
        if not job_ids:
            raise SystemExit(f"load: no job could be submitted to {url}: {dict(tally.errors)}")
        rng = random.Random(args.seed)
        started = time.monotonic()
        deadline = started + args.duration

        async def one_client(index: int, client_rng: random.Random) -> None:
            # A connection of its own, like a real client (and no contention on a shared pool).
            async with httpx.AsyncClient(**options) as own:
                if index % args.stream_every == 0:
                    await stream(own, tally, job_ids, deadline=deadline, pause_s=args.poll_interval, rng=client_rng)
                else:
                    await poll(own, tally, job_ids, deadline=deadline, interval_s=args.poll_interval, rng=client_rng)

        await asyncio.gather(*(one_client(i, random.Random(rng.random())) for i in range(args.clients)))
        elapsed = time.monotonic() - started
        statuses = await final_statuses(client, job_ids)
        if not args.keep:
            await cleanup(client, job_ids)
    return tally, statuses, elapsed


# -- the server ------------------------------------------------------------------


@contextmanager
def started_server(*, key: str, workers: int, streams: int) -> Iterator[str]:
    """``dip serve`` in a temporary directory (embedded Redis, ``workers`` worker processes), with ``key``,
    which may hold ``streams`` event streams open at once."""
    workdir = Path(tempfile.mkdtemp(prefix="dip-load-"))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DIP_VAR_DIR": str(workdir / "var"),
           "DIP_RESULTS_DIR": str(workdir / "var" / "results"), "DIP_API_KEYS": key,
           "DIP_WORKER_CONCURRENCY": str(workers), "DIP_DEVICE": "cpu",
           "DIP_MAX_STREAMS_PER_CALLER": str(max(1, streams))}
    env.pop("DIP_REDIS_URL", None)
    log = (workdir / "serve.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "stack.cli", "serve", "--host", "127.0.0.1",
                                "--port", str(port)], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise SystemExit(f"load: dip serve exited:\n{(workdir / 'serve.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"load: dip serve not ready after {STARTUP_TIMEOUT_S:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


# -- the report ------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values``, nearest rank; NaN if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def report(args: argparse.Namespace, tally: Tally, statuses: Counter[str], elapsed_s: float) -> str:
    latencies = tally.status_latencies_s
    ms = {name: percentile(latencies, q) * 1000 for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}
    rows = [
        ("clients (pollers + streamers)", f"{args.clients} ({args.clients - _streamers(args)} + {_streamers(args)})"),
        ("duration", f"{elapsed_s:.1f} s"),
        ("jobs submitted", f"{sum(statuses.values())} (submit p50 "
                           f"{percentile(tally.submit_latencies_s, 0.5) * 1000:.0f} ms)"),
        ("requests", f"{tally.requests} ({tally.requests / elapsed_s:.0f}/s over the run)"),
        ("errors", f"{sum(tally.errors.values())}" + (f" {dict(tally.errors)}" if tally.errors else "")),
        ("status reads", f"{len(latencies)} ({len(latencies) / elapsed_s:.0f}/s)"),
        ("status read latency p50 / p90 / p99 / max",
         f"{ms['p50']:.1f} / {ms['p90']:.1f} / {ms['p99']:.1f} / {max(latencies, default=float('nan')) * 1000:.1f} ms"),
        ("SSE streams opened / completed / open at the end",
         f"{tally.streams_opened} / {tally.streams_completed} / {tally.streams_cut}"),
        ("SSE events received", str(tally.events)),
        ("jobs finished (at the end of the run)", ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"| {name.ljust(width)} | {value} |" for name, value in rows)


def _streamers(args: argparse.Namespace) -> int:
    return len(range(0, args.clients, args.stream_every))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the API (loopback only)")
    parser.add_argument("--start", action="store_true", help="start a `dip serve` of its own in a temp dir")
    parser.add_argument("--workers", type=int, default=1, help="with --start: worker processes")
    parser.add_argument("--jobs", type=int, default=50, help="jobs to submit first")
    parser.add_argument("--clients", type=int, default=200, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of polling and streaming")
    parser.add_argument("--poll-interval", type=float, default=0.5, help="seconds between one client's polls")
    parser.add_argument("--stream-every", type=int, default=4, help="one client in this many follows events")
    parser.add_argument("--size", type=int, default=32, help="side of the submitted images, pixels")
    parser.add_argument("--iterations", type=int, default=20, help="iterations per job")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="leave the submitted jobs on the server")
    args = parser.parse_args(argv)
    for name in ("jobs", "clients", "stream_every", "size", "iterations", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.duration <= 0 or args.poll_interval <= 0:
        parser.error(f"--duration and --poll-interval must be > 0, got {args.duration} and {args.poll_interval}")
    host = urlsplit(args.url).hostname or ""
    if not args.start and not is_loopback(host):
        parser.error(f"--url must be a loopback address (this is a load generator), got {host!r}")

    if args.start:
        key = secrets.token_urlsafe(24)
        with started_server(key=key, workers=args.workers, streams=_streamers(args)) as url:
            print(f"started dip serve at {url} ({args.workers} worker(s)); {os.cpu_count()} CPUs", flush=True)
            tally, statuses, elapsed = asyncio.run(run_load(args, url, key))
    else:
        tally, statuses, elapsed = asyncio.run(run_load(args, args.url, os.environ.get("DIP_LOAD_KEY")))
    print(report(args, tally, statuses, elapsed))
    return 1 if tally.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
