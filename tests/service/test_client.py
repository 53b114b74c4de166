"""``dip_client`` against the real service, plus a tiny scripted HTTP server for what the real
one will not do on demand (answer 503, drop an event stream half way)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dip_client import (
    AsyncClient,
    AuthError,
    Client,
    DipError,
    JobPublic,
    NotFoundError,
    Retry,
)
from tests.security.conftest import KEYS, key_settings, start_api  # noqa: F401 - the key-protected API's fixtures

QUICK = {"preset": "fast", "iterations": 30, "log_every": 5}
CLIENT_DB = 11  # the key-protected API's own Redis database


def test_submit_every_input_kind_wait_download_and_result_image(idle_service: Any, pictures: Any,
                                                                 tmp_path: Path) -> None:
    picture = pictures.smooth(32)
    path = tmp_path / "in.png"
    path.write_bytes(pictures.png(picture))
    seen: list[JobPublic] = []
    with Client(idle_service.url) as dip:
        job = dip.submit(path, task="denoise", **QUICK)
        others = [dip.submit(pictures.png(picture), task="denoise", iterations=3),
                  dip.submit(picture / 255.0, task="denoise", iterations=3),  # floats in [0, 1]
                  dip.submit(Image.fromarray(picture[:, :, 0]), task="denoise", iterations=3)]  # grayscale
        final = dip.wait(job.id, progress=seen.append, timeout=120)
        assert final.status == "succeeded", final.error
        iterations = [j.progress.iteration for j in seen if j.progress]
        # At least its start and its end; as many more as the worker's progress interval allows.
        assert iterations == sorted(iterations) and len(set(iterations)) >= 2, iterations
        assert iterations[-1] == final.progress.iteration == 30  # type: ignore[union-attr]

        saved = dip.download(job.id, tmp_path / "out")
        assert {"input.png", "result.png", "metrics.json"} <= set(saved)
        assert Image.open(saved["result.png"]).size == (32, 32)
        assert dip.result_image(job.id).size == (32, 32)
        for other in others:
            assert dip.wait(other.id, timeout=120).status == "succeeded"


def test_events_resume_after_last_event_id_without_gaps_or_repeats(idle_service: Any, image64: bytes) -> None:
    with Client(idle_service.url) as dip:
        job = dip.submit(image64, task="denoise", **QUICK)
        stream = dip.events(job.id)
        head = [next(stream) for _ in range(3)]
        stream.close()  # a client that went away mid-job...
        tail = list(dip.events(job.id, last_event_id=head[-1].id, timeout=120))  # ...and came back
        whole = list(dip.events(job.id))
    ids = [event.id for event in whole]
    assert [event.id for event in head + tail] == ids and len(set(ids)) == len(ids)
    assert whole[-1].type == "status" and whole[-1].data["status"] == "succeeded"


def test_api_errors_carry_the_api_code(service: Any, image64: bytes) -> None:
    with Client(service.url) as dip:
        with pytest.raises(DipError) as refused:
            dip.submit(image64, task="sharpen")
        assert (refused.value.code, refused.value.status_code) == ("invalid_parameter", 422)
        with pytest.raises(NotFoundError) as missing:
            dip.get("no-such-job")
        assert missing.value.code == "not_found"


def test_async_client_submits_and_waits(idle_service: Any, image64: bytes) -> None:
    async def run() -> tuple[JobPublic, list[int]]:
        iterations: list[int] = []

        async def record(job: JobPublic) -> None:  # a coroutine callback is awaited
            iterations.append(job.progress.iteration if job.progress else 0)

        async with AsyncClient(idle_service.url) as dip:
            job = await dip.submit(image64, task="denoise", **QUICK)
            return await dip.wait(job.id, progress=record, timeout=120), iterations

    final, iterations = asyncio.run(run())
    assert final.status == "succeeded" and iterations[-1] == 30 and iterations == sorted(iterations)


def test_key_protected_server(start_api: Any, key_settings: dict[str, str], image64: bytes,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    with start_api(CLIENT_DB, **key_settings) as api:
        monkeypatch.delenv("DIP_API_KEY", raising=False)
        with Client(api.url) as anonymous, pytest.raises(AuthError) as refused:
            anonymous.list()
        assert refused.value.code == "unauthorized"
        monkeypatch.setenv("DIP_URL", api.url)
        monkeypatch.setenv("DIP_API_KEY", KEYS["alice"])
        with Client() as alice:  # both from the environment
            job = alice.submit(image64, task="denoise", iterations=5)
            assert [j.id for j in alice.list().items] == [job.id]


# -- a scripted server ----------------------------------------------------------------

Answer = tuple[int, dict[str, str], bytes]


class Script:
    """Answers given in order, and the requests that got them (method, path, headers)."""

    def __init__(self, *answers: Answer | Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, str, dict[str, str]]] = []


@pytest.fixture
def scripted() -> Iterator[Callable[..., tuple[str, Script]]]:
    servers: list[ThreadingHTTPServer] = []

    def start(*answers: Any) -> tuple[str, Script]:
        script = Script(*answers)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                script.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                answer = script.answers.pop(0)
                if callable(answer):
                    answer(self)
                    return
                status, headers, body = answer
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return f"http://127.0.0.1:{server.server_port}", script

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _job_body(job_id: str = "job1") -> bytes:
    url = f"http://x/v1/jobs/{job_id}"
    return json.dumps({
        "id": job_id, "task": "denoise", "params": {"task": "denoise"}, "status": "queued",
        "created_at": "2026-01-01T00:00:00Z", "inputs": {}, "outputs": {},
        "links": {name: f"{url}/{name}" for name in ("history", "events", "snapshots", "cancel")} | {"self": url},
    }).encode()


def _unavailable(retry_after: str) -> Answer:
    body = json.dumps({"error": {"code": "unavailable", "message": "busy"}}).encode()
    return 503, {"Retry-After": retry_after}, body


def test_retries_honour_retry_after_and_resend_the_same_idempotency_key(scripted: Any, image64: bytes) -> None:
    url, script = scripted(_unavailable("1"), (202, {}, _job_body()), _unavailable("0"), _unavailable("0"))
    # A backoff far longer than Retry-After: the timing shows which one was followed.
    with Client(url, api_key="secret-key", retry=Retry(tries=2, backoff_s=20)) as dip:
        started = time.monotonic()
        assert dip.submit(image64, task="denoise").id == "job1"
        assert 1.0 <= time.monotonic() - started < 10
        with pytest.raises(DipError) as gave_up:  # two tries, both refused
            dip.get("job1")
    assert (gave_up.value.code, gave_up.value.status_code) == ("unavailable", 503)
    first, second = (headers for _, _, headers in script.requests[:2])
    assert first["idempotency-key"] == second["idempotency-key"] and len(first["idempotency-key"]) >= 16
    assert all(h["authorization"] == "Bearer secret-key" for _, _, h in script.requests)
    assert len(script.requests) == 4


def _sse(*events: tuple[str, str, dict[str, Any]]) -> bytes:
    return b"".join(f"id: {i}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode() for i, kind, data in events)


def test_a_dropped_event_stream_is_resumed_with_last_event_id(scripted: Any) -> None:
    progress = {"progress": {"iteration": 5, "total": 10, "fraction": 0.5}, "metrics": {"loss": 0.1}}

    def drop_after_two(handler: BaseHTTPRequestHandler) -> None:
        # No length, then the connection closes early: what a restarting server or proxy does.
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        chunk = _sse(("1-0", "status", {"status": "running"}), ("2-0", "progress", progress))
        handler.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        handler.wfile.flush()
        handler.close_connection = True

    rest = _sse(("3-0", "status", {"status": "succeeded", "error": None}))
    url, script = scripted(drop_after_two, (200, {"Content-Type": "text/event-stream"}, rest))
    with Client(url, retry=Retry(tries=2, backoff_s=0.01)) as dip:
        events = list(dip.events("job1", timeout=30))
    assert [(e.id, e.type.value) for e in events] == [("1-0", "status"), ("2-0", "progress"), ("3-0", "status")]
    assert "last-event-id" not in script.requests[0][2] and script.requests[1][2]["last-event-id"] == "2-0"


def test_arrays_are_checked_before_anything_is_sent() -> None:
    with Client("http://127.0.0.1:9", retry=Retry(tries=1)) as dip:
        with pytest.raises(ValueError, match="shape"):
            dip.submit(np.zeros((4, 4, 2), np.uint8), task="denoise")
        with pytest.raises(FileNotFoundError):
            dip.submit(Path("/nonexistent.png"), task="denoise")
