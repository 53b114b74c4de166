"""What the sync and async clients share: the requests, how answers are read, when to retry.

Nothing here does I/O, so :class:`~dip_client.Client` and :class:`~dip_client.AsyncClient`
only differ in how they send a :class:`Call` and how they sleep.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image
from pydantic import BaseModel, TypeAdapter

from core.schemas import HistoryPoint, JobList, JobPublic, SnapshotPage

from .errors import error_from

T = TypeVar("T")

ImageInput = str | os.PathLike[str] | bytes | Image.Image | np.ndarray
"""A path, encoded image bytes, a PIL image, or a uint8 / [0, 1] float array (HxW or HxWxC);
or a URL the server fetches itself: a ``str`` starting with https://, http:// or s3://."""

DEFAULT_URL = "http://127.0.0.1:8000"
IDEMPOTENCY_HEADER = "Idempotency-Key"
RETRY_STATUSES = frozenset({429, 503})
# The API accepts these uploads beside `image` (core.layout.INPUT_FIELDS).
FILE_FIELDS = ("mask", "reference", "kernel")
# An input given as a str with one of these prefixes is sent as `<field>_url`, not read.
URL_PREFIXES = ("https://", "http://", "s3://")
# The server pings an open event stream every 15 s: silence past this means a dead connection.
STREAM_READ_TIMEOUT_S = 45.0


@dataclass(frozen=True)
class Retry:
    """Retry policy: ``tries`` attempts in all, waiting ``backoff_s * 2**n`` (capped at
    ``max_delay_s``) or what the server's ``Retry-After`` says, on connection errors, 429 and 503."""

    tries: int = 4
    backoff_s: float = 0.5
    max_delay_s: float = 60.0

    def after_response(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before trying again, or ``None``: this answer is final."""
        if response.status_code not in RETRY_STATUSES or attempt >= self.tries:
            return None
        asked = retry_after(response.headers.get("retry-after"))  # 0 is an answer too: now
        return min(self.max_delay_s, self._backoff(attempt) if asked is None else asked)

    def after_error(self, error: httpx.TransportError, attempt: int, *, replayable: bool) -> float | None:
        """Seconds to wait before trying again, or ``None``: give up.

        A request that may have reached the server is sent again only if that is harmless
        (``replayable``: a read, or a submission carrying its idempotency key).
        """
        never_sent = isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout))
        if attempt >= self.tries or not (never_sent or replayable):
            return None
        return self._backoff(attempt)

    def after_stream_end(self, attempt: int) -> float | None:
        """Seconds before reopening an event stream that ended before the job did (a server
        restarting, Redis away), or ``None``: give up. ``attempt`` 0: it had brought events."""
        if attempt >= self.tries:
            return None
        return 0.0 if attempt == 0 else self._backoff(attempt)

    def _backoff(self, attempt: int) -> float:
        return min(self.max_delay_s, self.backoff_s * 2.0 ** (attempt - 1))


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number, or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request and how to read its answer."""

    method: str
    url: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str | None, bytes, str | None]] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    replayable: bool = True

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        return http.build_request(self.method, self.url, params=self.params, data=self.data, files=self.files,
                                  headers=self.headers)


def model(kind: type[BaseModel]) -> Callable[[httpx.Response], Any]:
    """Read a 2xx answer as ``kind``; raise the API's error otherwise."""
    def parse(response: httpx.Response) -> Any:
        check(response)
        return kind.model_validate_json(response.content)
    return parse


def check(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        raise error_from(response)
    return response


_HISTORY = TypeAdapter(list[HistoryPoint])


def _history(response: httpx.Response) -> list[HistoryPoint]:
    return _HISTORY.validate_json(check(response).content)


def _nothing(response: httpx.Response) -> None:
    check(response)


def _jobs(job_id: str) -> str:
    # Ids are URL-safe by construction, but a typo must not reach another route.
    if not job_id or "/" in job_id or "?" in job_id or "#" in job_id:
        raise ValueError(f"not a job id: {job_id!r}")
    return f"/v1/jobs/{job_id}"


class Calls:
    """The API's endpoints as :class:`Call` values."""

    @staticmethod
    def submit(image: ImageInput, *, task: str, mask: ImageInput | None = None,
               reference: ImageInput | None = None, kernel: ImageInput | None = None,
               idempotency_key: str | None = None, **params: Any) -> Call[JobPublic]:
        files: dict[str, tuple[str | None, bytes, str | None]] = {}
        for name, value in (("image", image), ("mask", mask), ("reference", reference), ("kernel", kernel)):
            if value is None:
                continue
            if is_input_url(value):
                # A text part (no file name), among the files: the body must be multipart even
                # when every input is a URL.
                files[f"{name}_url"] = (None, value.encode(), None)
            else:
                files[name] = encode_image(value, name)
        key = idempotency_key or uuid.uuid4().hex  # one per call: its retries reuse it
        return Call("POST", "/v1/jobs", model(JobPublic), data=form_fields({"task": task, **params}), files=files,
                    headers={IDEMPOTENCY_HEADER: key})

    @staticmethod
    def get(job_id: str) -> Call[JobPublic]:
        return Call("GET", _jobs(job_id), model(JobPublic))

    @staticmethod
    def list_jobs(*, status: str | None = None, limit: int = 20, cursor: str | None = None) -> Call[JobList]:
        params = {k: v for k, v in (("status", status), ("limit", limit), ("cursor", cursor)) if v is not None}
        return Call("GET", "/v1/jobs", model(JobList), params=params)

    @staticmethod
    def cancel(job_id: str) -> Call[JobPublic]:
        return Call("POST", f"{_jobs(job_id)}/cancel", model(JobPublic), replayable=False)

    @staticmethod
    def delete(job_id: str) -> Call[None]:
        return Call("DELETE", _jobs(job_id), _nothing, replayable=False)

    @staticmethod
    def history(job_id: str) -> Call[list[HistoryPoint]]:
        return Call("GET", f"{_jobs(job_id)}/history", _history)

    @staticmethod
    def snapshots(job_id: str, *, limit: int = 100, cursor: str | None = None) -> Call[SnapshotPage]:
        params: dict[str, Any] = {"limit": limit} if cursor is None else {"limit": limit, "cursor": cursor}
        return Call("GET", f"{_jobs(job_id)}/snapshots", model(SnapshotPage), params=params)

    @staticmethod
    def file(url: str) -> Call[bytes]:
        return Call("GET", url, lambda response: check(response).content)

    @staticmethod
    def events(job_id: str) -> str:
        return f"{_jobs(job_id)}/events"


def form_fields(params: Mapping[str, Any]) -> dict[str, str]:
    """Form values as the API reads them: booleans as ``true``/``false``; ``None`` left out (the preset's)."""
    return {name: (str(value).lower() if isinstance(value, bool) else str(value))
            for name, value in params.items() if value is not None}


def is_input_url(image: ImageInput) -> bool:
    """Whether ``image`` is a URL for the server to fetch rather than something to upload."""
    return isinstance(image, str) and image[:8].lower().startswith(URL_PREFIXES)


def encode_image(image: ImageInput, field: str) -> tuple[str, bytes, str]:
    """``(filename, bytes, content type)`` of an upload; arrays and PIL images become PNG.

    Raises:
        FileNotFoundError: A path that does not exist (before anything is sent).
        ValueError / TypeError: An array of a shape or type that is not an image.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        return path.name, path.read_bytes(), "application/octet-stream"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return field, bytes(image), "application/octet-stream"  # the server reads the format from the bytes
    if isinstance(image, np.ndarray):
        image = Image.fromarray(_as_uint8(image))
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return f"{field}.png", buffer.getvalue(), "image/png"
    raise TypeError(f"{field}: expected a path, bytes, a PIL image or a numpy array, got {type(image).__name__}")


def _as_uint8(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"an image array is HxW or HxWxC (C = 1, 3 or 4), got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("a float image array must be finite")
        scaled: np.ndarray = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
        return scaled
    raise TypeError(f"an image array is uint8 or float in [0, 1], got {array.dtype}")


def job_files(job: JobPublic) -> dict[str, str]:
    """File name -> URL of every input and output the job has now (snapshots aside)."""
    urls = [*job.inputs.model_dump().values(),
            *(v for k, v in job.outputs.model_dump().items() if k != "latest_snapshot")]
    return {urlsplit(url).path.rsplit("/", 1)[-1]: url for url in urls if isinstance(url, str)}


def save(directory: Path, name: str, content: bytes) -> Path:
    """Write a downloaded file whole or not at all (an interrupted download leaves no half PNG)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    partial = directory / f".{name}.part"
    partial.write_bytes(content)
    partial.replace(target)
    return target


def decode_image(content: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(content))
    image.load()
    return image


def deadline_of(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def stream_timeout(base: httpx.Timeout, deadline: float | None) -> httpx.Timeout:
    """Read timeout of an event stream: past the pings' period, or the caller's deadline if sooner."""
    read = STREAM_READ_TIMEOUT_S if deadline is None else max(0.01, min(STREAM_READ_TIMEOUT_S,
                                                                         deadline - time.monotonic()))
    return httpx.Timeout(base.connect, read=read, write=base.write, pool=base.pool)


def expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def client_options(url: str | None, api_key: str | None, timeout: float,
                   headers: Mapping[str, str] | None) -> dict[str, Any]:
    """``httpx`` client arguments: base URL and key default to ``DIP_URL`` / ``DIP_API_KEY``."""
    key = api_key if api_key is not None else os.environ.get("DIP_API_KEY") or None
    all_headers = {"User-Agent": "dip-client", **(headers or {})}
    if key:
        all_headers["Authorization"] = f"Bearer {key}"
    return {"base_url": url or os.environ.get("DIP_URL") or DEFAULT_URL, "headers": all_headers,
            "timeout": timeout}
