"""Several hosts, simulated on one machine: the API and two workers share no directory at all,
only Redis and an S3-compatible object store (moto's standalone server, on loopback).

Each process gets its own results, scratch and var folders; the jobs' files go through the
object store alone. A worker killed mid-job leaves its checkpoint in the store, and the other
worker, on its own disk, resumes from it.
"""

from __future__ import annotations

import io
import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.faults.conftest import REPO_ROOT, png64
from tests.faults.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.name != "posix", reason="process groups and POSIX signals")]

ITERATIONS = 120
LOG_EVERY = 10
PREFIX = "jobs"
_buckets = itertools.count()


@pytest.fixture
def bucket(s3_server: Any) -> str:
    name = f"dip-test-{os.getpid()}-{next(_buckets)}"
    s3_server.client().create_bucket(Bucket=name)
    return name


def host_env(cluster: Any, s3_server: Any, bucket: str, host: str, *, endpoint: str | None = None,
             **extra: str) -> dict[str, str]:
    """The variables of one process on its own 'host': its own folders, the shared bucket."""
    root = cluster.root / "hosts" / host
    return {**s3_server.env, "DIP_RESULTS_URL": f"s3://{bucket}/{PREFIX}",
            "DIP_S3_ENDPOINT_URL": endpoint or s3_server.endpoint_url,
            "DIP_RESULTS_DIR": str(root / "results"), "DIP_SCRATCH_DIR": str(root / "scratch"),
            "DIP_VAR_DIR": str(root / "var"), **extra}


def objects(s3_server: Any, bucket: str, job_id: str = "") -> dict[str, bytes]:
    """Every object under the job's prefix (all jobs' when ``job_id`` is empty), by name."""
    client = s3_server.client()
    prefix = f"{PREFIX}/{job_id}/" if job_id else f"{PREFIX}/"
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"][len(prefix):]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def mask64() -> bytes:
    mask = np.ones((64, 64), dtype=np.uint8) * 255
    mask[20:40, 24:44] = 0  # the hole to fill
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    return buffer.getvalue()


def low32() -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png64(3))).resize((32, 32), Image.Resampling.BICUBIC).save(buffer, format="PNG")
    return buffer.getvalue()


def submit(cluster: Any, files: dict[str, bytes], **params: Any) -> str:
    fields = {"preset": "fast", **params}
    response = cluster.http.post("/v1/jobs", files={k: (f"{k}.png", v, "image/png") for k, v in files.items()},
                                 data={k: str(v) for k, v in fields.items()})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def download_all(cluster: Any, job_id: str) -> dict[str, bytes]:
    """Every input and output of the job, through the API, by public name (and the 304 of each)."""
    job = cluster.http.get(f"/v1/jobs/{job_id}").json()
    urls = [url for url in (*job["inputs"].values(), *job["outputs"].values()) if isinstance(url, str)]
    snapshots = cluster.http.get(f"/v1/jobs/{job_id}/snapshots", params={"limit": 100}).json()["items"]
    urls += [item["url"] for item in snapshots]
    got = {}
    for url in urls:
        name = url.rsplit("/", 1)[-1]
        response = cluster.http.get(url)
        assert response.status_code == 200, (name, response.text)
        assert int(response.headers["content-length"]) == len(response.content)
        again = cluster.http.get(url, headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304, name
        got[name] = response.content
    return got


@pytest.mark.timeout(240)
def test_two_workers_with_no_shared_directory_run_every_task_and_a_killed_workers_job_resumes_from_the_store(
        cluster: Any, s3_server: Any, bucket: str) -> None:
    cluster.start_api(**host_env(cluster, s3_server, bucket, "api"))
    # The first worker is slowed down so that it is still in the job's middle when it is killed.
    first = cluster.start_worker("first", **host_env(cluster, s3_server, bucket, "first",
                                                     DIP_FAULT_INJECTION="slow_steps"))
    killed = cluster.submit(iterations=ITERATIONS, log_every=LOG_EVERY, snapshot_every=20)
    before = cluster.wait_running(killed, min_iteration=3 * cluster.checkpoint_every)
    assert before["worker"].startswith("first@")
    # Its checkpoint is in the store, not on a disk the other worker could read.
    assert "out/checkpoint.pt" in objects(s3_server, bucket, killed)
    second = cluster.start_worker("second", **host_env(cluster, s3_server, bucket, "second"))
    first.group_signal(signal.SIGKILL)
    first.popen.wait()

    superres = submit(cluster, {"image": low32(), "reference": png64(3)}, task="superres", scale=2,
                      iterations=40, log_every=LOG_EVERY)
    inpaint = submit(cluster, {"image": png64(4), "mask": mask64()}, task="inpaint", iterations=40,
                     log_every=LOG_EVERY)
    done = {job_id: cluster.wait_finished(job_id, timeout_s=150) for job_id in (killed, superres, inpaint)}

    for job_id, record in done.items():
        assert record["status"] == "succeeded", record
        assert record["worker"].startswith("second@")
    firsts = cluster.first_progress_of_each_run(killed)
    assert len(firsts) == 2 and firsts[1] >= cluster.checkpoint_every, firsts  # resumed from the checkpoint
    assert cluster.statuses(killed)[-2:] == [("running", 2), ("succeeded", None)]

    for job_id in done:
        downloaded = download_all(cluster, job_id)
        stored = objects(s3_server, bucket, job_id)
        job = cluster.http.get(f"/v1/jobs/{job_id}").json()
        assert {"result", "curves", "metrics"} <= {kind for kind, url in job["outputs"].items() if url}
        record_files = {**cluster.record(job_id)}
        assert downloaded  # every file named by the job was served, each equal to its object
        for name, content in downloaded.items():
            assert content in stored.values(), name
        assert "out/checkpoint.pt" not in stored  # a finished job's checkpoint is dropped
        assert record_files["status"] == "succeeded"

    # No process wrote a job's file outside the store: the API's and the second worker's own
    # folders hold no job file (the killed worker's scratch copy is all it left, on its own disk).
    hosts = cluster.root / "hosts"
    for host in ("api", "second"):
        assert files_under(hosts / host / "results") == []
        assert [f for f in files_under(hosts / host / "scratch") if not f.startswith(".staging/")] == []
    assert not files_under(cluster.results_dir)
    assert second.alive()


@pytest.mark.timeout(120)
def test_downloads_can_redirect_to_a_presigned_url(cluster: Any, s3_server: Any, bucket: str) -> None:
    cluster.start_api(**host_env(cluster, s3_server, bucket, "api", DIP_PRESIGN="true", DIP_PRESIGN_EXPIRES_S="60"))
    job_id = cluster.submit()  # no worker: the input is enough
    response = cluster.http.get(f"/v1/jobs/{job_id}/files/input.png")
    assert response.status_code == 307, response.text
    location = response.headers["location"]
    assert location.startswith(s3_server.endpoint_url) and "Expires=" in location or "X-Amz-Expires=60" in location
    import httpx

    fetched = httpx.get(location)  # no credentials: the signature is the credential
    assert fetched.status_code == 200 and fetched.content == png64(0)
    etag = cluster.http.get(f"/v1/jobs/{job_id}/files/input.png").headers["etag"]
    assert cluster.http.get(f"/v1/jobs/{job_id}/files/input.png", headers={"If-None-Match": etag}).status_code == 304


@pytest.mark.timeout(180)
def test_an_object_store_outage_refuses_submissions_and_hands_running_jobs_back(
        cluster: Any, s3_server: Any, bucket: str) -> None:
    proxy = TcpProxy("127.0.0.1", s3_server.port)
    try:
        through = f"http://127.0.0.1:{proxy.port}"
        cluster.start_api(**host_env(cluster, s3_server, bucket, "api", endpoint=through))
        worker = cluster.start_worker("w", **host_env(cluster, s3_server, bucket, "w", endpoint=through,
                                                      DIP_FAULT_INJECTION="slow_steps", DIP_RESULTS_RETRY_S="2"))
        job_id = cluster.submit(iterations=60, log_every=LOG_EVERY)
        cluster.wait_running(job_id, min_iteration=cluster.checkpoint_every + 1)

        proxy.refuse()  # the endpoint is down (a silent one costs the timeouts on top: 3 s, 8 s, 2 tries)
        # A submission: 503 with the JSON error, and nothing kept anywhere.
        keys_before = set(cluster.redis.keys("*"))
        refused = cluster.http.post("/v1/jobs", files={"image": ("a.png", png64(1), "image/png")},
                                    data={"task": "denoise", "preset": "fast"}, timeout=90)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "unavailable"
        new_keys = set(cluster.redis.keys("*")) - keys_before
        assert not [k for k in new_keys if k.startswith("dip:job:")], new_keys
        assert files_under(cluster.root / "hosts" / "api" / "scratch") == []
        # The running job cannot upload its next checkpoint: it is handed back, not failed.
        cluster.until(lambda: ("queued", "results_unavailable") in cluster.statuses(job_id), timeout_s=90,
                      what="job handed back", on_timeout=cluster.logs_tail)

        proxy.restore()
        done = cluster.wait_finished(job_id, timeout_s=120)
        downloaded = download_all(cluster, job_id)  # through the API, so through the proxy
    finally:
        proxy.close()
    assert done["status"] == "succeeded", done
    assert "failed" not in [status for status, _ in cluster.statuses(job_id)]
    assert done["attempts"] == "1"  # an outage is not the job's fault
    assert len(objects(s3_server, bucket)) > 0 and worker.alive()
    assert {"input.png", "result.png", "metrics.json"} <= set(downloaded)


@pytest.mark.parametrize("url, env, expected", [
    ("s3://", {}, "must look like s3://bucket"),
    ("https://bucket/prefix", {}, "must look like s3://bucket"),
    ("s3://no-such-bucket-here/p", {}, "no such bucket"),
    ("s3://{bucket}/p", {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                         "AWS_CONFIG_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}, "credentials"),
])
@pytest.mark.parametrize("command", ["api", "worker"])
def test_a_bad_results_url_stops_the_processes_with_one_line(command: str, url: str, env: dict[str, str],
                                                            expected: str, s3_server: Any, bucket: str,
                                                            tmp_path: Path) -> None:
    variables = {**os.environ, **s3_server.env, "DIP_RESULTS_URL": url.format(bucket=bucket),
                 "DIP_REDIS_URL": "redis://127.0.0.1:1/0", "DIP_VAR_DIR": str(tmp_path), **env}
    for name, value in env.items():
        if value == "":
            variables.pop(name)
    done = subprocess.run([sys.executable, "-m", "stack.cli", command], env=variables, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dip {command}: error: DIP_RESULTS_URL"), done.stderr
    assert expected in lines[0]
