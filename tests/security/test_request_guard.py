"""Requests a web page can make a browser send: a rebound Host name and cross-site writes.

Against a real API process with no keys (every caller is then trusted, which is what a page
would abuse): a foreign Host gets 400, a write from another origin gets 403, and nothing is
written; clients that are not browsers and the API's own pages are not affected.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from api.request_guard import host_allowed, host_name

GUARD_DB = 12


@pytest.fixture(scope="module")
def api(start_api: Any) -> Iterator[Any]:
    with start_api(GUARD_DB) as api:
        yield api


def _own_origin(api: Any) -> str:
    return api.url  # http://127.0.0.1:<port>


def test_a_foreign_host_name_is_refused_on_every_route_but_the_probes(api: Any, image64: bytes,
                                                                      error_of: Any) -> None:
    rebound = api.client(None, Host="evil.example")
    before = api.state()
    message = error_of(rebound.get("/v1/jobs"), 400, "invalid_host")
    assert "evil.example" in message and "DIP_ALLOWED_HOSTS" in message
    error_of(api.submit(rebound, image64), 400, "invalid_host")
    assert api.state() == before
    assert rebound.get("/healthz").status_code == 200  # probes come with any name
    for host in ("localhost", f"127.0.0.1:{api.url.rsplit(':', 1)[1]}", "[::1]:8000"):
        assert api.client(None, Host=host).get("/v1/jobs").status_code == 200, host


@pytest.mark.parametrize("headers", [{"Origin": "http://evil.example"}, {"Origin": "null"},
                                     {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}],
                         ids=["foreign-origin", "null-origin", "cross-site", "same-site"])
def test_a_cross_site_write_is_refused_and_writes_nothing(api: Any, image64: bytes, error_of: Any,
                                                          headers: dict[str, str]) -> None:
    own = api.submit_ok(api.client(None), image64)
    page = api.client(None, **headers)
    before = api.state()
    error_of(api.submit(page, image64), 403, "cross_site")
    error_of(page.post(f"/v1/jobs/{own['id']}/cancel"), 403, "cross_site")
    error_of(page.delete(f"/v1/jobs/{own['id']}"), 403, "cross_site")
    assert api.state() == before
    assert page.get(f"/v1/jobs/{own['id']}").status_code == 200  # reads are left to CORS


def test_same_origin_pages_and_plain_clients_may_write(api: Any, image64: bytes) -> None:
    for headers in ({}, {"Origin": _own_origin(api), "Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}):
        response = api.submit(api.client(None, **headers), image64)
        assert response.status_code == 202, (headers, response.text)


@pytest.mark.parametrize(("host", "name"), [("Example.COM:8000", "example.com"), ("[::1]:80", "::1"),
                                            ("::1", "::1"), ("localhost", "localhost")])
def test_host_name(host: str, name: str) -> None:
    assert host_name(host) == name


def test_host_allowed() -> None:
    assert host_allowed("api.example.com:443", ["*.example.com"])
    assert not host_allowed("example.com.evil.net", ["*.example.com", "example.com"])
    assert host_allowed("anything:1", ["*"])
    assert not host_allowed("", ["localhost"])
