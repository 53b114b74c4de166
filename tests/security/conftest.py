"""A real API process with API keys configured, for hostile-client tests.

The API (uvicorn, as ``dip api`` runs it) talks to the session's real Redis in
a database of its own. Unless a test module asks for one, no worker runs, so
submitted jobs stay queued: ownership, queue caps and refusals never wait on
the engine.
Tests talk HTTP (httpx, or raw bytes on a socket for what httpx refuses to
send) and look into Redis and the results directory for what was left behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import contextmanager
from dataclasses import dataclass, field
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
STARTUP_TIMEOUT_S = 60.0

# Each caller's key. Bob's is configured by its digest (sha256:<hex>), the others raw.
KEYS = {
    "alice": "alice-key-5f0c1d2e3b4a69788796",
    "bob": "bob-key-0a1b2c3d4e5f60718293",
    "admin": "admin-key-99aa88bb77cc66dd55ee",
}


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class Api:
    """Handles on a running API process."""

    url: str
    redis: redis.Redis
    results_dir: Path
    queue: str  # the Celery queue: a Redis list where enqueued messages wait
    logs: Path
    keys: dict[str, str] = field(default_factory=lambda: dict(KEYS))
    clients: list[httpx.Client] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)

    def peak_memory_kb(self, name: str = "api") -> int:
        """The peak resident memory of the ``name`` process so far (Linux ``VmHWM``)."""
        status = Path(f"/proc/{self.pids[name]}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))

    def client(self, who: str | None = None, **headers: str) -> httpx.Client:
        """An HTTP client sending ``who``'s key (``None``: no key)."""
        if who is not None:
            headers["Authorization"] = f"Bearer {self.keys[who]}"
        client = httpx.Client(base_url=self.url, headers=headers, timeout=30.0, limits=FRESH_CONNECTIONS)
        self.clients.append(client)
        return client

    @staticmethod
    def submit(client: httpx.Client, image: bytes, *, headers: dict[str, str] | None = None,
               **fields: Any) -> httpx.Response:
        """POST /v1/jobs with ``image`` and ``fields`` (default: a 10-iteration denoise)."""
        fields = {"task": "denoise", "iterations": 10, **fields}
        return client.post("/v1/jobs", files={"image": ("image.png", image, "image/png")},
                           data={name: str(value) for name, value in fields.items()}, headers=headers)

    def submit_ok(self, client: httpx.Client, image: bytes, **fields: Any) -> dict[str, Any]:
        response = self.submit(client, image, **fields)
        assert response.status_code == 202, response.text
        return response.json()

    def state(self) -> tuple[set[str], list[str]]:
        """Every Redis key of this database and every path on the results volume (but the staging dir)."""
        keys = set(self.redis.scan_iter("*"))
        paths = sorted(str(p.relative_to(self.results_dir)) for p in self.results_dir.rglob("*"))
        return keys, [p for p in paths if p != ".staging"]

    def connect(self, *, timeout_s: float = 10.0) -> socket.socket:
        """A TCP connection to the API, for requests sent byte by byte."""
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return socket.create_connection((host, int(port)), timeout=timeout_s)

    def raw(self, request: bytes, *, timeout_s: float = 10.0) -> RawResponse:
        """Send ``request`` (bytes, head and body) as is, on a connection of its own; read the answer."""
        with self.connect(timeout_s=timeout_s) as sock:
            sock.sendall(request)
            return self.read_response(sock)

    def log_tail(self, name: str = "api", lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


    @staticmethod
    def read_response(sock: socket.socket) -> RawResponse:
        """Read one HTTP/1.1 response (the server closes the connection or sends Content-Length)."""
        return _read_response(sock)


def _read_response(sock: socket.socket) -> RawResponse:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", -1))
    while length < 0 or len(body) < length:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        body += chunk
    return RawResponse(status=int(status_line.split()[1]), headers=headers, body=body)


def key_digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _png(size: int = 64, *, seed: float = 0.0) -> bytes:
    """A small smooth RGB PNG."""
    y, x = np.mgrid[0:size, 0:size] / max(1, size - 1)
    pixels = np.stack([0.5 + 0.4 * np.sin(3 * x + seed), 0.5 + 0.4 * np.cos(2 * y), x * y], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _error_of(response: httpx.Response | RawResponse, status: int, code: str) -> str:
    """Check that ``response`` is the JSON error ``code`` with ``status``; return its message."""
    raw = isinstance(response, RawResponse)
    body = response.body if raw else response.content
    assert (response.status if raw else response.status_code) == status, body[:500]
    assert response.headers["content-type"].startswith("application/json"), body[:500]
    error = json.loads(body)["error"]
    assert error["code"] == code, error
    assert error["message"]
    return error["message"]


@contextmanager
def _running_api(redis_url: str, workdir: Path, *, worker: bool, **settings: str) -> Iterator[Api]:
    """Run the API (and a worker) with ``DIP_*`` ``settings`` (names without the prefix) until the block ends."""
    results_dir, logs = workdir / "results", workdir / "logs"
    results_dir.mkdir(parents=True)
    logs.mkdir()
    port = free_port()
    queue = f"dip-security-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "DIP_REDIS_URL": redis_url,
        "DIP_RESULTS_DIR": str(results_dir),
        "DIP_QUEUE": queue,
        "DIP_MAX_UPLOAD_BYTES": "1000000",
        "DIP_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
        **{f"DIP_{name.upper()}": value for name, value in settings.items()},
    }
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    commands = {"api": [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--host",
                        "127.0.0.1", "--port", str(port), "--log-level", "warning"]}
    if worker:
        commands["worker"] = [sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "worker", "-Q", queue,
                              "--concurrency", "1", "-P", "prefork", "-n", f"{queue}@%h", "--without-mingle",
                              "--without-gossip", "-l", "info"]
    processes = {}
    for name, argv in commands.items():
        with (logs / f"{name}.log").open("wb") as log:
            processes[name] = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True)
    api = Api(url=f"http://127.0.0.1:{port}", redis=client, results_dir=results_dir, queue=queue, logs=logs,
              pids={name: process.pid for name, process in processes.items()})
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            for name, process in processes.items():
                assert process.poll() is None, f"{name} exited:\n{api.log_tail(name)}"
            try:
                if httpx.get(f"{api.url}/{'readyz' if worker else 'healthz'}", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not up:\n{api.log_tail('api')}\n{api.log_tail('worker')}"
            time.sleep(0.1)
        yield api
    finally:
        for http in api.clients:
            http.close()
        for process in processes.values():
            stop_process(process, timeout_s=15.0)
        client.flushdb()
        client.close()


@pytest.fixture(scope="session")
def start_api(redis_server: RedisServer,
              tmp_path_factory: pytest.TempPathFactory) -> Callable[..., ContextManager[Api]]:
    """``start_api(db, worker=False, **settings)``: a context manager running an API (and a
    worker) on Redis database ``db`` (each test module its own) with ``DIP_*`` settings given
    without the prefix."""
    def start(db: int, *, worker: bool = False, **settings: str) -> ContextManager[Api]:
        url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
        return _running_api(url, tmp_path_factory.mktemp(f"api-db{db}"), worker=worker, **settings)
    return start


@pytest.fixture(scope="session")
def key_settings() -> dict[str, str]:
    """Alice's key raw, Bob's as its digest (a JSON list), the admin's comma-separated."""
    return {"api_keys": json.dumps([KEYS["alice"], key_digest(KEYS["bob"])]),
            "admin_keys": f"{KEYS['admin']},"}


@pytest.fixture(scope="session")
def make_png() -> Callable[..., bytes]:
    return _png


@pytest.fixture(scope="session")
def image64() -> bytes:
    return _png(64)


@pytest.fixture(scope="session")
def error_of() -> Callable[[Any, int, str], str]:
    """``error_of(response, status, code)``: assert the JSON error shape, return the message."""
    return _error_of
