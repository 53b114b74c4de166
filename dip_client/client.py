"""``Client`` and ``AsyncClient``: the job API over HTTP, with retries and typed answers.

Both send the same :class:`~dip_client._core.Call` values and apply the same
:class:`~dip_client._core.Retry` policy; only the sending and the sleeping differ.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
from PIL import Image
from typing_extensions import Self

from core.schemas import HistoryPoint, JobList, JobPublic, SnapshotPage

from ._core import (
    Call,
    Calls,
    ImageInput,
    Retry,
    client_options,
    deadline_of,
    decode_image,
    expired,
    job_files,
    save,
    stream_timeout,
)
from .errors import DipConnectionError, DipError, error_from
from .events import Follower, JobEvent, SSEDecoder, is_terminal

__all__ = ["AsyncClient", "Client"]

T = TypeVar("T")
ProgressCallback = Callable[[JobPublic], Any]
# Spelled at module level: inside the classes, `list` is their method.
History = list[HistoryPoint]


def _give_up(error: httpx.TransportError, url: str) -> DipConnectionError:
    return DipConnectionError(f"cannot reach {url}: {error.__class__.__name__}: {error}")


def _reopen(retry: Retry, attempt: int, url: str) -> float:
    delay = retry.after_stream_end(attempt)
    if delay is None:
        raise DipConnectionError(f"the event stream at {url} keeps ending before the job does")
    return delay


class Client:
    """A blocking client of the dip job API.

    Args:
        url: The API's base URL (default: ``DIP_URL``, else http://127.0.0.1:8000).
        api_key: Sent as ``Authorization: Bearer`` (default: ``DIP_API_KEY``; none if unset).
        timeout: Seconds per request (event streams wait longer: the server pings them).
        retry: When to retry; ``Retry(tries=1)`` never does.
        transport: An ``httpx`` transport, e.g. to test against an app in-process.
    """

    def __init__(self, url: str | None = None, *, api_key: str | None = None, timeout: float = 30.0,
                 retry: Retry | None = None, headers: Mapping[str, str] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.retry = retry or Retry()
        self._http = httpx.Client(**client_options(url, api_key, timeout, headers), transport=transport)

    @property
    def url(self) -> str:
        return str(self._http.base_url)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, call: Call[T]) -> T:
        request = call.request(self._http)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                delay = self.retry.after_error(exc, attempt, replayable=call.replayable)
                if delay is None:
                    raise _give_up(exc, str(request.url)) from exc
            else:
                delay = self.retry.after_response(response, attempt)
                if delay is None:
                    return call.parse(response)
            time.sleep(delay)

    # -- jobs ---------------------------------------------------------------------

    def submit(self, image: ImageInput, *, task: str, mask: ImageInput | None = None,
               reference: ImageInput | None = None, kernel: ImageInput | None = None,
               idempotency_key: str | None = None, **params: Any) -> JobPublic:
        """Queue a restoration of ``image``; ``params`` are the API's form fields
        (``iterations=200``, ``preset="quality"``, ``add_noise_sigma=25``...).

        An input given as a ``str`` starting with https://, http:// or s3:// is not read here:
        the server fetches it (sent as ``image_url``, ``mask_url``...)."""
        return self._run(Calls.submit(image, task=task, mask=mask, reference=reference, kernel=kernel,
                                      idempotency_key=idempotency_key, **params))

    def get(self, job_id: str) -> JobPublic:
        return self._run(Calls.get(job_id))

    def list(self, *, status: str | None = None, limit: int = 20, cursor: str | None = None) -> JobList:
        """One page of your jobs, newest first (pass ``next_cursor`` on for the next)."""
        return self._run(Calls.list_jobs(status=status, limit=limit, cursor=cursor))

    def cancel(self, job_id: str) -> JobPublic:
        return self._run(Calls.cancel(job_id))

    def delete(self, job_id: str) -> None:
        self._run(Calls.delete(job_id))

    def history(self, job_id: str) -> History:
        return self._run(Calls.history(job_id))

    def snapshots(self, job_id: str, *, limit: int = 100, cursor: str | None = None) -> SnapshotPage:
        return self._run(Calls.snapshots(job_id, limit=limit, cursor=cursor))

    # -- following a job ----------------------------------------------------------

    def events(self, job_id: str, *, last_event_id: str | None = None,
               timeout: float | None = None) -> Iterator[JobEvent]:
        """The job's events, from the start or after ``last_event_id``, until its terminal status.

        A dropped connection is reopened with ``Last-Event-ID``, so no event is lost or repeated.

        Raises:
            TimeoutError: ``timeout`` seconds passed before the job ended.
        """
        deadline = deadline_of(timeout)
        decoder = SSEDecoder(last_event_id)
        attempt = 0
        while True:
            attempt += 1
            headers = {"Last-Event-ID": decoder.last_id} if decoder.last_id else {}
            request = self._http.build_request("GET", Calls.events(job_id), headers=headers,
                                               timeout=stream_timeout(self._http.timeout, deadline))
            try:
                response = self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                delay = self.retry.after_error(exc, attempt, replayable=True)
                if delay is None:
                    raise _give_up(exc, str(request.url)) from exc
            else:
                try:
                    delay = self.retry.after_response(response, attempt)
                    if delay is None:
                        if response.is_error:
                            response.read()
                            raise error_from(response)
                        for event in decoder.events(response.iter_lines()):
                            attempt = 0  # news: a later drop gets its full tries again
                            yield event
                            if is_terminal(event):
                                return
                        delay = _reopen(self.retry, attempt, str(request.url))
                except httpx.TransportError as exc:
                    if expired(deadline):
                        raise TimeoutError(f"job {job_id} still running after {timeout} s") from exc
                    delay = self.retry.after_error(exc, attempt, replayable=True)
                    if delay is None:
                        raise _give_up(exc, str(request.url)) from exc
                finally:
                    response.close()
            if expired(deadline):
                raise TimeoutError(f"job {job_id} still running after {timeout} s")
            time.sleep(delay)

    def wait(self, job_id: str, *, progress: ProgressCallback | None = None,
             timeout: float | None = None) -> JobPublic:
        """Follow the job until it ends; ``progress(job)`` is called on each update. Returns the final job
        (whatever its status: check ``job.status``).

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        follower = Follower(self.get(job_id))
        if follower.job.status.is_terminal:
            return follower.job
        if progress:
            progress(follower.job)
        for event in self.events(job_id, timeout=timeout):
            if is_terminal(event):
                break
            if follower.update(event) and progress:
                progress(follower.job)
        final = self.get(job_id)  # with its outputs, times and final metrics
        if progress:
            progress(final)
        return final

    # -- results ------------------------------------------------------------------

    def download(self, job_id: str, directory: str | Path, *, snapshots: bool = False) -> dict[str, Path]:
        """Save the job's inputs and outputs (and its snapshots if asked) into ``directory``;
        returns file name -> path."""
        job = self.get(job_id)
        urls = job_files(job)
        if snapshots:
            cursor = None
            while True:
                page = self.snapshots(job_id, cursor=cursor)
                urls.update({item.name: item.url for item in page.items})
                if not (cursor := page.next_cursor):
                    break
        return {name: save(Path(directory), name, self._run(Calls.file(url))) for name, url in urls.items()}

    def result_image(self, job_id: str) -> Image.Image:
        """The restored image.

        Raises:
            DipError: ``no_result`` if the job has none (yet).
        """
        job = self.get(job_id)
        if job.outputs.result is None:
            raise DipError("no_result", f"job {job_id} has no result ({job.status.value})")
        return decode_image(self._run(Calls.file(job.outputs.result)))


class AsyncClient:
    """The asyncio twin of :class:`Client`: the same methods, awaited (``events`` is async-iterated).
    ``wait``'s progress callback may be a plain function or a coroutine function."""

    def __init__(self, url: str | None = None, *, api_key: str | None = None, timeout: float = 30.0,
                 retry: Retry | None = None, headers: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.retry = retry or Retry()
        self._http = httpx.AsyncClient(**client_options(url, api_key, timeout, headers), transport=transport)

    @property
    def url(self) -> str:
        return str(self._http.base_url)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, call: Call[T]) -> T:
        request = call.request(self._http)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.send(request)
            except httpx.TransportError as exc:
                delay = self.retry.after_error(exc, attempt, replayable=call.replayable)
                if delay is None:
                    raise _give_up(exc, str(request.url)) from exc
            else:
                delay = self.retry.after_response(response, attempt)
                if delay is None:
                    return call.parse(response)
            await asyncio.sleep(delay)

    async def submit(self, image: ImageInput, *, task: str, mask: ImageInput | None = None,
                     reference: ImageInput | None = None, kernel: ImageInput | None = None,
                     idempotency_key: str | None = None, **params: Any) -> JobPublic:
        return await self._run(Calls.submit(image, task=task, mask=mask, reference=reference, kernel=kernel,
                                            idempotency_key=idempotency_key, **params))

    async def get(self, job_id: str) -> JobPublic:
        return await self._run(Calls.get(job_id))

    async def list(self, *, status: str | None = None, limit: int = 20, cursor: str | None = None) -> JobList:
        return await self._run(Calls.list_jobs(status=status, limit=limit, cursor=cursor))

    async def cancel(self, job_id: str) -> JobPublic:
        return await self._run(Calls.cancel(job_id))

    async def delete(self, job_id: str) -> None:
        await self._run(Calls.delete(job_id))

    async def history(self, job_id: str) -> History:
        return await self._run(Calls.history(job_id))

    async def snapshots(self, job_id: str, *, limit: int = 100, cursor: str | None = None) -> SnapshotPage:
        return await self._run(Calls.snapshots(job_id, limit=limit, cursor=cursor))

    async def events(self, job_id: str, *, last_event_id: str | None = None,
                     timeout: float | None = None) -> AsyncIterator[JobEvent]:
        deadline = deadline_of(timeout)
        decoder = SSEDecoder(last_event_id)
        attempt = 0
        while True:
            attempt += 1
            headers = {"Last-Event-ID": decoder.last_id} if decoder.last_id else {}
            request = self._http.build_request("GET", Calls.events(job_id), headers=headers,
                                               timeout=stream_timeout(self._http.timeout, deadline))
            try:
                response = await self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                delay = self.retry.after_error(exc, attempt, replayable=True)
                if delay is None:
                    raise _give_up(exc, str(request.url)) from exc
            else:
                try:
                    delay = self.retry.after_response(response, attempt)
                    if delay is None:
                        if response.is_error:
                            await response.aread()
                            raise error_from(response)
                        async for line in response.aiter_lines():
                            event = decoder.feed(line)
                            if event is None:
                                continue
                            attempt = 0
                            yield event
                            if is_terminal(event):
                                return
                        delay = _reopen(self.retry, attempt, str(request.url))
                except httpx.TransportError as exc:
                    if expired(deadline):
                        raise TimeoutError(f"job {job_id} still running after {timeout} s") from exc
                    delay = self.retry.after_error(exc, attempt, replayable=True)
                    if delay is None:
                        raise _give_up(exc, str(request.url)) from exc
                finally:
                    await response.aclose()
            if expired(deadline):
                raise TimeoutError(f"job {job_id} still running after {timeout} s")
            await asyncio.sleep(delay)

    async def wait(self, job_id: str, *, progress: Callable[[JobPublic], Any | Awaitable[Any]] | None = None,
                   timeout: float | None = None) -> JobPublic:
        async def report(job: JobPublic) -> None:
            if progress and inspect.isawaitable(outcome := progress(job)):
                await outcome

        follower = Follower(await self.get(job_id))
        if follower.job.status.is_terminal:
            return follower.job
        await report(follower.job)
        async for event in self.events(job_id, timeout=timeout):
            if is_terminal(event):
                break
            if follower.update(event):
                await report(follower.job)
        final = await self.get(job_id)
        await report(final)
        return final

    async def download(self, job_id: str, directory: str | Path, *, snapshots: bool = False) -> dict[str, Path]:
        job = await self.get(job_id)
        urls = job_files(job)
        if snapshots:
            cursor = None
            while True:
                page = await self.snapshots(job_id, cursor=cursor)
                urls.update({item.name: item.url for item in page.items})
                if not (cursor := page.next_cursor):
                    break
        return {name: save(Path(directory), name, await self._run(Calls.file(url))) for name, url in urls.items()}

    async def result_image(self, job_id: str) -> Image.Image:
        job = await self.get(job_id)
        if job.outputs.result is None:
            raise DipError("no_result", f"job {job_id} has no result ({job.status.value})")
        return decode_image(await self._run(Calls.file(job.outputs.result)))
