"""Submitting a job: receive the upload, validate it, put it in place, record it, enqueue it.

Nothing is left behind by a refused submission: files are staged under
``.staging/<id>/`` (in the results volume, or in ``DIP_SCRATCH_DIR`` with
object storage) and put in the results store only once valid, all or none;
the record is written last (and removed again if the job cannot be enqueued:
503 when the broker or the object store is unreachable).

No job is lost if the API dies between writing the record and sending its
message: the record is written as awaiting its dispatch, and the dispatch is
confirmed once the message is sent; a job still unconfirmed after the grace
(``DIP_LEASE_S``) is sent again by a worker's reaper (``worker.recovery``).

The queue caps are checked twice: with a read before the body is received,
so a client flooding a full queue is refused without uploading anything, and
atomically when the record is written, which is the check that counts.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from api.errors import ApiError
from api.fetch import fetch_inputs, input_url_form_fields
from api.uploads import receive_form
from core.config import Settings
from core.layout import INPUT_FIELDS, input_file_name, new_job_id
from core.queue import BrokerUnavailable, JobQueue
from core.results import ResultsStore, ResultsUnavailable, staging_dir
from core.schemas import JobCreate
from core.store import JobRecord, JobStore, StoreError
from core.store.jobs import QueueFull
from core.webhooks import InvalidWebhook, WebhookSubscription, subscription_from_form, webhook_form_fields
from dip_engine.errors import InputError
from dip_engine.io import ImageInfo, inspect_image, load_kernel
from dip_engine.validation import check_inputs, validate_spec

log = logging.getLogger(__name__)

IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# A full queue drains at the pace of jobs (minutes): no point retrying sooner.
QUEUE_FULL_RETRY_AFTER_S = 30


async def submit_job(request: Request, *, settings: Settings, store: JobStore, queue: JobQueue,
                     results: ResultsStore, idempotency_key: str | None, owner: str = "") -> tuple[JobRecord, bool]:
    """Create and enqueue the job described by the multipart ``request``.

    Args:
        owner: Fingerprint of the caller's key: the job's owner, and the
            scope of ``idempotency_key`` and of the per-client queue cap.

    Returns:
        The job, and whether it was created by this call (``False``: a retry with a known
        ``idempotency_key`` and the same files and parameters; nothing is then kept of it).

    Raises:
        ApiError: 4xx for a refused upload, 429 when too many jobs are queued, 507 when the
            results volume is full (nothing of the upload is kept).
        InputError: An image or parameter the engine would refuse (422).
        pydantic.ValidationError: Malformed parameters (422).
    """
    if idempotency_key is not None:
        if not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise ApiError(400, "invalid_idempotency_key",
                           "Idempotency-Key must be 1-128 characters from A-Z a-z 0-9 . _ : -")
        existing = await store.find_idempotent(owner, idempotency_key)
        known = await store.get(existing) if existing else None
    else:
        known = None
    if known is None:  # a retry of a queued job needs no room in the queue
        counts = await store.queued_counts(owner)
        if counts.total >= settings.max_queued:
            raise _queue_full(QueueFull("service", settings.max_queued))
        if counts.owner >= settings.max_queued_per_client:
            raise _queue_full(QueueFull("client", settings.max_queued_per_client))

    job_id = new_job_id()
    staging = staging_dir(settings, results) / job_id
    try:
        staging.mkdir(parents=True)
        upload = await receive_form(
            request.headers.get("content-type"), request.headers.get("content-length"), request.stream(),
            staging, file_fields=frozenset(INPUT_FIELDS), max_file_bytes=settings.max_upload_bytes)
        # Inputs given by URL land where their uploads would have: the checks below are the same.
        await fetch_inputs(upload.fields, upload.files, staging, settings=settings)
        webhook = await run_in_threadpool(_webhook, upload.fields, settings)  # resolves the host: blocking
        params = JobCreate.model_validate(upload.fields, context={"max_iterations": settings.max_iterations})
        fingerprint = await run_in_threadpool(request_fingerprint, params, upload.files)
        if known is not None:
            shutil.rmtree(staging, ignore_errors=True)
            return await _retried(store, known, fingerprint, idempotency_key or ""), False
        files = await run_in_threadpool(place_inputs, params, upload.files, staging, settings=settings)
        await run_in_threadpool(results.put_folder, job_id, staging)
    except ResultsUnavailable as exc:
        shutil.rmtree(staging, ignore_errors=True)
        log.warning("upload refused, the results store is unavailable: %s", exc)
        raise ApiError(503, "unavailable", "the results store (object storage) is unreachable; the upload "
                       "was not stored; retry shortly", headers={"Retry-After": "5"}) from None
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        log.error("upload refused, the results volume is full: %s", exc)
        raise ApiError(507, "insufficient_storage", "the results volume is full (or its quota is used up): "
                       "the upload was not stored; retry later") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    try:
        winner = await store.create(job_id, task=params.task, params=params.model_dump(mode="json"),
                                    files=files, owner=owner, idempotency_key=idempotency_key,
                                    time_limit_s=settings.job_time_limit_s, max_queued=settings.max_queued,
                                    max_queued_per_owner=settings.max_queued_per_client,
                                    dispatch_grace_s=settings.lease_s, fingerprint=fingerprint)
        # Read before enqueueing: the answer shows the job as submitted (queued, with its
        # place in the queue), whatever a fast worker does with it next.
        record = await store.get(winner)
        if winner == job_id:
            if webhook is not None:  # before the message: the worker's events must find it
                await store.subscribe_webhook(job_id, webhook)
            await run_in_threadpool(queue.enqueue, job_id, time_limit_s=settings.job_time_limit_s,
                                    kill_after_s=max(1, settings.hard_time_limit_s - settings.soft_time_limit_s))
    except QueueFull as exc:
        await _delete_files(results, job_id)
        raise _queue_full(exc) from None
    except BrokerUnavailable as exc:
        log.warning("job %s not enqueued, submission refused: %s", job_id, exc)
        await _roll_back(store, results, job_id, owner=owner)
        raise ApiError(503, "unavailable", "the job queue (broker) is unreachable; retry shortly",
                       headers={"Retry-After": "5"}) from None
    except Exception:
        await _roll_back(store, results, job_id, owner=owner)
        raise
    if record is None:
        raise ApiError(409, "conflict", "the job was deleted while it was being submitted")
    if winner != job_id:  # a concurrent retry with the same key got there first
        await _delete_files(results, job_id)
        return await _retried(store, record, fingerprint, idempotency_key or ""), False
    await _confirm_dispatch(store, job_id)
    return record, True


def _webhook(fields: dict[str, str], settings: Settings) -> WebhookSubscription | None:
    """Take the webhook fields out of ``fields`` (they are not engine parameters) and check the target."""
    try:
        return subscription_from_form(fields, enabled=settings.webhook_secret is not None,
                                      allow_http=settings.webhook_allow_http,
                                      allow_private=settings.webhook_allow_private)
    except InvalidWebhook as exc:
        raise ApiError(422, "invalid_webhook", str(exc)) from None


def request_fingerprint(params: JobCreate, files: dict[str, Path]) -> str:
    """A digest of what a submission asks for: its parameters and the bytes of each upload."""
    digest = hashlib.sha256(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode())
    for name in sorted(files):
        with open(files[name], "rb") as handle:
            digest.update(f"\n{name}:{hashlib.file_digest(handle, 'sha256').hexdigest()}".encode())
    return digest.hexdigest()


async def _retried(store: JobStore, record: JobRecord, fingerprint: str, idempotency_key: str) -> JobRecord:
    """The job an idempotent retry gets back, if it asks for the same thing as the first request."""
    recorded = await store.fingerprint(record.id)
    if recorded and recorded != fingerprint:
        raise ApiError(422, "idempotency_mismatch",
                       f"Idempotency-Key {idempotency_key!r} was used for job {record.id} with other files or "
                       "parameters; use a new key for a new request")
    return record


async def _roll_back(store: JobStore, results: ResultsStore, job_id: str, *, owner: str) -> None:
    await store.delete(job_id, owner=owner)
    await _delete_files(results, job_id)


async def _delete_files(results: ResultsStore, job_id: str) -> None:
    try:
        await run_in_threadpool(results.delete, job_id)
    except ResultsUnavailable as exc:  # no record names them: the sweep deletes them a retention later
        log.warning("job %s: its files could not be deleted (%s); the sweep will", job_id, exc)


async def _confirm_dispatch(store: JobStore, job_id: str) -> None:
    # The message is out: the job is accepted whatever happens here. Unconfirmed, it is
    # sent once more after the grace, and the worker that gets it second drops it.
    try:
        await store.confirm_dispatch(job_id)
    except StoreError as exc:
        log.warning("job %s: dispatch not confirmed (%s); a reaper will send it again", job_id, exc)


def _queue_full(exc: QueueFull) -> ApiError:
    return ApiError(429, "queue_full", str(exc), headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)})


def place_inputs(params: JobCreate, uploads: dict[str, Path], staging: Path, *,
                 settings: Settings) -> dict[str, str]:
    """Check the uploaded images against the request and give them their public names.

    Returns:
        Public file name -> path relative to the job directory (``{"input.png": "input.png"}``).

    Raises:
        InputError: Missing image, unreadable/oversized image, wrong mask size...
    """
    if "image" not in uploads:
        raise InputError("invalid_parameter", "image: a file part named 'image' (or an image_url) is required")
    spec = params.to_spec()
    validate_spec(spec, max_iterations=settings.max_iterations)
    infos: dict[str, ImageInfo] = {}
    for field, path in uploads.items():
        try:
            infos[field] = inspect_image(
                path,
                max_pixels=settings.max_output_pixels if field == "reference" else settings.max_pixels,
                min_size=1 if field in ("mask", "kernel") else settings.min_size)
        except InputError as exc:
            raise InputError(exc.code, exc.message if field == "image" else f"{field}: {exc.message}") from exc
    check_inputs(spec, infos["image"], mask=infos.get("mask"), kernel=infos.get("kernel"),
                 reference=infos.get("reference"), max_output_pixels=settings.max_output_pixels,
                 min_size=settings.min_size)
    if "kernel" in uploads:
        # Its values too (colour, all black): refused now rather than failing in the worker.
        load_kernel(uploads["kernel"], max_size=(infos["image"].width, infos["image"].height))
    files = {}
    for field, path in uploads.items():
        name = input_file_name(field, infos[field].format)
        path.rename(staging / name)
        files[name] = name
    return files


def form_openapi() -> dict[str, Any]:
    """OpenAPI ``requestBody`` of ``POST /v1/jobs`` (the body is parsed by hand, as a stream)."""
    params = JobCreate.model_json_schema()
    binary = {"type": "string", "format": "binary"}
    properties = {
        "image": {**binary, "description": "The image to restore (PNG, JPEG, ...)."},
        "mask": {**binary, "description": "inpaint: white = known pixel, black = to fill; same size."},
        "kernel": {**binary, "description": "deblur: the blur kernel as a grayscale image (brighter = more "
                                            "weight), at most the image's size; instead of blur_sigma."},
        "reference": {**binary, "description": "Clean image the size of the output, to score PSNR against."},
        **{name: _not_null(field) for name, field in params["properties"].items()},
        **input_url_form_fields(),
        **webhook_form_fields(),
    }
    # The image is uploaded or fetched: one of `image` and `image_url`.
    schema = {"type": "object", "properties": properties, "required": params.get("required", []),
              "anyOf": [{"required": ["image"]}, {"required": ["image_url"]}], "additionalProperties": False}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def _not_null(field: dict[str, Any]) -> dict[str, Any]:
    """A form field is absent rather than null: drop the ``null`` branch of optional fields."""
    branches = [b for b in field.get("anyOf", []) if b.get("type") != "null"]
    if len(branches) != 1:
        return field
    return {**{k: v for k, v in field.items() if k != "anyOf"}, **branches[0]}
