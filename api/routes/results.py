"""What a job produced: its logged history, its snapshots and its files."""

from __future__ import annotations

import csv
import io
import itertools
import mimetypes
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from api.deps import AUTH_RESPONSES, JobDep, ResultsDep, SettingsDep, StoreDep
from api.errors import ApiError
from api.views import job_url
from core.layout import FILE_NAME, snapshot_names, snapshot_order
from core.results import ResultsStore
from core.schemas import ErrorBody, HistoryPoint, Snapshot, SnapshotPage

router = APIRouter(prefix="/v1/jobs", tags=["results"], responses=AUTH_RESPONSES)

_NOT_FOUND = {404: {"model": ErrorBody, "description": "No such job or file."}}
_CSV_COLUMNS = list(HistoryPoint.model_fields)


@router.get(
    "/{job_id}/history",
    summary="Logged points of the optimisation",
    response_model=list[HistoryPoint],
    responses={**_NOT_FOUND, 200: {"content": {"text/csv": {}}, "description": "JSON list, or CSV with ?format=csv."}},
)
async def get_history(
    job: JobDep,
    store: StoreDep,
    format: Annotated[Literal["json", "csv"], Query(description="json (default) or csv.")] = "json",
) -> Response | list[HistoryPoint]:
    """Every point logged so far (each `log_every` iterations): loss, PSNR, SSIM, time."""
    points = [HistoryPoint.model_validate(point) for point in await store.history(job.id)]
    if format == "json":
        return points
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(point.model_dump() for point in points)
    return Response(buffer.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{job.id}-history.csv"'})


@router.get("/{job_id}/snapshots", summary="List a job's snapshots, oldest first", responses=_NOT_FOUND)
async def list_snapshots(
    request: Request,
    job: JobDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,9}$", description=(
        "`next_cursor` of the previous page: the iteration of the last snapshot seen, so a "
        "client following a running job may pass its last item's `iteration` to get only newer ones."))] = None,
) -> SnapshotPage:
    """The snapshot PNGs written so far (every `snapshot_every` iterations, evenly thinned past
    DIP_MAX_SNAPSHOTS), each with its iteration and its URL under `/files/`. Pages are counted
    from the oldest, so snapshots added while the job runs never shift them."""
    names = snapshot_names(job.files)
    after = -1 if cursor is None else int(cursor)
    newer = [name for name in names if snapshot_order(name) > after]
    files_url = f"{job_url(request, job.id)}/files"
    items = [Snapshot.of(name, files_url=files_url) for name in newer[:limit]]
    return SnapshotPage(items=items, total=len(names),
                        next_cursor=str(items[-1].iteration) if len(newer) > limit else None)


@router.get(
    "/{job_id}/files/{name}",
    summary="Download an input or output file",
    response_class=FileResponse,
    responses={**_NOT_FOUND, 200: {"content": {"image/png": {}, "application/json": {}},
                                   "description": "The file."},
               304: {"description": "Unchanged since the ETag given in If-None-Match."},
               307: {"description": "With object storage and DIP_PRESIGN: a presigned URL of the file, "
                                    "valid for DIP_PRESIGN_EXPIRES_S.",
                     "headers": {"Location": {"schema": {"type": "string"}}}},
               503: {"model": ErrorBody, "description": "The object store is unreachable."}},
)
async def get_file(
    job: JobDep,
    name: str,
    settings: SettingsDep,
    results: ResultsDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """`name` is one listed in the job's `inputs`/`outputs`: `input.png`, `mask.png`,
    `reference.png`, `result.png`, `best.png`, `curves.png`, `metrics.json`, `snapshot_00050.png`."""
    relative = job.files.get(name) if FILE_NAME.fullmatch(name) else None
    if relative is None:
        raise ApiError(404, "not_found", f"job {job.id} has no file {name!r}")
    try:
        info = await run_in_threadpool(results.info, job.id, relative)
    except ValueError:  # a stored name that leaves the job's folder
        info = None
    if info is None:
        raise ApiError(404, "not_found", f"job {job.id} has no file {name!r} (any more)")
    headers = {"ETag": info.etag, "Cache-Control": "no-cache"}
    if if_none_match is not None and _etag_matches(if_none_match, info.etag):
        return Response(status_code=304, headers=headers)
    filename = f"{job.id}-{name}"
    path = results.local_path(job.id, relative)
    if path is not None:
        return FileResponse(path, headers=headers, filename=filename, content_disposition_type="inline")
    if settings.presign:
        # Handed only to whoever may read the job (JobDep checked it), and it expires.
        url = results.url(job.id, relative, expires_s=settings.presign_expires_s, filename=filename)
        if url is not None:
            return RedirectResponse(url, status_code=307, headers={**headers, "Cache-Control": "no-store"})
    chunks = await run_in_threadpool(_first_chunk, results, job.id, relative)
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return StreamingResponse(iterate_in_threadpool(chunks), media_type=media_type, headers={
        **headers, "Content-Length": str(info.size),
        "Content-Disposition": f'inline; filename="{filename}"'})


def _first_chunk(results: ResultsStore, job_id: str, name: str) -> Iterator[bytes]:
    """The object's chunks, its first one read already (so an outage or a vanished file is
    answered with 503 or 404 before the 200 goes out)."""
    chunks = results.read(job_id, name)
    try:
        first = next(chunks, b"")
    except FileNotFoundError:
        raise ApiError(404, "not_found", f"job {job_id} has no file {name!r} (any more)") from None
    return itertools.chain([first], chunks)


def _etag_matches(header: str, etag: str) -> bool:
    """RFC 9110 weak comparison against an If-None-Match list."""
    candidates = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in candidates or etag in candidates
