"""``dip submit / status / watch / download / cancel / jobs`` as a user runs them: subprocesses
against the real service, checked by exit status, stdout JSON and files written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def dip(service: Any, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DIP_URL": service.url, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("DIP_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "stack.cli", *argv], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=timeout, check=False)


def test_submit_wait_json_out_writes_the_result(idle_service: Any, pictures: Any, tmp_path: Path) -> None:
    image = tmp_path / "noisy.png"
    image.write_bytes(pictures.png(pictures.smooth(32)))
    out = tmp_path / "out"
    done = dip(idle_service, "submit", str(image), "--task", "denoise", "--iterations", "20",
               "--log-every", "5", "--wait", "--json", "--out", str(out))
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded" and job["params"]["log_every"] == 5
    assert (out / "result.png").is_file() and pictures.size((out / "result.png").read_bytes()) == (32, 32)
    assert "it 20/20" in done.stderr  # the live progress line


def test_bad_input_exits_2_with_one_line(service: Any, tmp_path: Path) -> None:
    missing = dip(service, "submit", str(tmp_path / "nope.png"), "--task", "denoise")
    assert missing.returncode == 2 and missing.stderr.startswith("dip submit: error: ")
    assert len(missing.stderr.strip().splitlines()) == 1
    unknown = dip(service, "status", "no-such-job")
    assert unknown.returncode == 2 and "not_found" in unknown.stderr
    usage = dip(service, "submit", str(tmp_path / "nope.png"), "--task", "sharpen")
    assert usage.returncode == 2 and "invalid choice" in usage.stderr


def test_status_jobs_cancel_then_watch_exits_3(idle_service: Any, pictures: Any, tmp_path: Path) -> None:
    image = tmp_path / "noisy.png"
    image.write_bytes(pictures.png(pictures.smooth(32)))
    submitted = dip(idle_service, "submit", str(image), "--task", "denoise", "--iterations", "4000", "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    try:
        status = dip(idle_service, "status", job_id, "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["id"] == job_id
        listed = dip(idle_service, "jobs")
        assert listed.returncode == 0 and job_id in listed.stdout
        canceled = dip(idle_service, "cancel", job_id)
        assert canceled.returncode == 0, canceled.stderr
    finally:  # a long job left running would hold the shared worker from the tests after this one
        idle_service.http.post(f"/v1/jobs/{job_id}/cancel")
    watched = dip(idle_service, "watch", job_id, "--json")
    assert watched.returncode == 3, watched.stderr
    assert json.loads(watched.stdout)["status"] == "canceled"
