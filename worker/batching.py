"""Company for a claimed job: queued jobs that can be trained with it as one batched model.

A worker with ``DIP_BATCH_MAX`` > 1 that has claimed a job looks through the queue, for up
to ``DIP_BATCH_WAIT_S``, for jobs that ask for the same run on an image of the same size,
and claims them too. Their own messages, delivered later, find them held (or finished) and
are dropped, as any duplicate delivery is. If this worker dies, their leases lapse and the
reaper re-queues each of them, as for a job run alone.

Only the record and the image's header are read here; the engine has the last word
(:func:`dip_engine.restore.restore_batch` trains together only the runs whose nets, loops
and shapes agree, and the others one by one).
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

from PIL import Image

from core.config import Settings
from core.results import ResultsStore, ResultsUnavailable
from core.store import Claim, ClaimOutcome, JobRecord, JobStatus, StoreUnavailable, WorkerStore
from dip_engine.io import IMAGE_FORMATS

log = logging.getLogger(__name__)

# Parameters that differ between jobs of one batch: each job keeps its own.
PER_JOB = frozenset({"seed", "noise_sigma", "add_noise_sigma", "drop_fraction"})
POLL_S = 0.2


def batch_key(record: JobRecord, results: ResultsStore) -> tuple[Any, ...] | None:
    """What jobs of one batch share; ``None`` when the job's image cannot be read."""
    name = next((name for name in record.files if name.startswith("input.")), None)
    if name is None:
        return None
    try:
        local = results.local_path(record.id, record.files[name])
        # Object storage: the image is read into memory (it is at most DIP_MAX_UPLOAD_BYTES).
        source = local if local is not None else io.BytesIO(b"".join(results.read(record.id, record.files[name])))
        with Image.open(source, formats=IMAGE_FORMATS) as image:
            size = image.size
    except (OSError, ValueError, ResultsUnavailable):
        return None  # the engine reports a bad input with its own message; an outage runs the job alone
    params = {key: value for key, value in record.params.items() if key not in PER_JOB}
    masked = any(name.startswith("mask.") for name in record.files)
    return record.task, repr(sorted(params.items())), size, masked


def gather(store: WorkerStore, leader: Claim, settings: Settings, *, results: ResultsStore,
           worker: str) -> list[Claim]:
    """Claim up to ``batch_max - 1`` queued jobs that can share ``leader``'s batch, looking
    for up to ``batch_wait_s``. Returns their claims (none when batching is off)."""
    if settings.batch_max <= 1 or leader.record is None:
        return []
    key = batch_key(leader.record, results)
    if key is None:
        return []
    time_limit = store.time_limit_s(leader.record.id)
    taken = {leader.record.id}
    joined: list[Claim] = []
    # A queued job's parameters, image and time limit do not change: read each one's key once.
    keys: dict[str, tuple[Any, ...] | None] = {}
    deadline = time.monotonic() + settings.batch_wait_s
    try:
        while True:
            for job_id in store.queued_ids(limit=4 * settings.batch_max + 16):
                if job_id in taken:
                    continue
                record = store.get(job_id)
                if record is None or record.status is not JobStatus.queued or record.cancel_requested:
                    continue
                if job_id not in keys:
                    keys[job_id] = (None if store.time_limit_s(job_id) != time_limit
                                    else batch_key(record, results))
                if keys[job_id] != key:
                    continue
                claim = store.claim(job_id, worker=worker, max_attempts=settings.max_attempts,
                                    lease_s=settings.lease_s)
                if claim.outcome is ClaimOutcome.claimed and claim.record is not None:
                    joined.append(claim)
                    taken.add(job_id)
                    if len(joined) + 1 >= settings.batch_max:
                        return joined
            if time.monotonic() >= deadline:
                return joined
            time.sleep(POLL_S)
    except StoreUnavailable as exc:
        # The claimed jobs are held and run; any others wait for a worker of their own.
        log.warning("job %s: Redis unreachable while looking for jobs to batch with it (%s); running %d",
                    leader.record.id, exc, len(joined) + 1)
        return joined
