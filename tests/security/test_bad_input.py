"""Hostile requests: each is refused with a 4xx JSON error and leaves nothing in Redis or on disk.

The simple cases (empty file, not an image, truncated PNG, too small, mask
size, mask for denoise, scale 3, iterations, unknown task or field, JSON
body, latin-1 field value, a spaced Idempotency-Key) are in
``tests/service/test_api.py``; here are those a hostile client tries next:
bombs, endless uploads, traversal in raw paths, bytes that are not UTF-8 in
headers and multipart heads. Requests go out as raw bytes where httpx would
clean them up.
"""

from __future__ import annotations

import io
import json
import select
import time
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

BAD_INPUT_DB = 9
MAX_UPLOAD_BYTES = 1_000_000  # the conftest's DIP_MAX_UPLOAD_BYTES
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def api(start_api: Any, key_settings: dict[str, str]) -> Iterator[Any]:
    with start_api(BAD_INPUT_DB, max_pixels=str(MAX_PIXELS), **key_settings) as api:
        yield api


@pytest.fixture(scope="module")
def job(api: Any, image64: bytes) -> dict[str, Any]:
    """A queued job of Alice's: it has an input file to aim traversal at."""
    return api.submit_ok(api.client("alice"), image64)


def _request(api: Any, method: str, target: bytes, *, headers: dict[bytes, bytes] | None = None,
             body: bytes = b"", who: str | None = "alice") -> bytes:
    """The bytes of an HTTP/1.1 request, exactly as given (no normalisation, any bytes)."""
    lines = [method.encode() + b" " + target + b" HTTP/1.1",
             b"Host: " + api.url.removeprefix("http://").encode(), b"Connection: close",
             b"Content-Length: " + str(len(body)).encode()]
    if who is not None:
        lines.append(b"Authorization: Bearer " + api.keys[who].encode())
    lines += [name + b": " + value for name, value in (headers or {}).items()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _form(parts: list[tuple[bytes, bytes]], *, boundary: bytes = b"xyz") -> bytes:
    """A multipart body from (part head, content) pairs."""
    body = b"".join(b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + content + b"\r\n" for head, content in parts)
    return body + b"--" + boundary + b"--\r\n"


def _field(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    return b'Content-Disposition: form-data; name="' + name + b'"', value


def _file(name: bytes, content: bytes, filename: bytes = b"image.png") -> tuple[bytes, bytes]:
    return (b'Content-Disposition: form-data; name="' + name + b'"; filename="' + filename + b'"\r\n'
            b"Content-Type: image/png", content)


def _refused(api: Any, request: bytes, status: int, code: str, error_of: Any) -> str:
    before = api.state()
    message = error_of(api.raw(request), status, code)
    assert api.state() == before
    return message


def test_a_decompression_bomb_is_refused_before_decoding(api: Any, error_of: Any) -> None:
    # 10000 x 10000 pixels in about 12 kB: decoding it would take 100 MB and more.
    buffer = io.BytesIO()
    Image.new("1", (10000, 10000)).save(buffer, format="PNG", optimize=True)
    bomb = buffer.getvalue()
    assert len(bomb) < 50_000
    before = api.state()
    started = time.monotonic()
    message = error_of(api.submit(api.client("alice"), bomb), 422, "image_too_large")
    assert "10000" in message or "100000000" in message
    assert time.monotonic() - started < 5
    assert api.state() == before


def test_an_ico_bomb_is_refused_at_once_and_the_api_memory_stays_flat(api: Any, error_of: Any) -> None:
    from tests.engine.test_io import ico_bomb

    bomb = ico_bomb()  # Pillow's ICO opener would decode ~680 MB inside Image.open
    peak_before = api.peak_memory_kb()
    before = api.state()
    started = time.monotonic()
    message = error_of(api.submit(api.client("alice"), bomb), 422, "invalid_image")
    assert time.monotonic() - started < 1.0
    assert "accepted: PNG" in message
    assert api.peak_memory_kb() - peak_before < 100_000
    assert api.state() == before


def test_an_endless_upload_is_cut_off_at_the_cap(api: Any, error_of: Any) -> None:
    """A chunked upload with no announced length: the server answers 413 once the file
    passes the cap, long before the client would have finished, and keeps none of it."""
    before = api.state()
    host = api.url.removeprefix("http://")
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api.keys['alice']}\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    opening = _form([_field(b"task", b"denoise")]).removesuffix(b"--xyz--\r\n")
    opening += b"--xyz\r\n" + _file(b"image", b"")[0] + b"\r\n\r\n"
    chunk = bytes(64 * 1024)
    endless = 64 * MAX_UPLOAD_BYTES  # where a client that is never stopped gives up
    sent = 0
    with api.connect() as sock:
        sock.sendall(head + b"%x\r\n%s\r\n" % (len(opening), opening))
        while sent < endless and not select.select([sock], [], [], 0)[0]:  # until the server answers
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        response = api.read_response(sock)
    assert str(MAX_UPLOAD_BYTES) in error_of(response, 413, "upload_too_large")
    # Refused as it streamed: what got out before the answer is the cap plus what the
    # sockets' buffers hold (a few MB on loopback), not the whole upload.
    assert sent < endless / 2, sent
    assert api.state() == before


def test_an_announced_oversized_body_is_refused_from_its_head(api: Any, error_of: Any) -> None:
    head = _request(api, "POST", b"/v1/jobs", headers={b"Content-Type": b"multipart/form-data; boundary=xyz"})
    head = head.replace(b"Content-Length: 0", b"Content-Length: 1000000000")
    before = api.state()
    error_of(api.raw(head, timeout_s=5.0), 413, "upload_too_large")  # no body sent: it must not wait for one
    assert api.state() == before


TRAVERSALS = [
    b"../input.png", b"..%2Finput.png", b"..%2finput.png", b"%2e%2e%2finput.png", b"%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    b"%2Fetc%2Fpasswd", b"/etc/passwd", b"..", b"%2e%2e", b".", b"input.png%00", b"%00", b"input.png%00.txt",
    b"..%5cinput.png", b"..\\input.png", b"%252e%252e%252finput.png", b"%c0%ae%c0%ae%c0%afinput.png",
    b"out%2Fdip_denoised.png", b"..%2F..%2F..%2F..%2Fproc%2Fself%2Fenviron", b"%2e%2e%2f" * 8 + b"etc%2fpasswd",
    b"input.png%2F..%2Finput.png", b"INPUT.PNG", b"input.png;.txt", b"input.png%20",
]


@pytest.mark.parametrize("name", TRAVERSALS, ids=[t.decode("latin-1") for t in TRAVERSALS])
def test_file_names_that_leave_the_listing_are_404(api: Any, job: dict[str, Any], name: bytes) -> None:
    target = f"/v1/jobs/{job['id']}/files/".encode() + name
    response = api.raw(_request(api, "GET", target))
    assert response.status == 404, (response.status, response.body[:200])
    assert b"\x89PNG" not in response.body and b"root:" not in response.body
    assert json.loads(response.body)["error"]["code"] == "not_found"


def test_the_listed_file_is_served(api: Any, job: dict[str, Any]) -> None:
    # The control of the traversal cases: the same request with a listed name works.
    response = api.raw(_request(api, "GET", f"/v1/jobs/{job['id']}/files/input.png".encode()))
    assert response.status == 200 and response.body.startswith(b"\x89PNG")


@pytest.mark.parametrize("job_id", [b"%00" * 22, b"%C3%A9" * 11, b"A" * 10_000, b"..%2F..%2Fetc", b"%2e%2e",
                                    b"AAAAAAAAAAAAAAAAAAAA%0A", b"AAAAAAAAAAAAAAAAAAAAA=", b"*"])
def test_malformed_job_ids_are_404_on_every_route(api: Any, job_id: bytes, error_of: Any) -> None:
    for method, path in (("GET", b""), ("GET", b"/history"), ("GET", b"/events"), ("GET", b"/snapshots"),
                         ("POST", b"/cancel"), ("DELETE", b""), ("GET", b"/files/input.png")):
        error_of(api.raw(_request(api, method, b"/v1/jobs/" + job_id + path)), 404, "not_found")


def test_bytes_the_http_parser_refuses_are_400(api: Any) -> None:
    # Refused by the HTTP server before the app sees them: a plain 400, and nothing stored.
    before = api.state()
    for target, headers in ((b"/v1/jobs/\xff\xfe", {}), (b"/v1/jobs", {b"Idempotency-Key": b"a\x01b"}),
                            (b"/v1/jobs", {b"Idempotency-Key": b"key\x7f"})):
        assert api.raw(_request(api, "GET", target, headers=headers)).status == 400
    assert api.state() == before


def _valid_form(image: bytes) -> bytes:
    return _form([_field(b"task", b"denoise"), _field(b"iterations", b"5"), _file(b"image", image)])


MULTIPART = {b"Content-Type": b"multipart/form-data; boundary=xyz"}


@pytest.mark.parametrize("key", [b"k" * 129, b"", b"caf\xe9", "clé".encode(), b"a b", b"a/b"])
def test_malformed_idempotency_keys_are_400(api: Any, image64: bytes, error_of: Any, key: bytes) -> None:
    request = _request(api, "POST", b"/v1/jobs", headers={**MULTIPART, b"Idempotency-Key": key},
                       body=_valid_form(image64))
    _refused(api, request, 400, "invalid_idempotency_key", error_of)


def _parts(image: bytes) -> dict[str, tuple[dict[bytes, bytes], bytes, int, str]]:
    valid = _valid_form(image)
    return {  # name: (headers, body, status, code)
        "latin-1 field name": (MULTIPART, _form([_field(b"t\xe2sk", b"denoise"), _file(b"image", image)]),
                               400, "invalid_encoding"),
        "UTF-16 field value": (MULTIPART, _form([_field(b"task", "denoise".encode("utf-16")), _file(b"image", image)]),
                               400, "invalid_encoding"),
        "surrogate in a value": (MULTIPART, _form([_field(b"task", b"\xed\xa0\x80"), _file(b"image", image)]),
                                 400, "invalid_encoding"),
        "declared latin-1 charset": ({b"Content-Type": b"multipart/form-data; charset=latin-1; boundary=xyz"},
                                     _form([_field(b"task", b"d\xe9noise"), _file(b"image", image)]),
                                     400, "invalid_encoding"),
        "NUL in a value": (MULTIPART, _form([_field(b"task", b"denoise\x00"), _file(b"image", image)]),
                           422, "invalid_parameter"),
        "latin-1 boundary": ({b"Content-Type": b"multipart/form-data; boundary=\xe9\xe9"},
                             valid.replace(b"--xyz", b"--\xe9\xe9"), 400, "invalid_request"),
        "boundary over 70 characters": ({b"Content-Type": b"multipart/form-data; boundary=" + b"b" * 71},
                                        valid.replace(b"--xyz", b"--" + b"b" * 71), 400, "invalid_request"),
        "boundary ending in a space": ({b"Content-Type": b'multipart/form-data; boundary="xyz "'},
                                       valid.replace(b"--xyz", b"--xyz "), 400, "invalid_request"),
        "empty boundary": ({b"Content-Type": b"multipart/form-data; boundary="}, valid, 415, "unsupported_media_type"),
        "body with another boundary": ({b"Content-Type": b"multipart/form-data; boundary=abc"}, valid,
                                       400, "invalid_request"),
        "bare LF line ends": (MULTIPART, valid.replace(b"\r\n", b"\n"), 400, "invalid_request"),
        "latin-1 media type": ({b"Content-Type": b"multipart/form-d\xe9ta; boundary=xyz"}, valid,
                               415, "unsupported_media_type"),
        "part without a name": (MULTIPART, _form([(b"Content-Disposition: form-data", b"x"), _file(b"image", image)]),
                                400, "invalid_request"),
        "200 kB part header": (MULTIPART, _form([(b'Content-Disposition: form-data; name="task"; x="' + b"a" * 200_000
                                                  + b'"', b"denoise"), _file(b"image", image)]),
                               400, "invalid_request"),
        "40 parts": (MULTIPART, _form([_field(b"f%d" % i, b"1") for i in range(40)] + [_file(b"image", image)]),
                     422, "invalid_parameter"),
        "5 kB value": (MULTIPART, _form([_field(b"task", b"d" * 5000), _file(b"image", image)]),
                       422, "invalid_parameter"),
        "task given twice": (MULTIPART, _form([_field(b"task", b"denoise"), _field(b"task", b"inpaint"),
                                                _file(b"image", image)]), 422, "invalid_parameter"),
        "image sent as a text part": (MULTIPART, _form([_field(b"task", b"denoise"), _field(b"iterations", b"5")]),
                                      422, "invalid_parameter"),
    }


@pytest.mark.parametrize("case", list(_parts(b"")))
def test_malformed_forms_and_encodings_are_refused(api: Any, image64: bytes, error_of: Any, case: str) -> None:
    headers, body, status, code = _parts(image64)[case]
    _refused(api, _request(api, "POST", b"/v1/jobs", headers=headers, body=body), status, code, error_of)


def test_an_upload_file_name_is_never_used_as_a_path(api: Any, image64: bytes) -> None:
    body = _form([_field(b"task", b"denoise"), _field(b"iterations", b"5"),
                  _file(b"image", image64, filename=b"../../../../tmp/owned.png")])
    response = api.raw(_request(api, "POST", b"/v1/jobs", headers=MULTIPART, body=body))
    assert response.status == 202, response.body[:300]
    job = json.loads(response.body)
    assert job["inputs"]["image"].endswith("/files/input.png")
    assert sorted(p.name for p in (api.results_dir / job["id"]).iterdir()) == ["input.png"]


def test_a_latin1_last_event_id_is_422(api: Any, job: dict[str, Any], error_of: Any) -> None:
    target = f"/v1/jobs/{job['id']}/events".encode()
    error_of(api.raw(_request(api, "GET", target, headers={b"Last-Event-ID": b"1-\xe9"})), 422, "invalid_parameter")


@pytest.mark.parametrize("last", [b"18446744073709551616-0", b"1-99999999999999999999", b"1-", b"-1", b"1-2-3",
                                  b"9" * 4000])
def test_a_huge_or_malformed_last_event_id_is_422_before_the_stream_starts(api: Any, job: dict[str, Any],
                                                                          error_of: Any, last: bytes) -> None:
    target = f"/v1/jobs/{job['id']}/events".encode()
    error_of(api.raw(_request(api, "GET", target, headers={b"Last-Event-ID": last})), 422, "invalid_parameter")


def test_the_largest_stream_id_is_accepted(api: Any, job: dict[str, Any]) -> None:
    # 2**64 - 1 in both parts: past every event, so the stream waits for news (read its head only).
    with api.client("alice").stream("GET", f"/v1/jobs/{job['id']}/events",
                                    headers={"Last-Event-ID": "18446744073709551615-18446744073709551615"}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
