"""The HTTP contract around jobs: refusals, idempotency, files, deletion, listing, health.

Fixtures (``service``, ``idle_service``, ``pictures``, ``image64``) come from this folder's conftest.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.store import Keys

MAX_UPLOAD_BYTES = 1_000_000  # as the conftest configures the service
MAX_ITERATIONS = 5000


def _state(service: Any) -> tuple[set[str], list[str]]:
    """Every Redis key except the broker's and workers' own, and every path on the results volume."""
    keys = {key for key in service.redis.scan_iter("dip:*") if key != "dip:workers"}
    paths = sorted(str(p.relative_to(service.results_dir)) for p in Path(service.results_dir).rglob("*"))
    return keys, [p for p in paths if p != ".staging"]


def _error(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    return error["message"]


def _bad_inputs(pictures: Any) -> dict[str, tuple[dict[str, bytes], dict[str, Any], int, str, str]]:
    image = pictures.png(pictures.smooth(64))
    truncated = image[: len(image) // 2]
    small_mask = pictures.png(np.full((32, 32), 255, np.uint8))
    fast = {"iterations": 10}
    return {  # name: (files, params, status, code, a word the message must contain)
        "not an image": ({"image": b"this is not an image at all"}, {"task": "denoise"}, 422, "invalid_image", "image"),
        "empty file": ({"image": b""}, {"task": "denoise"}, 422, "invalid_image", "empty"),
        "truncated png": ({"image": truncated}, {"task": "denoise"}, 422, "invalid_image", "truncated"),
        "too small": ({"image": pictures.png(pictures.smooth(8))}, {"task": "denoise"}, 422, "image_too_small", "8x8"),
        "mask of the wrong size": ({"image": image, "mask": small_mask}, {"task": "inpaint", **fast}, 422,
                                   "mask_size_mismatch", "32x32"),
        "mask for denoise": ({"image": image, "mask": pictures.png(np.full((64, 64), 255, np.uint8))},
                             {"task": "denoise"}, 422, "mask_not_allowed", "mask"),
        "inpaint without mask": ({"image": image}, {"task": "inpaint"}, 422, "mask_required", "mask"),
        "corrupt mask": ({"image": image, "mask": b"GIF89a nonsense"}, {"task": "inpaint"}, 422, "invalid_image", "mask"),
        "scale 3": ({"image": image}, {"task": "superres", "scale": 3}, 422, "invalid_parameter", "scale"),
        "iterations 0": ({"image": image}, {"task": "denoise", "iterations": 0}, 422, "invalid_parameter", "iterations"),
        "iterations over the cap": ({"image": image}, {"task": "denoise", "iterations": MAX_ITERATIONS + 1}, 422,
                                    "invalid_parameter", str(MAX_ITERATIONS)),
        "unknown field": ({"image": image}, {"task": "denoise", "colour": "blue"}, 422, "invalid_parameter", "colour"),
        "unknown task": ({"image": image}, {"task": "colourise"}, 422, "invalid_parameter", "task"),
        "no task": ({"image": image}, {}, 422, "invalid_parameter", "task"),
        "no image": ({"reference": image}, {"task": "denoise"}, 422, "invalid_parameter", "image"),
        "option of another task": ({"image": image}, {"task": "denoise", "drop_fraction": 0.5}, 422,
                                   "invalid_parameter", "drop_fraction"),
        "not a number": ({"image": image}, {"task": "denoise", "add_noise_sigma": "loud"}, 422,
                         "invalid_parameter", "add_noise_sigma"),
        "nan": ({"image": image}, {"task": "denoise", "add_noise_sigma": "nan"}, 422,
                "invalid_parameter", "add_noise_sigma"),
        "too large": ({"image": b"\x89PNG" + bytes(MAX_UPLOAD_BYTES)}, {"task": "denoise"}, 413,
                      "upload_too_large", str(MAX_UPLOAD_BYTES)),
        "deblur without kernel": ({"image": image}, {"task": "deblur"}, 422, "kernel_required", "blur_sigma"),
        "kernel larger than the image": ({"image": image, "kernel": pictures.png(np.full((65, 65), 255, np.uint8))},
                                         {"task": "deblur"}, 422, "kernel_too_large", "65x65"),
        "colour kernel": ({"image": image, "kernel": pictures.png(pictures.smooth(5))}, {"task": "deblur"}, 422,
                          "invalid_kernel", "2-D"),
        "black kernel": ({"image": image, "kernel": pictures.png(np.zeros((5, 5), np.uint8))}, {"task": "deblur"},
                         422, "invalid_kernel", "black"),
        "kernel for denoise": ({"image": image, "kernel": pictures.png(np.full((3, 3), 255, np.uint8))},
                               {"task": "denoise"}, 422, "kernel_not_allowed", "deblur"),
        "kernel and blur_sigma": ({"image": image, "kernel": pictures.png(np.full((3, 3), 255, np.uint8))},
                                  {"task": "deblur", "blur_sigma": 1.5}, 422, "invalid_parameter", "both"),
        "jpeg quality 0": ({"image": image}, {"task": "dejpeg", "jpeg_quality": 0}, 422, "invalid_parameter",
                           "jpeg_quality"),
        "negative noise level": ({"image": image}, {"task": "denoise", "noise_sigma": -1}, 422, "invalid_parameter",
                                 "noise_sigma"),
    }


@pytest.mark.parametrize("case", [
    "not an image", "empty file", "truncated png", "too small", "mask of the wrong size", "mask for denoise",
    "inpaint without mask", "corrupt mask", "scale 3", "iterations 0", "iterations over the cap",
    "unknown field", "unknown task", "no task", "no image", "option of another task", "not a number", "nan",
    "too large", "deblur without kernel", "kernel larger than the image", "colour kernel", "black kernel",
    "kernel for denoise", "kernel and blur_sigma", "jpeg quality 0",
])
def test_bad_input_is_refused_and_leaves_nothing_behind(idle_service: Any, pictures: Any, case: str) -> None:
    files, params, status, code, word = _bad_inputs(pictures)[case]
    before = _state(idle_service)
    message = _error(idle_service.submit(files, **params), status, code)
    assert word in message
    assert _state(idle_service) == before


def _raw_post(service: Any, body: bytes, content_type: str, **headers: str) -> Any:
    return service.http.post("/v1/jobs", content=body, headers={"content-type": content_type, **headers})


def test_malformed_requests_are_refused_and_leave_nothing_behind(idle_service: Any, image64: bytes) -> None:
    service = idle_service
    before = _state(service)
    _error(_raw_post(service, b'{"task": "denoise"}', "application/json"), 415, "unsupported_media_type")
    _error(_raw_post(service, b"no parts here", "multipart/form-data; boundary=xyz"), 400, "invalid_request")
    unfinished = b'--xyz\r\nContent-Disposition: form-data; name="task"\r\n\r\ndenoise\r\n'
    _error(_raw_post(service, unfinished, "multipart/form-data; boundary=xyz"), 400, "invalid_request")
    latin1 = (b'--xyz\r\nContent-Disposition: form-data; name="task"\r\n\r\nd\xe9noise\r\n--xyz--\r\n')
    _error(_raw_post(service, latin1, "multipart/form-data; boundary=xyz"), 400, "invalid_encoding")
    twice = service.http.post("/v1/jobs", files=[("image", ("a.png", image64)), ("image", ("b.png", image64))],
                              data={"task": "denoise"})
    _error(twice, 422, "invalid_parameter")
    bad_key = service.submit({"image": image64}, headers={"Idempotency-Key": "has spaces in it"}, task="denoise")
    _error(bad_key, 400, "invalid_idempotency_key")
    assert _state(service) == before


def test_routing_errors_use_the_error_shape(service: Any) -> None:
    _error(service.http.get("/v1/nothing-here"), 404, "not_found")
    _error(service.http.put("/v1/jobs"), 405, "method_not_allowed")
    _error(service.http.get("/v1/jobs", params={"limit": 0}), 422, "invalid_parameter")
    _error(service.http.get("/v1/jobs", params={"status": "sleeping"}), 422, "invalid_parameter")
    _error(service.http.get("/v1/jobs", params={"cursor": "not-a-cursor"}), 422, "invalid_parameter")


@pytest.mark.parametrize("job_id", ["A" * 22, "nope", "A" * 23, "%2E%2E", "a;b" * 8])
def test_unknown_or_malformed_job_id_is_404(service: Any, job_id: str) -> None:
    for method, path in (("GET", ""), ("GET", "/history"), ("GET", "/events"), ("GET", "/snapshots"),
                         ("POST", "/cancel"), ("DELETE", ""), ("GET", "/files/result.png")):
        message = _error(service.http.request(method, f"/v1/jobs/{job_id}{path}"), 404, "not_found")
        assert "no job" in message


@pytest.fixture(scope="module")
def finished_job(service: Any, image64: bytes) -> dict[str, Any]:
    submitted = service.submit_ok({"image": image64}, task="denoise", add_noise_sigma=10, iterations=20,
                                  log_every=5, snapshot_every=10)
    job = service.wait_finished(submitted["id"])
    assert job["status"] == "succeeded", job["error"]
    return job


def test_idempotency_key_retry_returns_the_same_job(service: Any, image64: bytes) -> None:
    key = f"retry-{uuid.uuid4()}"
    first = service.submit({"image": image64}, headers={"Idempotency-Key": key}, task="denoise", iterations=10)
    second = service.submit({"image": image64}, headers={"Idempotency-Key": key}, task="denoise", iterations=10)
    other = service.submit({"image": image64}, headers={"Idempotency-Key": key + "-other"}, task="denoise",
                           iterations=10)
    assert first.status_code == second.status_code == other.status_code == 202
    assert first.json()["id"] == second.json()["id"] != other.json()["id"]
    assert first.headers["location"] == second.headers["location"]
    job_dirs = {p.name for p in Path(service.results_dir).iterdir() if p.name != ".staging"}
    assert {first.json()["id"], other.json()["id"]} <= job_dirs
    for job in (first.json(), other.json()):
        service.wait_finished(job["id"])


def test_an_idempotency_key_reused_for_another_request_is_422(service: Any, image64: bytes,
                                                               pictures: Any) -> None:
    key = {"Idempotency-Key": f"reuse-{uuid.uuid4()}"}
    first = service.submit({"image": image64}, headers=key, task="denoise", iterations=10)
    assert first.status_code == 202
    dirs_before = sorted(p.name for p in Path(service.results_dir).iterdir())
    jobs_before = service.redis.zcard(Keys().all_jobs)
    other_image = pictures.png(pictures.smooth(64, seed=3))
    for files, params in (({"image": other_image}, {"iterations": 10}), ({"image": image64}, {"iterations": 11})):
        response = service.submit(files, headers=key, task="denoise", **params)
        _error(response, 422, "idempotency_mismatch")
        assert first.json()["id"] in response.json()["error"]["message"]
    assert sorted(p.name for p in Path(service.results_dir).iterdir()) == dirs_before
    assert service.redis.zcard(Keys().all_jobs) == jobs_before  # no job was created
    service.wait_finished(first.json()["id"])


def test_files_have_etags_and_answer_304(service: Any, finished_job: dict[str, Any]) -> None:
    url = finished_job["outputs"]["result"]
    response = service.fetch(url)
    etag = response.headers["etag"]
    assert response.headers["content-type"] == "image/png"
    assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+"', etag)

    unchanged = service.http.get(url, headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.content == b"" and unchanged.headers["etag"] == etag
    assert service.http.get(url, headers={"If-None-Match": f'W/{etag}, "other"'}).status_code == 304
    assert service.http.get(url, headers={"If-None-Match": '"stale"'}).status_code == 200
    assert service.fetch(finished_job["outputs"]["metrics"]).json()["summary"]["iterations"] == 20
    assert service.fetch(finished_job["outputs"]["degraded"]).content.startswith(b"\x89PNG")


@pytest.mark.parametrize("name", ["../input.png", "..%2Finput.png", "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
                                  "out%2Fdip_denoised.png", "checkpoint.pt", "dip_denoised.png", "mask.png",
                                  "snapshot_99999.png", "input.png%00.txt", ".", "result.PNG"])
def test_file_names_outside_the_job_listing_are_404(service: Any, finished_job: dict[str, Any], name: str) -> None:
    response = service.http.get(f"{finished_job['links']['self']}/files/{name}")
    assert response.status_code == 404
    if response.headers["content-type"].startswith("application/json"):
        assert response.json()["error"]["code"] == "not_found"


def test_snapshots_are_listed_a_page_at_a_time_oldest_first(service: Any, image64: bytes, pictures: Any) -> None:
    submitted = service.submit_ok({"image": image64}, task="denoise", iterations=35, log_every=5, snapshot_every=5)
    job = service.wait_finished(submitted["id"])
    assert job["status"] == "succeeded", job["error"]
    # The job carries the count and the latest; the list has a route of its own.
    assert "snapshots" not in job["outputs"]
    assert job["outputs"]["snapshot_count"] == 7
    assert job["outputs"]["latest_snapshot"] == f"{job['links']['self']}/files/snapshot_00035.png"
    assert job["links"]["snapshots"] == f"{job['links']['self']}/snapshots"

    pages, cursor = [], None
    while True:
        response = service.http.get(job["links"]["snapshots"], params={"limit": 3, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["total"] == 7 and len(body["items"]) <= 3
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert [len(page) for page in pages] == [3, 3, 1]
    items = [item for page in pages for item in page]
    assert [item["iteration"] for item in items] == [5, 10, 15, 20, 25, 30, 35]
    assert [item["name"] for item in items] == [f"snapshot_{i:05d}.png" for i in range(5, 36, 5)]
    assert items[-1]["url"] == job["outputs"]["latest_snapshot"]
    assert pictures.size(service.fetch(items[0]["url"]).content) == (64, 64)  # the files route serves each
    whole = service.http.get(job["links"]["snapshots"], params={"limit": 100}).json()
    assert whole["items"] == items and whole["next_cursor"] is None

    for params in ({"limit": 0}, {"limit": 101}, {"cursor": "abc"}, {"cursor": "-1"}, {"cursor": "1" * 40}):
        _error(service.http.get(job["links"]["snapshots"], params=params), 422, "invalid_parameter")


def test_a_job_without_snapshots_lists_none(service: Any, finished_job: dict[str, Any], image64: bytes) -> None:
    submitted = service.submit_ok({"image": image64}, task="denoise", iterations=10, log_every=5, snapshot_every=1000)
    job = service.wait_finished(submitted["id"])
    assert job["outputs"]["snapshot_count"] == 0 and job["outputs"]["latest_snapshot"] is None
    assert service.fetch(job["links"]["snapshots"]).json() == {"items": [], "total": 0, "next_cursor": None}


def test_history_as_json_and_csv(service: Any, finished_job: dict[str, Any]) -> None:
    points = service.fetch(finished_job["links"]["history"]).json()
    assert [p["iteration"] for p in points] == [5, 10, 15, 20]
    # Every field of the engine's log record, the ES-WMV variance included (null until its window fills).
    assert set(points[0]) == {"iteration", "loss", "psnr", "psnr_avg", "psnr_degraded", "ssim", "elapsed_s",
                              "variance"}
    csv = service.http.get(finished_job["links"]["history"], params={"format": "csv"})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().splitlines()
    assert lines[0].split(",")[:2] == ["iteration", "loss"] and "variance" in lines[0].split(",")
    assert [line.split(",")[0] for line in lines[1:]] == ["5", "10", "15", "20"]
    _error(service.http.get(finished_job["links"]["history"], params={"format": "xml"}), 422, "invalid_parameter")


def test_cancel_of_a_finished_job_is_a_conflict(service: Any, finished_job: dict[str, Any]) -> None:
    _error(service.http.post(finished_job["links"]["cancel"]), 409, "conflict")
    assert service.job(finished_job["id"])["status"] == "succeeded"


def test_delete_removes_record_and_files(service: Any, image64: bytes) -> None:
    submitted = service.submit_ok({"image": image64}, task="denoise", iterations=10, log_every=5)
    job = service.wait_finished(submitted["id"])
    job_dir = Path(service.results_dir) / job["id"]
    assert (job_dir / "out").is_dir()
    assert list(service.redis.scan_iter(f"dip:job:{job['id']}*"))

    response = service.http.delete(job["links"]["self"])
    assert response.status_code == 204
    _error(service.http.get(job["links"]["self"]), 404, "not_found")
    _error(service.http.get(job["outputs"]["result"]), 404, "not_found")
    _error(service.http.delete(job["links"]["self"]), 404, "not_found")
    assert not job_dir.exists()
    assert not list(service.redis.scan_iter(f"dip:job:{job['id']}*"))
    assert all(service.redis.zscore(index, job["id"]) is None for index in service.redis.scan_iter("dip:jobs*"))


def test_list_newest_first_with_status_filter_and_cursor(service: Any, image64: bytes) -> None:
    # A long job holds the worker, so the three after it stay queued until canceled.
    blocker = service.submit_ok({"image": image64}, task="denoise", iterations=4000)
    ids = [service.submit_ok({"image": image64}, task="denoise", iterations=10)["id"] for _ in range(3)]
    for job_id in [*ids, blocker["id"]]:
        assert service.http.post(f"/v1/jobs/{job_id}/cancel").status_code in (200, 202)
    assert service.wait_finished(blocker["id"], timeout_s=10)["status"] == "canceled"

    pages, cursor = [], None
    while True:
        params = {"status": "canceled", "limit": 2, **({"cursor": cursor} if cursor else {})}
        body = service.http.get("/v1/jobs", params=params).json()
        pages.append([job["id"] for job in body["items"]])
        assert all(job["status"] == "canceled" for job in body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    listed = [job_id for page in pages for job_id in page]
    assert all(len(page) <= 2 for page in pages) and len(listed) == len(set(listed))
    assert listed[:3] == ids[::-1]  # the newest canceled jobs, newest first

    everything = service.http.get("/v1/jobs", params={"limit": 100}).json()["items"]
    created = [job["created_at"] for job in everything]
    assert created == sorted(created, reverse=True)
    assert service.http.get("/v1/jobs", params={"status": "running"}).json()["items"] == []


def test_health_readiness_and_metrics(service: Any, finished_job: dict[str, Any]) -> None:
    assert service.http.get("/healthz").json() == {"status": "ok"}
    ready = service.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["workers"] == 1

    metrics = service.http.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    succeeded = re.search(r'^dip_jobs\{status="succeeded"\} (\d+)', text, re.M)
    assert succeeded and int(succeeded.group(1)) >= 1
    for line in ("dip_queue_depth ", "dip_iterations_per_second ", "dip_workers 1.0",
                 'dip_job_duration_seconds_bucket{le="+Inf",status="succeeded"}',
                 'dip_job_duration_seconds_count{status="succeeded"}'):
        assert line in text, line


def test_openapi_documents_the_form_and_errors(service: Any) -> None:
    spec = service.http.get("/openapi.json").json()
    submit = spec["paths"]["/v1/jobs"]["post"]
    form = submit["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"image", "mask", "reference", "task", "scale", "iterations", "early_stop"} <= set(form["properties"])
    assert form["required"] == ["task"] and form["properties"]["scale"]["enum"] == [2, 4, 8]
    # The image is uploaded, or named by URL for the server to fetch.
    assert form["anyOf"] == [{"required": ["image"]}, {"required": ["image_url"]}]
    assert {"image_url", "mask_url", "kernel_url", "reference_url"} <= set(form["properties"])
    assert {"202", "413", "415", "422"} <= set(submit["responses"])
    assert service.http.get("/docs").status_code == 200
