"""The running service for the tests: a real Redis, a real Celery worker, a real API server.

The worker (prefork, one process) and the API (uvicorn) run as subprocesses
configured through ``DIP_*`` variables, as ``dip serve`` runs them; tests
talk HTTP to the API and look into Redis and the results directory to check
what was (not) left behind.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from core.process import free_port, stop_process
from stack.redis_server import RedisServer
from tests.http import FRESH_CONNECTIONS

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE_DB = 5  # the service tests' own Redis database: other tests share the server
MAX_UPLOAD_BYTES = 1_000_000
MAX_ITERATIONS = 5000
CHECKPOINT_EVERY = 10
STARTUP_TIMEOUT_S = 90.0


@dataclass
class Service:
    """Handles on the running service."""

    url: str
    http: httpx.Client
    redis: redis.Redis
    results_dir: Path
    worker: subprocess.Popen
    logs: Path
    checkpoint_every: int = CHECKPOINT_EVERY

    def submit(self, files: dict[str, bytes], headers: dict[str, str] | None = None,
               **params: Any) -> httpx.Response:
        """POST /v1/jobs with ``files`` (field -> bytes) and ``params`` as form fields."""
        parts = {field: (f"{field}.png", data, "image/png") for field, data in files.items()}
        fields = {name: str(value).lower() if isinstance(value, bool) else str(value)
                  for name, value in params.items()}
        return self.http.post("/v1/jobs", files=parts, data=fields, headers=headers)

    def submit_ok(self, files: dict[str, bytes], **params: Any) -> dict[str, Any]:
        response = self.submit(files, **params)
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, job_id: str, until: Callable[[dict[str, Any]], bool], *, timeout_s: float = 60.0,
             every_s: float = 0.05) -> dict[str, Any]:
        """Poll the job until ``until(job)``; fail with the last state after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if until(job):
                return job
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id} timed out waiting; last state: {json.dumps(job)[:2000]}\n"
                            f"worker log tail:\n{self.log_tail('worker.log')}")
            time.sleep(every_s)

    def wait_finished(self, job_id: str, **kwargs: Any) -> dict[str, Any]:
        return self.wait(job_id, lambda job: job["status"] in ("succeeded", "failed", "canceled"), **kwargs)

    def wait_idle(self, *, timeout_s: float = 60.0) -> None:
        """Until no job is queued or running (earlier tests' jobs are done)."""
        deadline = time.monotonic() + timeout_s
        while any(self.http.get("/v1/jobs", params={"status": s}).json()["items"] for s in ("queued", "running")):
            assert time.monotonic() < deadline, "service did not become idle"
            time.sleep(0.1)

    def fetch(self, url: str) -> httpx.Response:
        response = self.http.get(url)
        assert response.status_code == 200, f"{url}: {response.status_code} {response.text[:300]}"
        return response

    def events(self, url: str, *, last_event_id: str | None = None) -> list[dict[str, Any]]:
        """Read a job's event stream to its end."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        with self.http.stream("GET", url, headers=headers, timeout=60) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            return list(parse_sse(response.iter_lines()))

    def worker_child_pids(self) -> list[int]:
        """Pool processes of the worker (Linux ``/proc``)."""
        children = Path(f"/proc/{self.worker.pid}/task/{self.worker.pid}/children")
        return [int(pid) for pid in children.read_text().split()]

    def log_tail(self, name: str, lines: int = 40) -> str:
        return "\n".join((self.logs / name).read_text(errors="replace").splitlines()[-lines:])


class Pictures:
    """Small synthetic test images (tests get it as the ``pictures`` fixture)."""

    @staticmethod
    def png(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    @staticmethod
    def smooth(size: int, *, seed: int = 0) -> np.ndarray:
        """A smooth uint8 RGB image (waves and a disc): quick to fit."""
        y, x = np.mgrid[0:size, 0:size] / (size - 1)
        phase = seed * 0.7
        red = 0.5 + 0.4 * np.sin(3 * x + phase)
        green = 0.5 + 0.4 * np.cos(2 * y - phase)
        blue = ((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.1).astype(float) * 0.6 + 0.2
        return (np.stack([red, green, blue], axis=-1) * 255).round().astype(np.uint8)

    @staticmethod
    def size(data: bytes) -> tuple[int, int]:
        with Image.open(io.BytesIO(data)) as image:
            return image.size


def parse_sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Events (``{"id", "event", "data"}``) of a text/event-stream; comment lines are skipped."""
    event: dict[str, Any] = {}
    for line in lines:
        if not line:
            if "data" in event:
                event["data"] = json.loads(event["data"])
                yield event
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            event[name] = value.removeprefix(" ")


@pytest.fixture(scope="session")
def service_redis_url(redis_server: RedisServer) -> Iterator[str]:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{SERVICE_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def service(service_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Worker + API against the session's Redis, with small limits so that tests are quick."""
    results_dir = tmp_path_factory.mktemp("results")
    logs = tmp_path_factory.mktemp("logs")
    port = free_port()
    queue = f"dip-test-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "DIP_REDIS_URL": service_redis_url,
        "DIP_RESULTS_DIR": str(results_dir),
        "DIP_DEVICE": "cpu",
        "DIP_QUEUE": queue,
        "DIP_PROGRESS_INTERVAL_S": "0.1",
        "DIP_CHECKPOINT_EVERY": str(CHECKPOINT_EVERY),
        "DIP_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "DIP_MAX_ITERATIONS": str(MAX_ITERATIONS),
        "DIP_MAX_ATTEMPTS": "3",
        "OMP_NUM_THREADS": "1",
    }
    with (logs / "worker.log").open("wb") as worker_log, (logs / "api.log").open("wb") as api_log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "worker", "-Q", queue,
             "--concurrency", "1", "-P", "prefork", "-n", f"{queue}@%h", "--without-mingle",
             "--without-gossip", "-l", "info"],
            cwd=REPO_ROOT, env=env, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"],
            cwd=REPO_ROOT, env=env, stdout=api_log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=url, timeout=30.0, limits=FRESH_CONNECTIONS)
    client = redis.Redis.from_url(service_redis_url, decode_responses=True)
    service = Service(url=url, http=http, redis=client, results_dir=results_dir, worker=worker, logs=logs)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            for name, process in (("worker", worker), ("api", api)):
                assert process.poll() is None, f"{name} exited:\n{service.log_tail(name + '.log')}"
            try:
                if http.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"service not ready:\n{service.log_tail('worker.log')}"
            time.sleep(0.2)
        yield service
    finally:
        http.close()
        client.close()
        stop_process(api, timeout_s=15.0)
        stop_process(worker, timeout_s=15.0)


@pytest.fixture(scope="session")
def pictures() -> type[Pictures]:
    return Pictures


@pytest.fixture(scope="session")
def image64() -> bytes:
    return Pictures.png(Pictures.smooth(64))


@pytest.fixture
def idle_service(service: Service) -> Service:
    service.wait_idle()
    return service
