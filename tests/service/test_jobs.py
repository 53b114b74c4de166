"""Jobs through the whole service: submit, run on the real worker, follow, cancel, download.

Fixtures (``service``, ``pictures``, ``image64``) come from this folder's conftest.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np
import pytest

from tests.service.conftest import parse_sse


# Long enough that progress visibly rises between polls (every 0.05 s; progress is published at most
# every 0.1 s) however fast the engine gets: 40 iterations at 64 px came to ~0.1 s.
FAST = {"preset": "fast", "iterations": 200, "log_every": 20}


def _follow(service: Any, job_id: str) -> list[tuple[str, int | None]]:
    """Poll until the job ends; the (status, iteration) pairs seen on the way."""
    seen: list[tuple[str, int | None]] = []
    job = service.wait(job_id, lambda j: seen.append(
        (j["status"], (j["progress"] or {}).get("iteration"))) or j["status"] not in ("queued", "running"))
    assert job["status"] == "succeeded", job["error"]
    return seen


def _check_run(service: Any, job: dict[str, Any], seen: list[tuple[str, int | None]],
               *, size: tuple[int, int], iterations: int, log_every: int, pictures: Any) -> None:
    running = [iteration for status, iteration in seen if status == "running" and iteration is not None]
    assert len(set(running)) >= 2, f"never saw the iteration rise while running: {seen}"
    assert running == sorted(running)
    assert job["progress"]["iteration"] == iterations and job["progress"]["fraction"] == 1.0
    assert job["started_at"] <= job["finished_at"] and job["queue_position"] is None

    result = service.fetch(job["outputs"]["result"]).content
    assert pictures.size(result) == size
    assert service.fetch(job["outputs"]["curves"]).content.startswith(b"\x89PNG")
    assert service.fetch(job["outputs"]["best"]).content.startswith(b"\x89PNG")
    history = service.fetch(job["links"]["history"]).json()
    assert [p["iteration"] for p in history] == list(range(log_every, iterations + 1, log_every))
    assert all(p["loss"] > 0 for p in history)


def test_denoise_with_synthetic_noise_records_psnr(service: Any, image64: bytes, pictures: Any) -> None:
    submitted = service.submit_ok({"image": image64}, task="denoise", add_noise_sigma=25, snapshot_every=100, **FAST)
    assert submitted["status"] == "queued"
    assert submitted["params"]["add_noise_sigma"] == 25 and submitted["params"]["iterations"] == 200
    seen = _follow(service, submitted["id"])
    job = service.job(submitted["id"])

    _check_run(service, job, seen, size=(64, 64), iterations=200, log_every=20, pictures=pictures)
    assert job["metrics"]["psnr"] > 10 and job["metrics"]["psnr_best"] >= job["metrics"]["psnr"] - 1e-6
    assert all(p["psnr"] is not None for p in service.fetch(job["links"]["history"]).json())
    snapshots = service.fetch(job["links"]["snapshots"]).json()["items"]
    assert [s["name"] for s in snapshots] == ["snapshot_00100.png", "snapshot_00200.png"]
    assert job["outputs"]["snapshot_count"] == 2 and job["outputs"]["latest_snapshot"] == snapshots[-1]["url"]
    assert pictures.size(service.fetch(snapshots[0]["url"]).content) == (64, 64)
    assert service.fetch(job["inputs"]["image"]).content == image64


def test_superres_multiplies_the_size_and_scores_against_the_reference(service: Any, pictures: Any) -> None:
    clean = pictures.smooth(64, seed=1)
    low = pictures.png(clean[::2, ::2])
    submitted = service.submit_ok({"image": low, "reference": pictures.png(clean)}, task="superres", scale=2, **FAST)
    seen = _follow(service, submitted["id"])
    job = service.job(submitted["id"])

    _check_run(service, job, seen, size=(64, 64), iterations=200, log_every=20, pictures=pictures)
    assert job["metrics"]["psnr"] is not None and job["metrics"]["psnr_output"] is not None
    assert job["inputs"]["reference"].endswith("/files/reference.png")


def test_inpaint_with_mask_file(service: Any, pictures: Any) -> None:
    clean = pictures.smooth(64, seed=2)
    mask = np.full((64, 64), 255, np.uint8)
    mask[20:40, 24:44] = 0
    holed = clean.copy()
    holed[mask == 0] = 0
    submitted = service.submit_ok({"image": pictures.png(holed), "mask": pictures.png(mask), "reference": pictures.png(clean)},
                                  task="inpaint", **FAST)
    seen = _follow(service, submitted["id"])
    job = service.job(submitted["id"])

    _check_run(service, job, seen, size=(64, 64), iterations=200, log_every=20, pictures=pictures)
    assert job["metrics"]["psnr"] is not None
    assert service.fetch(job["inputs"]["mask"]).content == pictures.png(mask)


def test_dejpeg_of_an_uploaded_jpeg(service: Any, pictures: Any) -> None:
    import io

    from PIL import Image

    clean = pictures.smooth(64, seed=4)
    buffer = io.BytesIO()
    Image.fromarray(clean).save(buffer, format="JPEG", quality=15)
    submitted = service.submit_ok({"image": buffer.getvalue(), "reference": pictures.png(clean)}, task="dejpeg", **FAST)
    seen = _follow(service, submitted["id"])
    job = service.job(submitted["id"])

    _check_run(service, job, seen, size=(64, 64), iterations=200, log_every=20, pictures=pictures)
    assert job["outputs"]["result"].endswith("/files/result.png") and job["metrics"]["psnr_output"] is not None
    assert service.fetch(job["inputs"]["image"]).content == buffer.getvalue()


def test_deblur_with_an_uploaded_kernel(service: Any, pictures: Any) -> None:
    clean = pictures.smooth(64, seed=5)
    kernel = np.zeros((5, 5), np.uint8)
    kernel[2, :] = 255  # a horizontal motion blur
    submitted = service.submit_ok({"image": pictures.png(clean), "kernel": pictures.png(kernel)}, task="deblur", **FAST)
    seen = _follow(service, submitted["id"])
    job = service.job(submitted["id"])

    _check_run(service, job, seen, size=(64, 64), iterations=200, log_every=20, pictures=pictures)
    assert job["inputs"]["kernel"].endswith("/files/kernel.png")
    assert service.fetch(job["inputs"]["kernel"]).content == pictures.png(kernel)


def test_deblur_with_a_gaussian_made_from_a_sharp_image(service: Any, pictures: Any) -> None:
    submitted = service.submit_ok({"image": pictures.png(pictures.smooth(64, seed=6))}, task="deblur",
                                  blur_sigma=1.6, from_sharp=True, add_noise_sigma=2.55, **FAST)
    assert submitted["params"]["blur_sigma"] == 1.6 and submitted["params"]["from_sharp"] is True
    job = service.wait_finished(submitted["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["metrics"]["psnr_output"] is not None and job["outputs"]["degraded"] is not None


def test_job_without_reference_has_no_psnr(service: Any, pictures: Any) -> None:
    submitted = service.submit_ok({"image": pictures.png(pictures.smooth(64, seed=3))}, task="denoise",
                                  preset="fast", iterations=10, log_every=5)
    job = service.wait_finished(submitted["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["metrics"]["psnr"] is None and job["metrics"]["psnr_best"] is None
    assert job["metrics"]["loss"] > 0


def test_cancel_running_job_stops_it_and_the_worker_takes_the_next(service: Any, image64: bytes, pictures: Any) -> None:
    long_job = service.submit_ok({"image": image64}, task="denoise", preset="fast", iterations=4000, log_every=10)
    service.wait(long_job["id"], lambda j: j["status"] == "running" and (j["progress"] or {}).get("iteration", 0) > 5)

    refused = service.http.delete(f"/v1/jobs/{long_job['id']}")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"

    asked = time.monotonic()
    response = service.http.post(f"/v1/jobs/{long_job['id']}/cancel")
    assert response.status_code == 202, response.text
    assert response.json()["cancel_requested"] is True
    job = service.wait_finished(long_job["id"], timeout_s=5.0, every_s=0.05)
    took = time.monotonic() - asked

    assert job["status"] == "canceled", job
    assert took < 5.0
    assert job["progress"]["iteration"] < 4000
    assert pictures.size(service.fetch(job["outputs"]["result"]).content) == (64, 64)  # partial output kept
    again = service.http.post(f"/v1/jobs/{long_job['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "canceled"

    follower = service.submit_ok({"image": image64}, task="denoise", preset="fast", iterations=10, log_every=5)
    assert service.wait_finished(follower["id"])["status"] == "succeeded"


def test_second_job_waits_with_a_queue_position_then_runs(service: Any, image64: bytes) -> None:
    first = service.submit_ok({"image": image64}, task="denoise", preset="fast", iterations=100, log_every=10)
    second = service.submit_ok({"image": image64}, task="denoise", preset="fast", iterations=10, log_every=5)
    service.wait(first["id"], lambda j: j["status"] == "running")

    waiting = service.job(second["id"])
    assert waiting["status"] == "queued" and waiting["queue_position"] == 1
    assert service.job(first["id"])["queue_position"] is None

    done = service.wait_finished(second["id"])
    assert done["status"] == "succeeded"
    first_done = service.job(first["id"])
    assert first_done["status"] == "succeeded"
    assert done["started_at"] >= first_done["finished_at"]


def test_canceling_a_queued_job_means_it_never_starts(service: Any, image64: bytes) -> None:
    blocker = service.submit_ok({"image": image64}, task="denoise", preset="fast", iterations=4000, log_every=10)
    queued = service.submit_ok({"image": image64}, task="denoise", preset="fast", iterations=10)
    service.wait(blocker["id"], lambda j: j["status"] == "running")

    response = service.http.post(f"/v1/jobs/{queued['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "canceled"
    assert service.http.post(f"/v1/jobs/{blocker['id']}/cancel").status_code == 202
    service.wait_finished(blocker["id"], timeout_s=5.0)

    # The canceled job's message still reaches the worker, which must skip it: wait until its
    # log says so (the worker is free now, so this comes right after the blocker's end).
    skipped = f"job {queued['id']} not run: "
    deadline = time.monotonic() + 30
    while skipped not in (log := (service.logs / "worker.log").read_text(errors="replace")):
        assert time.monotonic() < deadline, f"the worker never took the canceled job's message:\n" \
                                            f"{service.log_tail('worker.log')}"
        time.sleep(0.05)
    assert f"{skipped}finished" in log, service.log_tail("worker.log")  # skipped as already ended
    assert f"job {queued['id']}: attempt" not in log  # and never started

    job = service.job(queued["id"])
    assert job["status"] == "canceled" and job["started_at"] is None and job["attempts"] == 0
    assert job["outputs"]["result"] is None
    statuses = [e["data"]["status"] for e in service.events(job["links"]["events"]) if e["event"] == "status"]
    assert statuses == ["queued", "canceled"]  # it was never running


def test_events_stream_in_order_to_the_terminal_status_and_resume(service: Any, image64: bytes) -> None:
    submitted = service.submit_ok({"image": image64}, task="denoise", add_noise_sigma=20, snapshot_every=100, **FAST)
    events_url = submitted["links"]["events"]
    events = service.events(events_url)

    assert [e["event"] for e in events[:2]] == ["status", "status"]
    assert [e["data"]["status"] for e in events[:2]] == ["queued", "running"]
    assert events[-1]["event"] == "status" and events[-1]["data"]["status"] == "succeeded"
    assert [e["event"] for e in events].count("status") == 3
    ids = [tuple(map(int, e["id"].split("-"))) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    progress = [e["data"]["progress"]["iteration"] for e in events if e["event"] == "progress"]
    assert len(progress) >= 3 and progress == sorted(progress) and progress[-1] == 200
    snapshots = [e["data"] for e in events if e["event"] == "snapshot"]
    assert [s["iteration"] for s in snapshots] == [100, 200]
    assert service.fetch(snapshots[0]["url"]).content.startswith(b"\x89PNG")

    # Resuming replays exactly what came after the given id.
    assert service.events(events_url, last_event_id=events[2]["id"]) == events[3:]
    # Resuming after the end says the final status again, then ends.
    tail = service.events(events_url, last_event_id=events[-1]["id"])
    assert [(e["event"], e["data"]["status"]) for e in tail] == [("status", "succeeded")]

    bad = service.http.get(events_url, headers={"Last-Event-ID": "yesterday"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_parameter"


def test_a_stream_dropped_while_the_job_runs_resumes_where_it_stopped(service: Any, image64: bytes) -> None:
    submitted = service.submit_ok({"image": image64}, task="denoise", add_noise_sigma=20, iterations=400,
                                  log_every=10, preset="fast")
    events_url = submitted["links"]["events"]
    first: list[dict[str, Any]] = []
    with service.http.stream("GET", events_url, timeout=60) as response:
        for event in parse_sse(response.iter_lines()):
            first.append(event)
            if sum(e["event"] == "progress" for e in first) >= 3:
                break  # drop the connection in the middle of the run
    assert service.job(submitted["id"])["status"] == "running", "the job must still be running"
    rest = service.events(events_url, last_event_id=first[-1]["id"])
    assert rest and rest[-1]["data"]["status"] == "succeeded"
    # Together, exactly the whole stream: nothing lost, nothing twice.
    assert first + rest == service.events(events_url)


def _kill_running_child(service: Any, job_id: str, *, attempt: int, min_iteration: int = 1) -> None:
    service.wait(job_id, lambda j: j["status"] == "running" and j["attempts"] == attempt
                 and (j["progress"] or {}).get("iteration", 0) >= min_iteration, timeout_s=60)
    children = service.worker_child_pids()
    assert len(children) == 1, children
    os.kill(children[0], signal.SIGKILL)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the worker's pool process in /proc")
def test_killed_worker_process_resumes_the_job_from_its_checkpoint(service: Any, image64: bytes) -> None:
    submitted = service.submit_ok({"image": image64}, task="denoise", preset="fast", iterations=100, log_every=5)
    _kill_running_child(service, submitted["id"], attempt=1, min_iteration=3 * service.checkpoint_every)

    resumed = service.wait(submitted["id"], lambda j: j["attempts"] == 2 and j["progress"] is not None
                           and j["progress"]["iteration"] >= 1, timeout_s=60)
    job = service.wait_finished(submitted["id"])
    assert job["status"] == "succeeded" and job["attempts"] == 2
    assert resumed["progress"]["iteration"] >= 2 * service.checkpoint_every  # continued, did not restart at 0
    history = [p["iteration"] for p in service.fetch(job["links"]["history"]).json()]
    assert history == list(range(5, 101, 5))  # no point lost or logged twice


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the worker's pool process in /proc")
def test_job_that_keeps_killing_its_worker_fails_after_the_attempt_cap(service: Any, image64: bytes) -> None:
    submitted = service.submit_ok({"image": image64}, task="denoise", preset="fast", iterations=4000, log_every=10)
    for attempt in (1, 2, 3):
        _kill_running_child(service, submitted["id"], attempt=attempt)
    job = service.wait_finished(submitted["id"], timeout_s=60)

    assert job["status"] == "failed", job
    assert job["error"]["code"] == "worker_lost" and "3 times" in job["error"]["message"]
    follower = service.submit_ok({"image": image64}, task="denoise", preset="fast", iterations=10)
    assert service.wait_finished(follower["id"])["status"] == "succeeded"
