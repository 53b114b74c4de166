"""`dip serve` end to end, as a new user runs it: its own Redis, a worker and the API from one
command; a job submitted over HTTP succeeds and its result downloads; SIGTERM stops it all."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from core.process import free_port, pid_alive
from tests.faults.conftest import until
from tests.http import FRESH_CONNECTIONS

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def _png(size: int = 64) -> bytes:
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    rgb = np.stack([0.5 + 0.4 * np.sin(3 * x), 0.5 + 0.4 * np.cos(2 * y), 0.3 + 0.4 * x * y], -1)
    buffer = io.BytesIO()
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.timeout(300)
def test_dip_serve_runs_a_job_end_to_end_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("DIP_")}
    env.update({"PYTHONPATH": str(REPO_ROOT), "DIP_VAR_DIR": str(tmp_path / "var"),
                "DIP_RESULTS_DIR": str(tmp_path / "results"), "DIP_DEVICE": "cpu", "OMP_NUM_THREADS": "1"})
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen([sys.executable, "-m", "stack.cli", "serve", "--port", str(port)], cwd=tmp_path,
                                 env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, limits=FRESH_CONNECTIONS)

    def tail() -> str:
        return log.read_text(errors="replace")[-4000:]

    try:
        def ready() -> bool:
            assert serve.poll() is None, log.read_text(errors="replace")
            try:
                return http.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False
        until(ready, timeout_s=180, what="dip serve ready (Redis, worker, API)", on_timeout=tail)

        response = http.post("/v1/jobs", files={"image": ("photo.png", _png(), "image/png")},
                             data={"task": "denoise", "add_noise_sigma": "25", "iterations": "30", "log_every": "10"})
        assert response.status_code == 202, response.text
        job_url = f"/v1/jobs/{response.json()['id']}"
        job = until(lambda: (j := http.get(job_url).json())["status"] in ("succeeded", "failed", "canceled") and j,
                    timeout_s=120, what="the job ends", on_timeout=tail)
        assert job["status"] == "succeeded", job
        assert job["metrics"]["psnr_output"] is not None  # scored against the clean upload
        result = http.get(job["outputs"]["result"])
        assert result.status_code == 200 and result.content.startswith(b"\x89PNG")
        assert Image.open(io.BytesIO(result.content)).size == (64, 64)
        assert [p["iteration"] for p in http.get(f"{job_url}/history").json()] == [10, 20, 30]
    finally:
        http.close()
        children = [int(pid) for pid in Path(f"/proc/{serve.pid}/task/{serve.pid}/children").read_text().split()] \
            if serve.poll() is None else []
        serve.send_signal(signal.SIGTERM)
        try:
            code = serve.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            raise
    assert code == 0, log.read_text(errors="replace")[-4000:]
    assert children and not any(pid_alive(pid) for pid in children)  # Redis, worker and API all stopped
    assert (tmp_path / "var").is_dir() and (tmp_path / "results" / job["id"]).is_dir()
