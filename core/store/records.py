"""What a job record is once read back from Redis: typed, parsed, read-only."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class JobStatus(str, Enum):
    """Lifecycle of a job: ``queued -> running -> succeeded | failed | canceled``.

    A queued job can also go straight to ``canceled`` (never started) or
    ``failed`` (its worker died too often). A running job goes back to
    ``queued`` when its worker hands it back (shutting down) or vanished
    (its lease lapsed); it then resumes from its last checkpoint.
    """

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self not in (JobStatus.queued, JobStatus.running)


class EventType(str, Enum):
    """Kinds of entries in a job's event stream (and of its SSE events)."""

    progress = "progress"
    snapshot = "snapshot"
    status = "status"


@dataclass(frozen=True)
class JobRecord:
    """One job as stored: parameters, lifecycle, latest progress, files.

    Times are Unix seconds taken from the Redis server clock, so API and
    workers on different machines agree. ``files`` maps public file names
    (``result.png``, ``snapshot_00050.png``...) to paths relative to the job's
    directory; it is the allowlist of what can be downloaded.
    """

    id: str
    status: JobStatus
    task: str
    params: dict[str, Any]
    created_at: float
    owner: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    cancel_requested: bool = False
    queue_position: int | None = None
    iteration: int | None = None
    total: int | None = None
    start_iteration: int | None = None
    iterations_per_second: float | None = None
    elapsed_s: float | None = None
    expected_end: int | None = None
    loss: float | None = None
    psnr: float | None = None
    psnr_degraded: float | None = None
    ssim: float | None = None
    psnr_best: float | None = None
    psnr_output: float | None = None
    best_iteration: int | None = None
    early_stop_iteration: int | None = None
    stop_reason: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_redis(cls, fields: dict[str, str], files: dict[str, str],
                   queue_rank: int | None) -> JobRecord:
        """Build a record from the job hash, its files hash and its rank in the queue."""
        return cls(
            id=fields["id"],
            status=JobStatus(fields["status"]),
            task=fields["task"],
            params=json.loads(fields["params"]),
            created_at=float(fields["created_at"]),
            owner=fields.get("owner", ""),
            started_at=_float(fields.get("started_at")),
            finished_at=_float(fields.get("finished_at")),
            attempts=int(fields.get("attempts", 0)),
            cancel_requested=fields.get("cancel_requested") == "1",
            queue_position=None if queue_rank is None else queue_rank + 1,
            iteration=_int(fields.get("iteration")),
            total=_int(fields.get("total")),
            start_iteration=_int(fields.get("start_iteration")),
            iterations_per_second=_float(fields.get("iterations_per_second")),
            elapsed_s=_float(fields.get("elapsed_s")),
            expected_end=_int(fields.get("expected_end")),
            loss=_float(fields.get("loss")),
            psnr=_float(fields.get("psnr")),
            psnr_degraded=_float(fields.get("psnr_degraded")),
            ssim=_float(fields.get("ssim")),
            psnr_best=_float(fields.get("psnr_best")),
            psnr_output=_float(fields.get("psnr_output")),
            best_iteration=_int(fields.get("best_iteration")),
            early_stop_iteration=_int(fields.get("early_stop_iteration")),
            stop_reason=fields.get("stop_reason") or None,
            error_code=fields.get("error_code") or None,
            error_message=fields.get("error_message") or None,
            files=dict(files),
        )


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's event stream; ``id`` is the Redis stream id (``"1712-0"``)."""

    id: str
    type: EventType
    data: dict[str, Any]


def encode_fields(values: dict[str, Any]) -> dict[str, str]:
    """Hash fields as strings; ``None`` becomes ``""`` (read back as ``None``)."""
    return {key: _encode(value) for key, value in values.items()}


def _encode(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _float(raw: str | None) -> float | None:
    return float(raw) if raw else None


def _int(raw: str | None) -> int | None:
    return int(raw) if raw else None
