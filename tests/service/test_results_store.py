"""The results store's two implementations, against a real disk and a real S3-compatible
server (moto's standalone server on loopback): the same contract, and the sweep by prefix."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.config import Settings
from core.layout import new_job_id
from core.results import ResultsStore, clear_stale_staging, open_results, results_refusal
from core.results.local import LocalResults
from core.results.s3 import S3Results
from core.store import JobStore, Keys, WorkerStore
from tests.service.test_store import run
from worker.maintenance import sweep

_buckets = itertools.count()


def _bucket(s3_server: Any) -> str:
    name = f"results-{os.getpid()}-{next(_buckets)}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def results(request: pytest.FixtureRequest, tmp_path: Path, s3_server: Any) -> ResultsStore:
    if request.param == "local":
        return LocalResults(tmp_path / "results")
    return S3Results(_bucket(s3_server), "pre/fix", client=s3_server.client(), endpoint_url=s3_server.endpoint_url)


def test_files_go_in_whole_come_back_equal_and_are_deleted_by_prefix(results: ResultsStore, tmp_path: Path) -> None:
    results.check()
    job, other = new_job_id(), new_job_id()
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(20 << 20))  # over the multipart threshold: several parts
    results.put_file(job, "input.png", big)
    (tmp_path / "small").write_bytes(b"png")
    results.put_file(job, "out/snapshots/iter_00010.png", tmp_path / "small")
    results.put_file(other, "input.png", tmp_path / "small")

    assert set(results.list(job)) == {"input.png", "out/snapshots/iter_00010.png"}
    info = results.info(job, "input.png")
    assert info is not None and info.size == 20 << 20 and info.etag.startswith('"')
    assert results.info(job, "missing.png") is None
    assert b"".join(results.read(job, "input.png")) == big.read_bytes()
    copy = tmp_path / "copy" / "input.png"
    assert results.get_file(job, "input.png", copy) and copy.read_bytes() == big.read_bytes()
    assert not results.get_file(job, "missing.png", tmp_path / "nothing") and not (tmp_path / "nothing").exists()
    assert sorted(results.job_ids()) == sorted([job, other])
    newest = results.newest_change(job)
    assert newest is not None and abs(newest - time.time()) < 120

    results.delete(job, ["out/snapshots/iter_00010.png"])
    assert set(results.list(job)) == {"input.png"}
    results.delete(job)
    assert results.list(job) == {} and list(results.job_ids()) == [other]
    with pytest.raises(ValueError):
        results.info(job, "../" + other + "/input.png")


def test_a_folder_is_stored_all_or_none(results: ResultsStore, tmp_path: Path) -> None:
    job = new_job_id()
    staging = tmp_path / "staging" / job
    staging.mkdir(parents=True)
    (staging / "input.png").write_bytes(b"png")
    (staging / "mask.png").write_bytes(b"mask")
    results.put_folder(job, staging)
    assert set(results.list(job)) == {"input.png", "mask.png"} and not staging.exists()


def test_a_presigned_url_downloads_without_credentials(s3_server: Any, tmp_path: Path) -> None:
    store = S3Results(_bucket(s3_server), "", client=s3_server.client(), endpoint_url=s3_server.endpoint_url)
    job = new_job_id()
    (tmp_path / "f").write_bytes(b"restored")
    store.put_file(job, "out/result.png", tmp_path / "f")
    url = store.url(job, "out/result.png", expires_s=60, filename="x-result.png")
    assert url is not None
    answer = httpx.get(url)
    assert answer.status_code == 200 and answer.content == b"restored"
    assert "x-result.png" in answer.headers.get("content-disposition", "")


def test_the_sweep_deletes_by_prefix_in_the_bucket_and_keeps_recent_orphans(redis_server: Any, s3_server: Any,
                                                                              tmp_path: Path) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/6"
    keys = Keys(prefix=f"sweep{os.getpid()}")
    store = S3Results(_bucket(s3_server), "jobs", client=s3_server.client(), endpoint_url=s3_server.endpoint_url)

    async def create(api: JobStore) -> str:
        return await api.create(new_job_id(), task="denoise", params={}, files={})

    live = run(create, url, keys)
    lost = new_job_id()  # files, no record: Redis lost it
    (tmp_path / "f").write_bytes(b"x")
    for job in (live, lost):
        store.put_file(job, "input.png", tmp_path / "f")

    worker = WorkerStore.from_url(url, retention_s=60, keys=keys)
    try:
        now = sweep(worker, store)
        assert (now.orphan_dirs, now.orphans_kept) == (0, 1)
        assert set(store.job_ids()) == {live, lost}  # the lost record's files are the only copy: kept
        later = sweep(worker, store, now=time.time() + 600)
        assert later.orphan_dirs == 1
        assert list(store.job_ids()) == [live]  # the live job's files stay, the old orphan's went
    finally:
        for key in worker.client.scan_iter(f"{keys.prefix}:*"):
            worker.client.delete(key)
        worker.close()


def test_a_bad_results_url_is_refused_with_one_line(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)

    def refusal(url: str) -> str | None:
        return results_refusal(Settings(redis_url="redis://x/0", results_url=url,
                                        s3_endpoint_url=s3_server.endpoint_url))

    assert refusal(f"s3://{_bucket(s3_server)}/jobs") is None
    assert "must look like s3://bucket" in (refusal("file:///tmp/x") or "")
    assert "no such bucket" in (refusal("s3://not-a-bucket-we-made/jobs") or "")
    assert isinstance(open_results(Settings(redis_url="redis://x/0")), LocalResults)


def test_abandoned_uploads_are_cleared_and_recent_ones_kept(tmp_path: Path) -> None:
    staging = tmp_path / ".staging"
    old, recent = staging / new_job_id(), staging / new_job_id()
    for folder in (old, recent):
        folder.mkdir(parents=True)
        (folder / "image").write_bytes(b"half an upload")
    then = time.time() - 7200
    os.utime(old, (then, then))
    assert clear_stale_staging(staging, older_than_s=3600) == 1
    assert not old.exists() and recent.exists()
    assert clear_stale_staging(tmp_path / "missing") == 0
