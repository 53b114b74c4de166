"""A real HTTP webhook receiver for tests: a stdlib server in a thread that records what it gets."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes
    received_at: float  # time.time() when it arrived (before any delay)

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def type(self) -> str:
        return self.payload["type"]


@dataclass
class Receiver:
    """Answers each POST with the next of ``codes`` (then 200), after ``delay_s``; while ``held``
    (``receiving(hold=True)``), each answer also waits until :meth:`release` (a stuck receiver)."""

    codes: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    released: threading.Event = field(default_factory=threading.Event)
    deliveries: list[Delivery] = field(default_factory=list)
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def release(self) -> None:
        self.released.set()

    def of_type(self, kind: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.type == kind]

    def _answer(self, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            self.deliveries.append(Delivery(headers, body, time.time()))
            return self.codes.pop(0) if self.codes else 200


@contextmanager
def receiving(*, codes: list[int] | None = None, delay_s: float = 0.0, hold: bool = False) -> Iterator[Receiver]:
    receiver = Receiver(codes=list(codes or []), delay_s=delay_s)
    if not hold:
        receiver.release()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            code = receiver._answer({k.lower(): v for k, v in self.headers.items()}, body)
            if receiver.delay_s:
                time.sleep(receiver.delay_s)
            receiver.released.wait(60)
            self.send_response(code)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release()
        server.shutdown()
        server.server_close()
