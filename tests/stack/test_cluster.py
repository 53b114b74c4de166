"""`dip cluster` end to end: several hosts simulated on one machine, as the README starts them.

A Redis primary, its replica and a sentinel, an S3-compatible server, the API and two workers,
each process with its own folders; a job succeeds with its files only in the bucket, both
workers are seen, and SIGTERM stops every process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from core.process import free_port, pid_alive
from tests.faults.conftest import until
from tests.http import FRESH_CONNECTIONS
from tests.stack.test_serve import REPO_ROOT, _png

pytestmark = pytest.mark.e2e


def _descendants(pid: int) -> list[int]:
    try:
        children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return [*children, *(grand for child in children for grand in _descendants(child))]


@pytest.mark.timeout(300)
def test_dip_cluster_runs_a_job_across_processes_that_share_no_folder_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DIP_", "AWS_"))}
    env.update({"PYTHONPATH": str(REPO_ROOT), "DIP_DEVICE": "cpu", "OMP_NUM_THREADS": "1"})
    root = tmp_path / "cluster"
    log = tmp_path / "cluster.log"
    with log.open("wb") as out:
        cluster = subprocess.Popen([sys.executable, "-m", "stack.cli", "cluster", "--workers", "2", "--port", str(port),
                                    "--dir", str(root)], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, limits=FRESH_CONNECTIONS)

    def tail() -> str:
        return log.read_text(errors="replace")[-4000:]

    processes: list[int] = []
    try:
        def ready() -> dict | None:
            assert cluster.poll() is None, tail()
            try:
                answer = http.get("/readyz")
            except httpx.TransportError:
                return None
            body = answer.json()
            return body if answer.status_code == 200 and body.get("workers", 0) >= 2 else None
        until(ready, timeout_s=180, what="dip cluster ready (two workers seen)", on_timeout=tail)
        processes = _descendants(cluster.pid)

        response = http.post("/v1/jobs", files={"image": ("photo.png", _png(), "image/png")},
                             data={"task": "denoise", "add_noise_sigma": "25", "iterations": "30", "log_every": "10"})
        assert response.status_code == 202, response.text
        job_url = f"/v1/jobs/{response.json()['id']}"
        job = until(lambda: (j := http.get(job_url).json())["status"] in ("succeeded", "failed", "canceled") and j,
                    timeout_s=120, what="the job ends", on_timeout=tail)
        assert job["status"] == "succeeded", job
        result = http.get(job["outputs"]["result"])
        assert result.status_code == 200 and result.content.startswith(b"\x89PNG")
    finally:
        http.close()
        cluster.send_signal(signal.SIGTERM)
        try:
            code = cluster.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(cluster.pid, signal.SIGKILL)
            raise
    assert code == 0, tail()
    # Redis (3 processes), the S3 server, the API and two workers, all stopped.
    assert len(processes) >= 7 and not any(pid_alive(pid) for pid in processes), (processes, tail())
    # The job's files went to the bucket only: no process kept one in its own folders.
    job_files = [p for p in root.rglob("*") if p.is_file() and job["id"] in p.as_posix() and "/s3/" not in p.as_posix()]
    assert job_files == []
    folders = {p.name for p in root.iterdir()}
    assert {"api", "redis", "s3"} <= folders
    assert {"worker1", "worker2"} & folders  # the one that ran the job made its scratch folder
