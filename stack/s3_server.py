"""An S3-compatible HTTP server on loopback: moto's standalone server (the ``test`` extra),
for ``dip cluster`` and the object-storage tests. Real object storage (MinIO, S3) in
production; see docs/deploy.md."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class S3Server:
    """``python -m moto.server`` on a free loopback port, its log in ``log_dir``.

    Its clients need :attr:`env` (dummy credentials, the region and the endpoint as
    ``DIP_S3_ENDPOINT_URL``); moto accepts any credentials.
    """

    def __init__(self, log_dir: Path, *, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.log_path = log_dir / "moto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {**CREDENTIALS, "DIP_S3_ENDPOINT_URL": self.endpoint_url}

    def start(self, timeout_s: float = 60.0) -> None:
        log = open(self.log_path, "wb")  # noqa: SIM115 - the server writes it until stop()
        self._proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                      stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **CREDENTIALS})
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto server exited ({self._proc.returncode}): {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.endpoint_url}/moto-api/", timeout=1.0).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto server not up in {timeout_s:.0f} s: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def client(self):  # type: ignore[no-untyped-def]
        """A boto3 S3 client for this server (to make buckets and look at objects)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
