"""A service to break: its own Redis server, API and Celery workers, all real processes.

Each test gets a fresh ``redis-server`` (it may stop it) and starts the
workers and API it needs as subprocesses in their own process groups,
configured through ``DIP_*`` variables as ``dip serve`` runs them.
Leases are short (``LEASE_S``) and checkpoints frequent so that recoveries take
seconds. Tests observe jobs in Redis directly (what the API would serve),
which keeps working while the API is down.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from core.process import free_port, kill_group, poll_until, spawn
from core.store import Keys
from stack.redis_server import RedisServer
from tests.http import FRESH_CONNECTIONS

REPO_ROOT = Path(__file__).resolve().parents[2]
LEASE_S = 3.0
CHECKPOINT_EVERY = 10
QUEUE = "dip-faults"
TERMINAL = ("succeeded", "failed", "canceled")
KEYS = Keys()  # the service's own key names (default prefix)


def png64(seed: int = 0) -> bytes:
    """A smooth 64x64 RGB PNG: quick to fit."""
    y, x = np.mgrid[0:64, 0:64] / 63
    rgb = np.stack([0.5 + 0.4 * np.sin(3 * x + seed), 0.5 + 0.4 * np.cos(2 * y - seed), 0.3 + 0.4 * x * y], -1)
    buffer = io.BytesIO()
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def until(condition: Callable[[], Any], *, timeout_s: float, what: str, every_s: float = 0.05,
          on_timeout: Callable[[], str] = lambda: "") -> Any:
    """Poll ``condition`` until it returns something truthy (returned); fail after ``timeout_s``."""
    try:
        return poll_until(condition, timeout_s=timeout_s, what=what, every_s=every_s)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{on_timeout()}")


@dataclass
class Proc:
    """A started process (leader of its own process group) and its log."""

    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def group_signal(self, sig: int) -> None:
        os.killpg(self.pid, sig)

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        kill_group(self.popen)
        self.popen.wait()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return f"--- {self.name} log ---\n" + "\n".join(self.text().splitlines()[-lines:])


@dataclass
class Cluster:
    """Redis, and the API and workers a test starts; tears them all down at the end."""

    root: Path
    redis_server: RedisServer
    procs: list[Proc] = field(default_factory=list)
    api_port: int = field(default_factory=free_port)
    lease_s: float = LEASE_S
    checkpoint_every: int = CHECKPOINT_EVERY
    until = staticmethod(until)

    def __post_init__(self) -> None:
        self.results_dir = self.root / "results"
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis = redis.Redis.from_url(self.redis_server.url, decode_responses=True,
                                          socket_connect_timeout=1, socket_timeout=5)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}", timeout=10.0,
                                 limits=FRESH_CONNECTIONS)

    # -- processes ----------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
            "DIP_REDIS_URL": self.redis_server.url,
            "DIP_RESULTS_DIR": str(self.results_dir),
            "DIP_VAR_DIR": str(self.root / "var"),
            "DIP_DEVICE": "cpu",
            "DIP_QUEUE": QUEUE,
            "DIP_PROGRESS_INTERVAL_S": "0.1",
            "DIP_CHECKPOINT_EVERY": str(self.checkpoint_every),
            "DIP_LEASE_S": str(self.lease_s),
            "DIP_MAX_ATTEMPTS": "3",
            "DIP_REDIS_RETRY_S": "60",
            "OMP_NUM_THREADS": "1",
            **extra,
        }

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            proc = Proc(name, spawn(argv, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT), log)
        self.procs.append(proc)
        return proc

    def worker_argv(self, name: str) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "worker", "-Q", QUEUE,
                "-c", "1", "-P", "prefork", "-O", "fair", "-n", f"{name}@%h", "--without-mingle",
                "--without-gossip", "-l", "info"]

    def start_worker(self, name: str, **env: str) -> Proc:
        """A Celery worker named ``<name>@<host>`` (``env``: extra variables); returns once it is ready."""
        proc = self._spawn(name, self.worker_argv(name), self.env(**env))
        until(lambda: "ready." in proc.text() or not proc.alive(), timeout_s=60,
              what=f"worker {name} ready", on_timeout=proc.tail)
        assert proc.alive(), proc.tail()
        return proc

    def start_api(self, **env: str) -> Proc:
        """The API (uvicorn) on ``api_port`` (``env``: extra variables); returns once it answers."""
        argv = [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", "127.0.0.1",
                "--port", str(self.api_port), "--log-level", "warning"]
        proc = self._spawn("api", argv, self.env(**env))
        until(lambda: self._api_up() or not proc.alive(), timeout_s=60, what="API up", on_timeout=proc.tail)
        assert proc.alive(), proc.tail()
        return proc

    def _api_up(self) -> bool:
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def close(self) -> None:
        self.http.close()
        # The test is over and nothing of these processes is checked any more: no warm
        # shutdown (a worker cut off from Redis would wait out its timeouts), the whole group.
        for proc in self.procs:
            kill_group(proc.popen)
        for proc in self.procs:
            proc.popen.wait()
        self.redis.close()

    @staticmethod
    def child_pids(pid: int) -> list[int]:
        """Direct children of ``pid`` (a worker's pool process), from Linux ``/proc``; ``[]`` elsewhere."""
        try:
            return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    def logs_tail(self) -> str:
        return "\n".join(proc.tail() for proc in self.procs)

    # -- jobs ---------------------------------------------------------------------

    def submit(self, *, seed: int = 0, **params: Any) -> str:
        """POST /v1/jobs (denoise, fast preset) and return the job id."""
        fields = {"task": "denoise", "preset": "fast", "seed": seed, **params}
        response = self.http.post("/v1/jobs", files={"image": ("image.png", png64(seed), "image/png")},
                                  data={k: str(v) for k, v in fields.items()})
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def record(self, job_id: str) -> dict[str, str]:
        """The job's hash as stored (``{}`` while Redis is unreachable)."""
        try:
            return self.redis.hgetall(KEYS.job(job_id))
        except redis.ConnectionError:
            return {}

    def wait(self, job_id: str, condition: Callable[[dict[str, str]], bool], *, timeout_s: float = 60.0,
             what: str = "") -> dict[str, str]:
        def check() -> dict[str, str] | None:
            record = self.record(job_id)
            return record if record and condition(record) else None
        return until(check, timeout_s=timeout_s, what=f"job {job_id}: {what}",
                     on_timeout=lambda: f"record: {self.record(job_id)}\n{self.logs_tail()}")

    def wait_finished(self, job_id: str, *, timeout_s: float = 90.0) -> dict[str, str]:
        return self.wait(job_id, lambda r: r["status"] in TERMINAL, timeout_s=timeout_s, what="finished")

    def wait_running(self, job_id: str, *, min_iteration: int = 0, timeout_s: float = 60.0) -> dict[str, str]:
        return self.wait(job_id, lambda r: r["status"] == "running" and int(r.get("iteration") or 0) >= min_iteration,
                         timeout_s=timeout_s, what=f"running at iteration >= {min_iteration}")

    def events(self, job_id: str) -> list[tuple[str, dict[str, Any]]]:
        """(type, data) of every entry of the job's event stream, in order."""
        return [(fields["type"], json.loads(fields["data"]))
                for _, fields in self.redis.xrange(KEYS.events(job_id))]

    def history(self, job_id: str) -> list[int]:
        """Iterations of the job's history points, in stored order."""
        return [json.loads(p)["iteration"] for p in self.redis.lrange(KEYS.history(job_id), 0, -1)]

    def first_progress_of_each_run(self, job_id: str) -> list[int]:
        """Iteration of the first progress event after each claim (``running`` status event)."""
        firsts: list[int] = []
        waiting = False
        for kind, data in self.events(job_id):
            if kind == "status":
                waiting = data["status"] == "running"
            elif kind == "progress" and waiting:
                firsts.append(data["progress"]["iteration"])
                waiting = False
        return firsts

    def statuses(self, job_id: str) -> list[tuple[str, Any]]:
        """(status, attempt or reason) of each status event."""
        return [(data["status"], data.get("attempt", data.get("reason")))
                for kind, data in self.events(job_id) if kind == "status"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A fresh Redis (append-only, restartable on the same port) and nothing else running yet."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    made = Cluster(tmp_path, server)
    try:
        yield made
    finally:
        made.close()
        server.stop()
