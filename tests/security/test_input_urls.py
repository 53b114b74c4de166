"""Inputs given by URL (``image_url``, ``mask_url``...): fetched like an upload, refused like one.

A real API process fetches from a real HTTP server on loopback (a thread here) and
from the session's S3-compatible server (moto). Every refusal is a 4xx JSON error that
leaves nothing behind: no Redis key, no file (the staging directory included).

Loopback is private, so the API that fetches from the test server allows private
addresses and http; a second API with the defaults shows what is refused. What needs
a *public* origin (a redirect from one to a private address, the address pinning) is
tested in-process with a host table and the loopback origin taken for a public one.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

import core.addresses
from api.errors import ApiError
from api.fetch import fetch_inputs
from core.addresses import AddressRefused, HostUnresolved, allowed_addresses, refused_reason
from core.config import Settings
from core.process import free_port
from dip_client._core import Calls

INPUT_URLS_DB = 3
DEFAULTS_DB = 4
MAX_UPLOAD_BYTES = 1_000_000  # the conftest's DIP_MAX_UPLOAD_BYTES
FETCH_TIMEOUT_S = 1.5
ALLOWED_BUCKET = "input-urls-allowed"
OTHER_BUCKET = "input-urls-other"
MISSING_BUCKET = "input-urls-never-made"  # allowed, but there is no such bucket
REPO_ROOT = Path(__file__).resolve().parents[2]


# -- a real HTTP origin ------------------------------------------------------------------------------


class Origin:
    """An HTTP/1.0 server on 127.0.0.1 in a thread, serving ``routes`` (path -> bytes or a handler)."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[BaseHTTPRequestHandler], None] | bytes] = {}
        self.seen: list[tuple[str, str]] = []  # (path, Host header) of each request
        self.release = threading.Event()  # ends the stalling handlers
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                origin.seen.append((self.path, self.headers.get("host", "")))
                route = origin.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                elif isinstance(route, bytes):
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(route)))
                    self.end_headers()
                    self.wfile.write(route)
                else:
                    try:
                        route(self)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the API hung up: what the test wanted

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def __enter__(self) -> Origin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _png(size: int = 64, colour: tuple[int, int, int] = (40, 120, 200), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    image = Image.new(mode, (size, size), colour if mode == "RGB" else 255)
    if mode == "RGB":
        image.putpixel((3, 5), (250, 10, 10))  # not flat: a real picture
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb() -> bytes:
    # 10000 x 10000 pixels in about 12 kB: decoding it would take 100 MB and more.
    buffer = io.BytesIO()
    Image.new("1", (10000, 10000)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _redirect(location: str, status: int = 302) -> Callable[[BaseHTTPRequestHandler], None]:
    def handle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return handle


def _endless(handler: BaseHTTPRequestHandler) -> None:
    """Bytes with no Content-Length, until the client hangs up (or far past any cap)."""
    handler.send_response(200)
    handler.end_headers()
    chunk = bytes(64 * 1024)
    for _ in range(0, 1000 * MAX_UPLOAD_BYTES, len(chunk)):
        handler.wfile.write(chunk)


def _trickle(origin: Origin) -> Callable[[BaseHTTPRequestHandler], None]:
    """A PNG signature, then one byte every 50 ms: each read is quick, the whole never ends."""
    def handle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.end_headers()
        handler.wfile.write(b"\x89PNG\r\n\x1a\n")
        while not origin.release.wait(0.05):
            handler.wfile.write(b"\0")
            handler.wfile.flush()
    return handle


def _silent(origin: Origin) -> Callable[[BaseHTTPRequestHandler], None]:
    """Reads the request and never answers."""
    def handle(handler: BaseHTTPRequestHandler) -> None:
        origin.release.wait(30)
    return handle


def _gzipped(handler: BaseHTTPRequestHandler) -> None:
    import gzip

    body = gzip.compress(_png())
    handler.send_response(200)
    handler.send_header("Content-Encoding", "gzip")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


IMAGE = _png(64)
MASK = _png(64, mode="L")


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with Origin() as origin:
        origin.routes.update({
            "/image.png": IMAGE, "/mask.png": MASK, "/garbage": b"this is not an image at all",
            "/bomb.png": _bomb(), "/empty": b"",
            "/big": bytes(MAX_UPLOAD_BYTES + 1), "/endless": _endless,
            "/trickle": _trickle(origin), "/silent": _silent(origin), "/gzip": _gzipped,
            "/redirect": _redirect("/image.png"), "/redirect-twice": _redirect("/redirect", 307),
            "/loop": _redirect("/loop"), "/redirect-ftp": _redirect("ftp://127.0.0.1/image.png"),
            "/to-metadata": _redirect("http://169.254.169.254/latest/meta-data/"),
            "/to-private": _redirect("http://10.1.2.3/image.png"),
            "/to-ipv6-loopback": _redirect("http://[::1]:9/image.png"),
            "/to-mapped-loopback": _redirect("http://[::ffff:127.0.0.1]:9/image.png"),
        })
        yield origin


@pytest.fixture(scope="module")
def buckets(s3_server: Any) -> dict[str, bytes]:
    """Objects in the allowed bucket and in another one (key -> bytes)."""
    client = s3_server.client()
    objects = {"in/image.png": IMAGE, "in/garbage.png": b"not an image", "in/big.png": bytes(MAX_UPLOAD_BYTES + 1)}
    for bucket in (ALLOWED_BUCKET, OTHER_BUCKET):
        client.create_bucket(Bucket=bucket)
        for key, data in objects.items():
            client.put_object(Bucket=bucket, Key=key, Body=data)
    return objects


@pytest.fixture(scope="module")
def api(start_api: Any, s3_server: Any, buckets: dict[str, bytes]) -> Iterator[Any]:
    """An API that fetches http:// URLs on private addresses (the test origin is on loopback)
    and s3:// ones from the allowed bucket; no worker: jobs stay queued."""
    with pytest.MonkeyPatch.context() as patch:  # boto3 reads them from the environment
        for name, value in s3_server.env.items():
            patch.setenv(name, value)
        with start_api(INPUT_URLS_DB, input_allow_http="true", input_allow_private="true",
                       input_fetch_timeout_s=str(FETCH_TIMEOUT_S),
                       input_buckets=f"{ALLOWED_BUCKET},{MISSING_BUCKET}") as api:
            yield api


@pytest.fixture(scope="module")
def strict_api(start_api: Any) -> Iterator[Any]:
    """An API with the defaults: https:// only, no private addresses, no s3:// inputs."""
    with start_api(DEFAULTS_DB) as api:
        yield api


def _submit(api: Any, *, files: dict[str, bytes] | None = None, **fields: Any) -> httpx.Response:
    fields = {"task": "denoise", "iterations": 10, **fields}
    parts = {name: (f"{name}.png", data, "image/png") for name, data in (files or {}).items()}
    # Text fields as parts too: multipart even when no file is uploaded.
    parts.update({name: (None, str(value).encode(), None) for name, value in fields.items()})
    return api.client().post("/v1/jobs", files=parts)


def _refused(api: Any, status: int, code: str, error_of: Any, **fields: Any) -> str:
    """Submit; check the error and that nothing was kept (Redis keys, files, staging leftovers)."""
    before = api.state()
    message = error_of(_submit(api, **fields), status, code)
    assert api.state() == before
    assert not list((api.results_dir / ".staging").glob("*"))
    return message


def _stored(api: Any, job: dict[str, Any], name: str) -> bytes:
    response = api.client().get(f"/v1/jobs/{job['id']}/files/{name}")
    assert response.status_code == 200, response.text
    return response.content


# -- accepted ----------------------------------------------------------------------------------------


def test_an_image_url_is_fetched_and_stored_as_an_upload_would_be(api: Any, origin: Origin) -> None:
    response = _submit(api, image_url=origin.url("/image.png"))
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert _stored(api, job, "input.png") == IMAGE
    assert "image_url" not in job["params"]  # taken out of the form: not an engine parameter


def test_a_mask_url_beside_an_uploaded_image(api: Any, origin: Origin) -> None:
    response = _submit(api, files={"image": IMAGE}, task="inpaint", mask_url=origin.url("/mask.png"))
    assert response.status_code == 202, response.text
    assert _stored(api, response.json(), "mask.png") == MASK


@pytest.mark.parametrize("path", ["/redirect", "/redirect-twice"])
def test_redirects_are_followed_and_checked(api: Any, origin: Origin, path: str) -> None:
    response = _submit(api, image_url=origin.url(path))
    assert response.status_code == 202, response.text
    assert _stored(api, response.json(), "input.png") == IMAGE


def test_an_s3_url_in_an_allowed_bucket(api: Any, buckets: dict[str, bytes]) -> None:
    response = _submit(api, image_url=f"s3://{ALLOWED_BUCKET}/in/image.png")
    assert response.status_code == 202, response.text
    assert _stored(api, response.json(), "input.png") == IMAGE


def test_the_python_client_and_dip_submit_send_a_url_as_image_url(api: Any, origin: Origin) -> None:
    from dip_client import Client

    with Client(api.url) as client:
        job = client.submit(origin.url("/image.png"), task="denoise", iterations=10)
    assert _stored(api, {"id": job.id}, "input.png") == IMAGE

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("DIP_API_KEY", None)
    done = subprocess.run([sys.executable, "-m", "stack.cli", "submit", origin.url("/image.png"), "--task",
                           "denoise", "--iterations", "10", "--json", "--url", api.url],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert _stored(api, json.loads(done.stdout), "input.png") == IMAGE


def test_the_client_builds_a_multipart_form_with_the_url_fields() -> None:
    call = Calls.submit("s3://bucket/in/image.png", task="inpaint", mask="https://example.com/m.png",
                        iterations=5)
    assert call.files == {"image_url": (None, b"s3://bucket/in/image.png", None),
                          "mask_url": (None, b"https://example.com/m.png", None)}
    with httpx.Client(base_url="http://api") as http:
        request = call.request(http)
    assert request.headers["content-type"].startswith("multipart/form-data")


# -- refused: the URL itself ---------------------------------------------------------------------------


def test_a_file_part_and_a_url_for_the_same_input_are_refused(api: Any, origin: Origin, error_of: Any) -> None:
    requests_before = len(origin.seen)
    message = _refused(api, 422, "invalid_parameter", error_of, files={"image": IMAGE},
                       image_url=origin.url("/image.png"))
    assert "image_url" in message
    assert len(origin.seen) == requests_before  # refused before fetching anything


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/image.png", "file:///etc/passwd", "gopher://x/1",
                                 "javascript:alert(1)", "", "s3://", "s3://bucket-only", "http://",
                                 "http://127.0.0.1:99999/x", "http://user:secret@127.0.0.1/x",
                                 "http://127.0.0.1/a b"])
def test_malformed_urls_and_other_schemes_are_refused(api: Any, url: str, error_of: Any) -> None:
    _refused(api, 422, "invalid_input_url", error_of, image_url=url)


def test_the_defaults_refuse_http_private_addresses_and_s3(strict_api: Any, origin: Origin,
                                                          error_of: Any) -> None:
    requests_before = len(origin.seen)
    assert "https" in _refused(strict_api, 422, "input_url_forbidden", error_of,
                               image_url=origin.url("/image.png"))
    for url in (f"https://127.0.0.1:{origin.port}/image.png", f"https://localhost:{origin.port}/image.png",
                "https://169.254.169.254/latest/meta-data/", "https://[::1]/x", "https://[::ffff:10.0.0.1]/x",
                "https://0.0.0.0/x"):
        message = _refused(strict_api, 422, "input_url_forbidden", error_of, image_url=url)
        assert "address" in message, message
    assert "DIP_INPUT_BUCKETS" in _refused(strict_api, 422, "input_url_forbidden", error_of,
                                           image_url=f"s3://{ALLOWED_BUCKET}/in/image.png")
    assert len(origin.seen) == requests_before  # refused before any connection


def test_a_bucket_not_allowed_is_refused(api: Any, error_of: Any) -> None:
    message = _refused(api, 422, "input_url_forbidden", error_of, image_url=f"s3://{OTHER_BUCKET}/in/image.png")
    assert OTHER_BUCKET in message


# -- refused: what the origin answers -----------------------------------------------------------------


def test_a_missing_file_is_refused_with_the_origins_status(api: Any, origin: Origin, error_of: Any) -> None:
    assert "404" in _refused(api, 422, "input_url_unreachable", error_of, image_url=origin.url("/nothing.png"))


@pytest.mark.parametrize("url, reason", [(f"s3://{ALLOWED_BUCKET}/in/missing.png", "NoSuchKey"),
                                         (f"s3://{MISSING_BUCKET}/x.png", "NoSuchBucket")])
def test_a_missing_object_or_bucket_is_refused(api: Any, url: str, reason: str, error_of: Any) -> None:
    assert reason in _refused(api, 422, "input_url_unreachable", error_of, image_url=url)


def test_no_server_or_no_such_host_is_refused(api: Any, error_of: Any) -> None:
    _refused(api, 422, "input_url_unreachable", error_of, image_url=f"http://127.0.0.1:{free_port()}/x.png")
    assert "resolve" in _refused(api, 422, "input_url_unreachable", error_of,
                                 image_url="http://no-such-host.invalid/x.png")


@pytest.mark.parametrize("path, reason", [("/loop", "redirects"), ("/redirect-ftp", "https:// or s3://")])
def test_endless_or_odd_redirects_are_refused(api: Any, origin: Origin, path: str, reason: str,
                                              error_of: Any) -> None:
    code = "input_url_unreachable" if path == "/loop" else "invalid_input_url"
    assert reason in _refused(api, 422, code, error_of, image_url=origin.url(path))


@pytest.mark.parametrize("url", ["/big", "/endless", f"s3://{ALLOWED_BUCKET}/in/big.png"])
def test_a_file_over_the_cap_is_refused_as_an_upload_is(api: Any, origin: Origin, url: str,
                                                        error_of: Any) -> None:
    # /endless never ends: a 413 (not a timeout) means it was cut off at the cap as it streamed.
    full = url if url.startswith("s3://") else origin.url(url)
    assert str(MAX_UPLOAD_BYTES) in _refused(api, 413, "upload_too_large", error_of, image_url=full)


@pytest.mark.parametrize("url", ["/garbage", "/empty", f"s3://{ALLOWED_BUCKET}/in/garbage.png"])
def test_not_an_image_is_refused_as_the_same_upload_is(api: Any, origin: Origin, url: str,
                                                       buckets: dict[str, bytes], error_of: Any) -> None:
    data = buckets["in/garbage.png"] if url.startswith("s3://") else origin.routes[url]
    assert isinstance(data, bytes)
    uploaded = _submit(api, files={"image": data})
    assert uploaded.status_code == 422, uploaded.text
    code = uploaded.json()["error"]["code"]
    _refused(api, 422, code, error_of, image_url=url if url.startswith("s3://") else origin.url(url))


def test_a_decompression_bomb_by_url_is_refused_as_an_upload_is(api: Any, origin: Origin, error_of: Any) -> None:
    _refused(api, 422, "image_too_large", error_of, image_url=origin.url("/bomb.png"))


def test_a_compressed_answer_is_refused(api: Any, origin: Origin, error_of: Any) -> None:
    assert "gzip" in _refused(api, 422, "input_url_unreachable", error_of, image_url=origin.url("/gzip"))


@pytest.mark.parametrize("path", ["/silent", "/trickle"])
def test_a_stalling_origin_is_cut_off_at_the_time_limit(api: Any, origin: Origin, path: str,
                                                        error_of: Any) -> None:
    started = time.monotonic()
    message = _refused(api, 422, "input_url_timeout", error_of, image_url=origin.url(path))
    took = time.monotonic() - started
    assert f"{FETCH_TIMEOUT_S:g} s" in message
    assert FETCH_TIMEOUT_S * 0.9 < took < FETCH_TIMEOUT_S + 3.0, took


# -- in-process: address pinning and redirects from a "public" origin ---------------------------------


def _fetch(url: str, tmp_path: Path, *, table: dict[str, list[str]], **settings: Any) -> Path:
    """Run ``fetch_inputs`` for one ``image_url`` with a host table; the fetched file."""
    def resolver(host: str, port: int) -> list[str]:
        if host in table:
            return table[host]
        if host.replace(".", "").isdigit() or ":" in host:
            return [host]
        raise OSError("Name or service not known")

    staging = tmp_path / "staging"
    staging.mkdir()
    files: dict[str, Path] = {}
    fields = {"task": "denoise", "image_url": url}
    config = Settings(input_allow_http=True, input_fetch_timeout_s=5, max_upload_bytes=MAX_UPLOAD_BYTES,
                      **settings)
    asyncio.run(fetch_inputs(fields, files, staging, settings=config, resolver=resolver))
    assert fields == {"task": "denoise"}
    return files["image"]


def test_the_connection_goes_to_the_checked_address_with_the_name_as_host(origin: Origin, tmp_path: Path) -> None:
    # No DNS knows this name: only the address the check resolved is ever connected to.
    url = origin.url("/image.png", host="images.example.test")
    fetched = _fetch(url, tmp_path, table={"images.example.test": ["127.0.0.1"]}, input_allow_private=True)
    assert fetched.read_bytes() == IMAGE
    assert origin.seen[-1] == ("/image.png", f"images.example.test:{origin.port}")


@pytest.mark.parametrize("path, reason", [("/to-metadata", "link-local"), ("/to-private", "private"),
                                          ("/to-ipv6-loopback", "loopback"), ("/to-mapped-loopback", "loopback")])
def test_a_redirect_from_a_public_origin_to_a_private_address_is_refused(
        origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str, reason: str) -> None:
    # The loopback origin stands in for a public one: its address alone passes the check.
    check = core.addresses.refused_reason
    monkeypatch.setattr(core.addresses, "refused_reason",
                        lambda address: None if address == "127.0.0.1" else check(address))
    url = origin.url(path, host="public.example.test")
    with pytest.raises(ApiError) as refused:
        _fetch(url, tmp_path, table={"public.example.test": ["127.0.0.1"]})
    assert (refused.value.status_code, refused.value.code) == (422, "input_url_forbidden")
    assert reason in refused.value.message and "redirected" in refused.value.message
    assert not list((tmp_path / "staging").iterdir())


def test_a_name_with_one_private_address_among_public_ones_is_refused(origin: Origin, tmp_path: Path) -> None:
    with pytest.raises(ApiError) as refused:
        _fetch(origin.url("/image.png", host="sneaky.example.test"), tmp_path,
               table={"sneaky.example.test": ["93.184.216.34", "127.0.0.1"]})
    assert refused.value.code == "input_url_forbidden" and "loopback" in refused.value.message


# -- the address check -----------------------------------------------------------------------------


@pytest.mark.parametrize("address, reason", [
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.0.9", "private"),
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"), ("169.254.169.254", "link-local"),
    ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"), ("240.0.0.1", ""), ("255.255.255.255", ""),
    ("100.64.0.1", "non-global"), ("::1", "loopback"), ("fe80::1", "link-local"), ("fe80::1%eth0", "link-local"),
    ("fc00::1", "private"), ("fd12:3456::1", "private"), ("::", "unspecified"), ("ff02::1", "multicast"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"), ("::ffff:169.254.169.254", "link-local"),
    ("::127.0.0.1", ""), ("2001:db8::1", ""),  # IPv4-compatible (deprecated), documentation
])
def test_addresses_that_are_not_public_are_refused(address: str, reason: str) -> None:
    # "": refused, under whichever name comes first (240/4 is both reserved and "private" to Python)
    assert refused_reason(address) == reason if reason else refused_reason(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:2800:220:1:248:1893:25c8:1946",
                                     "::ffff:93.184.216.34"])
def test_public_addresses_pass(address: str) -> None:
    assert refused_reason(address) is None


def test_every_address_of_a_name_is_checked() -> None:
    table = {"public.test": ["93.184.216.34"], "mixed.test": ["93.184.216.34", "::1"]}

    def resolver(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("Name or service not known")
        return table[host]

    assert allowed_addresses("public.test", 443, allow_private=False, what="x", resolver=resolver) == ["93.184.216.34"]
    with pytest.raises(AddressRefused, match=r"'mixed.test' \(resolves to ::1\) is a loopback address"):
        allowed_addresses("mixed.test", 443, allow_private=False, what="x", resolver=resolver)
    assert allowed_addresses("mixed.test", 443, allow_private=True, what="x", resolver=resolver) == table["mixed.test"]
    with pytest.raises(HostUnresolved, match="does not resolve"):
        allowed_addresses("nowhere.test", 443, allow_private=True, what="x", resolver=resolver)
