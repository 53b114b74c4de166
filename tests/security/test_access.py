"""API keys: who may call, whose jobs each key sees, and that keys never reach storage.

Alice, Bob (configured by digest) and an admin; one API process on a
Redis database of its own (see conftest).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

ACCESS_DB = 6
JOB_ROUTES = [("GET", ""), ("GET", "/history"), ("GET", "/events"), ("GET", "/snapshots"),
              ("GET", "/files/input.png"), ("POST", "/cancel"), ("DELETE", "")]


@pytest.fixture(scope="module")
def api(start_api: Any, key_settings: dict[str, str]) -> Iterator[Any]:
    with start_api(ACCESS_DB, **key_settings) as api:
        yield api


@pytest.fixture(scope="module")
def alice_job(api: Any, image64: bytes) -> dict[str, Any]:
    return api.submit_ok(api.client("alice"), image64)


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Basic YWxpY2U6c2VjcmV0",
                                           "Bearer not-a-configured-key-at-all", "bearer", "Token abc",
                                           "Bearer alice-key-5f0c1d2e3b4a6978879"])  # one character short
def test_requests_without_a_valid_key_are_401(api: Any, alice_job: dict[str, Any], image64: bytes,
                                              error_of: Any, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    http = api.client(**headers)
    before = api.state()
    job = f"/v1/jobs/{alice_job['id']}"
    responses = [http.get("/v1/jobs"), api.submit(http, image64), http.get("/metrics"),
                 *(http.request(method, job + path) for method, path in JOB_ROUTES)]
    for response in responses:
        error_of(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert api.state() == before  # the refused submission wrote nothing; the job is still there
    assert api.client("alice").get(job).json()["status"] == "queued"


def test_a_key_in_a_foreign_encoding_is_401(api: Any, error_of: Any) -> None:
    # Latin-1 bytes in the header (httpx would refuse to send them).
    host = api.url.removeprefix("http://")
    response = api.raw(b"GET /v1/jobs HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
                       b"Authorization: Bearer cl\xe9-\xff\xfe-0123456789abcdef\r\nConnection: close\r\n\r\n")
    error_of(response, 401, "unauthorized")


def test_health_and_docs_stay_open(api: Any) -> None:
    http = api.client()
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").status_code == 503  # open, and honest: no worker runs here
    assert http.get("/openapi.json").status_code == 200
    assert http.get("/docs").status_code == 200


def test_another_keys_job_is_404_like_a_missing_one(api: Any, alice_job: dict[str, Any], error_of: Any) -> None:
    bob = api.client("bob")
    missing = "A" * 22
    for method, path in JOB_ROUTES:
        theirs = error_of(bob.request(method, f"/v1/jobs/{alice_job['id']}{path}"), 404, "not_found")
        nobodys = error_of(bob.request(method, f"/v1/jobs/{missing}{path}"), 404, "not_found")
        assert theirs.replace(alice_job["id"], missing) == nobodys  # same answer: nothing confirmed
    alice = api.client("alice")
    job = alice.get(f"/v1/jobs/{alice_job['id']}").json()
    assert job["status"] == "queued" and not job["cancel_requested"]  # Bob's cancel and delete did nothing
    assert alice.get(job["inputs"]["image"]).content.startswith(b"\x89PNG")


def test_a_jobs_snapshots_are_listed_to_its_owner_and_admins_only(api: Any, alice_job: dict[str, Any],
                                                                  error_of: Any) -> None:
    url = f"/v1/jobs/{alice_job['id']}/snapshots"
    for who in ("alice", "admin"):
        response = api.client(who).get(url)
        assert response.status_code == 200, response.text
        assert response.json() == {"items": [], "total": 0, "next_cursor": None}  # queued: none yet
    assert "no job" in error_of(api.client("bob").get(url), 404, "not_found")
    error_of(api.client().get(url), 401, "unauthorized")


def test_listing_shows_only_your_own_jobs_and_admin_sees_all(api: Any, image64: bytes) -> None:
    alice, bob, admin = api.client("alice"), api.client("bob"), api.client("admin")
    alices = {api.submit_ok(alice, image64)["id"] for _ in range(3)}
    bobs = {api.submit_ok(bob, image64)["id"] for _ in range(2)}
    canceled = sorted(alices)[0]
    assert alice.post(f"/v1/jobs/{canceled}/cancel").status_code == 200

    def listed(http: Any, **params: Any) -> list[str]:
        ids, cursor = [], None
        while True:
            page = http.get("/v1/jobs", params={"limit": 2, **params, **({"cursor": cursor} if cursor else {})})
            assert page.status_code == 200, page.text
            ids += [job["id"] for job in page.json()["items"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                return ids

    alice_sees, bob_sees, admin_sees = listed(alice), listed(bob), listed(admin)
    assert alices <= set(alice_sees) and not bobs & set(alice_sees)
    assert set(bob_sees) == bobs
    assert alices | bobs <= set(admin_sees)
    assert len(alice_sees) == len(set(alice_sees))  # no page repeats a job
    assert listed(alice, status="canceled") == [canceled]
    assert canceled not in listed(alice, status="queued") and bobs.isdisjoint(listed(alice, status="queued"))
    assert set(listed(bob, status="queued")) == bobs
    assert canceled in listed(admin, status="canceled")


def test_admin_reads_and_manages_any_job_and_metrics(api: Any, image64: bytes, error_of: Any) -> None:
    alice, admin = api.client("alice"), api.client("admin")
    job = api.submit_ok(alice, image64)
    assert admin.get(f"/v1/jobs/{job['id']}").json()["id"] == job["id"]
    assert admin.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"
    assert admin.delete(f"/v1/jobs/{job['id']}").status_code == 204
    error_of(alice.get(f"/v1/jobs/{job['id']}"), 404, "not_found")
    error_of(alice.get("/metrics"), 403, "forbidden")
    metrics = admin.get("/metrics")
    assert metrics.status_code == 200 and "dip_queue_depth" in metrics.text


def test_deleted_jobs_leave_the_owner_index(api: Any, image64: bytes) -> None:
    bob = api.client("bob")
    job = api.submit_ok(bob, image64)
    assert bob.delete(f"/v1/jobs/{job['id']}").status_code == 204
    owner_indexes = list(api.redis.scan_iter("dip:owner:*"))
    assert owner_indexes and all(api.redis.zscore(key, job["id"]) is None for key in owner_indexes)
    assert job["id"] not in [j["id"] for j in bob.get("/v1/jobs").json()["items"]]


def test_idempotency_keys_are_per_key(api: Any, image64: bytes) -> None:
    key = {"Idempotency-Key": f"retry-{uuid.uuid4()}"}
    alice, bob = api.client("alice"), api.client("bob")
    first = api.submit(alice, image64, headers=key).json()["id"]
    again = api.submit(alice, image64, headers=key).json()["id"]
    bobs = api.submit(bob, image64, headers=key).json()["id"]
    assert first == again != bobs
    assert bob.get(f"/v1/jobs/{first}").status_code == 404


def test_keys_never_reach_storage_only_fingerprints(api: Any, alice_job: dict[str, Any]) -> None:
    owner = api.redis.hget(f"dip:job:{alice_job['id']}", "owner")
    assert re.fullmatch(r"[0-9a-f]{32}", owner)
    secrets = list(api.keys.values())
    for key in api.redis.scan_iter("*"):
        kind = api.redis.type(key)
        if kind == "hash":
            values = [*api.redis.hgetall(key).values()]
        elif kind == "string":
            values = [api.redis.get(key)]
        elif kind == "list":
            values = api.redis.lrange(key, 0, -1)
        elif kind == "zset":
            values = api.redis.zrange(key, 0, -1)
        else:
            values = [str(entry) for entry in api.redis.xrange(key)] if kind == "stream" else []
        for text in [key, *values]:
            assert not any(secret in text for secret in secrets), key
    log = (api.logs / "api.log").read_text(errors="replace")
    assert not any(secret in log for secret in secrets)


def test_job_ids_are_random_and_long(api: Any, image64: bytes) -> None:
    alice = api.client("alice")
    ids = [api.submit_ok(alice, image64)["id"] for _ in range(5)]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", job_id) for job_id in ids)
    assert len(set(ids)) == 5 and len({job_id[:6] for job_id in ids}) == 5  # no shared prefix or counter
