"""Fetching inputs given by URL: ``image_url``, ``mask_url``, ``kernel_url``, ``reference_url``.

A job may name its images instead of uploading them. Each is downloaded into the
staging directory exactly where its upload would have been written
(``staging/<field>``), so that everything after it (the request's fingerprint, the
image checks of ``place_inputs``: format, size, decompression bombs) is the same for both.

What is fetched, and how:

- ``https://`` URLs; ``http://`` ones only with ``DIP_INPUT_ALLOW_HTTP``. Never from a
  private, loopback, link-local, multicast or reserved address (unless
  ``DIP_INPUT_ALLOW_PRIVATE``): the host is resolved once, every address it resolves to
  checked (``core.addresses``), and the connection made to a checked address, the URL
  pinned to it with the name sent as ``Host`` and as the TLS server name (the certificate
  is verified against the name), so DNS cannot answer differently between the check and
  the connection. Redirects are followed by hand, at most ``MAX_REDIRECTS``, each target
  checked the same way. Proxies from the environment are not used: they would resolve the
  name themselves. Content encodings are refused (``identity`` is asked for): a small gzip
  body can inflate far past the cap before it could be counted.
- ``s3://bucket/key`` from the buckets in ``DIP_INPUT_BUCKETS`` only, read with the service's
  own credentials (the standard AWS variables) from ``DIP_S3_ENDPOINT_URL`` (unset: AWS).

Each input is capped at ``DIP_MAX_UPLOAD_BYTES`` (413 ``upload_too_large``, as an upload)
and its fetch takes at most ``DIP_INPUT_FETCH_TIMEOUT_S`` in all, lookup included (422
``input_url_timeout``: the URL given is at fault, not the service, hence no 5xx; nor 408,
which says the client was slow to send its own request). Other refusals are 422:
``invalid_input_url`` (malformed, another scheme), ``input_url_forbidden`` (an address,
scheme or bucket this server does not read from) and ``input_url_unreachable`` (no such
host or object, connection refused, an answer other than 2xx).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import SplitResult, urljoin, urlsplit

import anyio
import httpx

from api.errors import ApiError
from core.addresses import AddressRefused, HostUnresolved, Resolver, allowed_addresses, host_header, pinned_url
from core.config import Settings
from core.layout import INPUT_FIELDS

log = logging.getLogger(__name__)

URL_FIELDS = {f"{field}_url": field for field in INPUT_FIELDS}
"""Form field -> the file part it stands for (``image_url`` -> ``image``)."""
MAX_REDIRECTS = 3
MAX_URL_LENGTH = 1024  # what a form field holds (api.uploads)
_CHUNK_BYTES = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

T = TypeVar("T")


@dataclass(frozen=True)
class _S3Object:
    bucket: str
    key: str


async def fetch_inputs(fields: dict[str, str], files: dict[str, Path], staging: Path, *, settings: Settings,
                       resolver: Resolver | None = None) -> None:
    """Take the ``<field>_url`` fields out of ``fields``; download each to ``staging/<field>``, into ``files``.

    Every URL is checked before anything is fetched, so a request refused for its
    second URL does not download its first.

    Args:
        fields: The form's text fields (the URL fields are removed: they are not engine parameters).
        files: The uploads received (form field -> staged file); the fetched files are added.
        staging: The submission's staging directory.
        resolver: Host name lookup (default: the system's).

    Raises:
        ApiError: 422 (a file given both ways; a malformed, refused or unreachable URL, or a
            timeout: see the module) or 413 (more than ``max_upload_bytes``).
    """
    wanted = {field: fields.pop(name) for name, field in URL_FIELDS.items() if name in fields}
    for field in wanted:
        if field in files:
            raise ApiError(422, "invalid_parameter",
                           f"{field}: give either the file part {field!r} or {field}_url, not both")
    sources = {field: _source(url, f"{field}_url", settings) for field, url in wanted.items()}
    for field, source in sources.items():
        name = f"{field}_url"
        dest = staging / field
        try:
            with anyio.fail_after(settings.input_fetch_timeout_s):
                if isinstance(source, _S3Object):
                    await _fetch_s3(source, dest, name=name, settings=settings)
                else:
                    await _fetch_http(source, dest, name=name, settings=settings, resolver=resolver)
        except TimeoutError:
            raise _timed_out(name, settings) from None
        files[field] = dest


def input_url_form_fields() -> dict[str, Any]:
    """OpenAPI of the URL form fields (each instead of the file part of the same name)."""
    return {
        name: {"type": "string", "format": "uri", "maxLength": MAX_URL_LENGTH, "pattern": "^(https?|s3)://",
               "description": f"Instead of uploading `{field}`: where to fetch it. https:// (http:// if the server "
                              "allows it; never a private, loopback or link-local address unless it allows "
                              "them) or s3://bucket/key from a bucket in DIP_INPUT_BUCKETS; at most "
                              "DIP_MAX_UPLOAD_BYTES, fetched within DIP_INPUT_FETCH_TIMEOUT_S."}
        for name, field in URL_FIELDS.items()
    }


# -- which URLs ------------------------------------------------------------------------------------


def _source(url: str, name: str, settings: Settings) -> SplitResult | _S3Object:
    """The checked http(s) URL, or the object of an s3:// one; nothing is looked up yet."""
    if not url:
        raise ApiError(422, "invalid_input_url", f"{name} is empty")
    if len(url) > MAX_URL_LENGTH or any(c.isspace() or not c.isprintable() for c in url):
        raise ApiError(422, "invalid_input_url", f"{name}: not a URL (too long, or with spaces or control "
                                                 "characters)")
    if url[:5].lower() == "s3://":
        bucket, _, key = url[5:].partition("/")
        if not bucket or not key:
            raise ApiError(422, "invalid_input_url", f"{name} {url!r}: an s3:// URL is s3://bucket/key")
        if not settings.input_buckets:
            raise ApiError(422, "input_url_forbidden",
                           f"{name}: this server reads no s3:// inputs (DIP_INPUT_BUCKETS is empty)")
        if bucket not in settings.input_buckets:
            raise ApiError(422, "input_url_forbidden",
                           f"{name}: bucket {bucket!r} is not one this server reads inputs from")
        return _S3Object(bucket, key)
    return _http_url(url, name, settings)


def _http_url(url: str, name: str, settings: Settings) -> SplitResult:
    """``url`` split, if it is an http(s) URL this server may fetch (the host is checked later)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise ApiError(422, "invalid_input_url", f"{name} {url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("https", "http"):
        raise ApiError(422, "invalid_input_url", f"{name} {url!r}: give an https:// or s3:// URL")
    if parts.scheme == "http" and not settings.input_allow_http:
        raise ApiError(422, "input_url_forbidden", f"{name} {url!r}: this server fetches https:// URLs only")
    if not parts.hostname:
        raise ApiError(422, "invalid_input_url", f"{name} {url!r} has no host")
    if not parts.netloc.isascii():
        raise ApiError(422, "invalid_input_url", f"{name} {url!r}: give the host name in its ASCII (xn--) form")
    if parts.username is not None or parts.password is not None:
        # They would be sent to every hop of a redirect: not worth the surprise.
        raise ApiError(422, "invalid_input_url", f"{name}: credentials in the URL are not supported")
    return parts


# -- http(s) ---------------------------------------------------------------------------------------


async def _fetch_http(parts: SplitResult, dest: Path, *, name: str, settings: Settings,
                      resolver: Resolver | None) -> None:
    what = f"{name} host"
    for _ in range(MAX_REDIRECTS + 1):
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = await _in_thread(allowed_addresses, parts.hostname or "", port,
                                         allow_private=settings.input_allow_private, what=what, resolver=resolver)
        except HostUnresolved as exc:
            raise ApiError(422, "input_url_unreachable", str(exc)) from None
        except AddressRefused as exc:
            raise ApiError(422, "input_url_forbidden", str(exc)) from None
        location = await _get(parts, addresses, dest, name=name, settings=settings)
        if location is None:
            return
        target = urljoin(parts.geturl(), location)
        what = f"{name} (redirected to {target[:200]}) host"
        parts = _http_url(target, f"{name} (redirected)", settings)
    raise ApiError(422, "input_url_unreachable", f"{name}: more than {MAX_REDIRECTS} redirects")


async def _get(parts: SplitResult, addresses: list[str], dest: Path, *, name: str,
               settings: Settings) -> str | None:
    """GET ``parts`` from the first of ``addresses`` that answers into ``dest``; a redirect's ``Location``."""
    headers = {"host": host_header(parts), "accept": "image/*, */*;q=0.1", "accept-encoding": "identity",
               "user-agent": "dip-restore"}
    extensions = {"sni_hostname": parts.hostname or ""} if parts.scheme == "https" else {}
    error = "no address"
    for address in addresses:
        try:
            # One client per connection: a pooled connection verified for another name on the
            # same address must never carry this one.
            async with httpx.AsyncClient(timeout=settings.input_fetch_timeout_s, follow_redirects=False,
                                         trust_env=False) as client:
                async with client.stream("GET", pinned_url(parts, address), headers=headers,
                                         extensions=extensions) as response:
                    return await _receive(response, dest, name=name, max_bytes=settings.max_upload_bytes)
        except httpx.ConnectError as exc:
            error = f"could not connect to {address}: {exc or type(exc).__name__}"
        except httpx.TimeoutException:
            raise _timed_out(name, settings) from None
        except httpx.HTTPError as exc:
            raise ApiError(422, "input_url_unreachable", f"{name}: {type(exc).__name__}: {exc}") from None
    raise ApiError(422, "input_url_unreachable", f"{name}: {error}")


async def _receive(response: httpx.Response, dest: Path, *, name: str, max_bytes: int) -> str | None:
    code = response.status_code
    if code in _REDIRECTS:
        location = response.headers.get("location")
        if not location:
            raise ApiError(422, "input_url_unreachable", f"{name}: the server answered {code} with no Location")
        return location
    if not 200 <= code < 300:
        raise ApiError(422, "input_url_unreachable",
                       f"{name}: the server answered {code} {response.reason_phrase}".rstrip())
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ApiError(422, "input_url_unreachable",
                       f"{name}: the server sent it {encoding}-encoded; serve it as is (identity)")
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise _too_large(name, max_bytes)
    size = 0
    with dest.open("xb") as out:
        async for chunk in response.aiter_raw(_CHUNK_BYTES):
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(name, max_bytes)
            out.write(chunk)  # page-cache writes of one chunk, as the uploads do
    return None


# -- s3:// -----------------------------------------------------------------------------------------


async def _fetch_s3(source: _S3Object, dest: Path, *, name: str, settings: Settings) -> None:
    # The thread stops itself at the deadline too: the request is answered at the deadline
    # (the thread abandoned), and the thread must not go on downloading after that.
    deadline = time.monotonic() + settings.input_fetch_timeout_s
    await _in_thread(_download_s3, source.bucket, source.key, dest, name=name, max_bytes=settings.max_upload_bytes,
                     deadline=deadline, settings=settings)


def _download_s3(bucket: str, key: str, dest: Path, *, name: str, max_bytes: int, deadline: float,
                 settings: Settings) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    where = f"{name} s3://{bucket}/{key}"
    try:
        client = _s3_client(settings.s3_endpoint_url, settings.input_fetch_timeout_s)
        answer = client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise ApiError(422, "input_url_unreachable",
                       f"{where}: {error.get('Code') or 'error'} ({error.get('Message') or exc})") from None
    except BotoCoreError as exc:
        log.warning("%s not read: %s", where, exc)
        raise ApiError(422, "input_url_unreachable", f"{where} could not be read: {exc}") from None
    body = answer["Body"]
    try:
        if int(answer.get("ContentLength") or 0) > max_bytes:
            raise _too_large(name, max_bytes)
        size = 0
        with dest.open("xb") as out:
            for chunk in body.iter_chunks(_CHUNK_BYTES):
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(name, max_bytes)
                if time.monotonic() > deadline:
                    raise ApiError(422, "input_url_timeout", f"{name}: not fetched within the time limit")
                out.write(chunk)
    except BotoCoreError as exc:
        raise ApiError(422, "input_url_unreachable", f"{where} could not be read: {exc}") from None
    finally:
        body.close()


@functools.lru_cache(maxsize=4)
def _s3_client(endpoint_url: str | None, timeout_s: float) -> Any:
    # Imported here: boto3 takes a while to load, and most servers never read s3:// inputs.
    import boto3
    from botocore.config import Config

    # A session of its own: boto3's default session is not safe to build clients from in
    # several threads at once (clients themselves are).
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url,
        config=Config(connect_timeout=timeout_s, read_timeout=timeout_s,
                      retries={"max_attempts": 2, "mode": "standard"}))


# -- shared ----------------------------------------------------------------------------------------


async def _in_thread(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking ``func`` (a DNS lookup, boto3) in a thread, abandoned if the fetch's time runs out.

    Not ``run_in_threadpool``: anyio waits for its threads even when cancelled, and a
    lookup can hang far longer than the fetch may take.
    """
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(func, *args, **kwargs))


def _too_large(name: str, max_bytes: int) -> ApiError:
    return ApiError(413, "upload_too_large", f"{name}: the file is larger than the {max_bytes}-byte limit")


def _timed_out(name: str, settings: Settings) -> ApiError:
    return ApiError(422, "input_url_timeout",
                    f"{name}: not fetched within {settings.input_fetch_timeout_s:g} s (DIP_INPUT_FETCH_TIMEOUT_S)")
