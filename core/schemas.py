"""Request and response bodies of the job API."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator

from core.layout import snapshot_names, snapshot_order
from core.quality import Metrics
from core.store import JobRecord, JobStatus
from dip_engine.history import LogRecord
from dip_engine.problems import PROBLEMS
from dip_engine.spec import SCALES, RestoreSpec, TaskName, request_fields

__all__ = [
    "ErrorBody", "ErrorInfo", "HistoryPoint", "JobError", "JobCreate", "JobInputs", "JobLinks", "JobList",
    "JobOutputs", "JobPublic", "JobStatus", "Metrics", "Progress", "Snapshot", "SnapshotPage",
]

class _JobCreateBase(BaseModel):
    """Parameters of a restoration job: the form fields of ``POST /v1/jobs``.

    Built from :class:`~dip_engine.spec.RestoreSpec` (the fields a job may set, with their
    descriptions and bounds). Unset optional values take the preset's value. Validate with
    ``JobCreate.model_validate(fields, context={"max_iterations": n})`` to enforce the
    server's iteration cap.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("scale", check_fields=False)
    @classmethod
    def _check_scale(cls, value: int) -> int:
        if value not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(map(str, SCALES))}, got {value}")
        return value

    @field_validator("iterations", check_fields=False)
    @classmethod
    def _check_iteration_cap(cls, value: int | None, info: ValidationInfo) -> int | None:
        cap = (info.context or {}).get("max_iterations")
        if value is not None and cap is not None and value > cap:
            raise ValueError(f"iterations must be at most {cap} on this server, got {value}")
        return value

    def to_spec(self, *, device: str = "auto", deterministic: bool = False) -> RestoreSpec:
        return RestoreSpec(**self.model_dump(), device=device, deterministic=deterministic)  # type: ignore[arg-type]


def _job_create() -> type[_JobCreateBase]:
    described = {"task": "What to restore: " + "; ".join(
        f"{name}: {problem.description}" for name, problem in PROBLEMS.items()) + "."}
    extra = {"scale": {"enum": list(SCALES)}}
    definitions: dict[str, Any] = {}
    for each in request_fields():
        if not each.param.service:
            continue
        bounds = {key: value for key in ("gt", "ge", "lt", "le") if (value := getattr(each.param, key)) is not None}
        default = ... if each.required else each.default
        definitions[each.name] = (each.type, Field(default, description=described.get(each.name, each.param.help),
                                                   json_schema_extra=extra.get(each.name), **bounds))
    return create_model("JobCreate", __base__=_JobCreateBase, __module__=__name__, **definitions)


JobCreate = _job_create()


class Progress(BaseModel):
    iteration: int = Field(description="Iterations done so far.")
    total: int = Field(description="Iterations the run will do at most.")
    fraction: float = Field(description="iteration / total, in [0, 1].")
    iterations_per_second: float | None = None
    eta_seconds: float | None = Field(None, description="Time left at the current speed, until the expected end: "
                                                        "the cap, or sooner once early stopping counts down.")
    elapsed_s: float | None = Field(None, description="Seconds spent optimising.")
    expected_end: int | None = Field(None, description="The iteration the run is expected to end at: the cap, "
                                                       "or sooner while early stopping counts down its patience.")

    @classmethod
    def of(cls, iteration: int, total: int, *, iterations_per_second: float | None = None,
           elapsed_s: float | None = None, end: int | None = None) -> Progress:
        """``end``: where the run is expected to stop (early stopping's countdown), default ``total``."""
        remaining = (total if end is None else end) - iteration
        eta = max(0, remaining) / iterations_per_second if iterations_per_second else None
        return cls(iteration=iteration, total=total, fraction=min(1.0, iteration / total) if total else 0.0,
                   iterations_per_second=iterations_per_second, eta_seconds=eta, elapsed_s=elapsed_s,
                   expected_end=end)


class JobError(BaseModel):
    """Why a job failed."""

    code: str = Field(description="Stable machine-readable code: invalid_image, worker_lost, "
                                  "time_limit, internal_error...")
    message: str = Field(description="What went wrong.")


class ErrorInfo(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_image, not_found.")
    message: str = Field(description="What is wrong, naming the bad value.")
    details: list[dict[str, Any]] | None = Field(None, description="Per-field problems, when several.")


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: ``{"error": {"code", "message"}}``."""

    error: ErrorInfo


class JobInputs(BaseModel):
    image: str | None = None
    mask: str | None = None
    kernel: str | None = None
    reference: str | None = None


class JobOutputs(BaseModel):
    result: str | None = Field(None, description="The restored image (PNG).")
    best: str | None = Field(None, description="The best iterate by PSNR, or the early-stop output.")
    last: str | None = Field(None, description="The last iterate.")
    degraded: str | None = Field(None, description="The measurement made from a clean input "
                                 "(add_noise_sigma, from_hr, drop_fraction, from_sharp, jpeg_quality), "
                                 "for comparison.")
    curves: str | None = Field(None, description="Loss/PSNR curves (PNG).")
    metrics: str | None = Field(None, description="metrics.json written by the engine.")
    # Only the count and the latest: a job may have hundreds, listed by `links.snapshots` a page at a time.
    snapshot_count: int = Field(0, description="Snapshot PNGs the job has now (list them at `links.snapshots`).")
    latest_snapshot: str | None = Field(None, description="The newest snapshot PNG.")


class JobLinks(BaseModel):
    self: str
    history: str
    events: str
    snapshots: str
    cancel: str


class JobPublic(BaseModel):
    """A job as clients see it. URLs are absolute."""

    id: str
    task: TaskName
    params: JobCreate
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queue_position: int | None = Field(None, description="While queued: 1 = next to start.")
    attempts: int = Field(0, description="Times a worker has started this job.")
    cancel_requested: bool = False
    progress: Progress | None = None
    metrics: Metrics | None = None
    inputs: JobInputs
    outputs: JobOutputs
    error: JobError | None = None
    links: JobLinks

    @classmethod
    def from_record(cls, record: JobRecord, *, job_url: str) -> JobPublic:
        """Present ``record``; ``job_url`` is the job's own absolute URL."""
        files = {name: f"{job_url}/files/{name}" for name in record.files}
        snapshots = snapshot_names(files)

        def first(prefix: str) -> str | None:
            return next((url for name, url in files.items() if name.startswith(prefix)), None)

        progress = None
        if record.iteration is not None and record.total:
            progress = Progress.of(record.iteration, record.total,
                                   iterations_per_second=record.iterations_per_second,
                                   elapsed_s=record.elapsed_s, end=record.expected_end)
        return cls(
            id=record.id,
            task=record.task,  # type: ignore[arg-type]
            params=JobCreate.model_validate(record.params),
            status=record.status,
            created_at=_time(record.created_at),
            started_at=_time(record.started_at),
            finished_at=_time(record.finished_at),
            queue_position=record.queue_position if record.status is JobStatus.queued else None,
            attempts=record.attempts,
            cancel_requested=record.cancel_requested,
            progress=progress,
            metrics=Metrics.of(record),
            inputs=JobInputs(image=first("input."), mask=first("mask."), kernel=first("kernel."),
                             reference=first("reference.")),
            outputs=JobOutputs(result=first("result."), best=first("best."), last=first("last."),
                               degraded=first("degraded."), curves=first("curves."), metrics=first("metrics."),
                               snapshot_count=len(snapshots),
                               latest_snapshot=files[snapshots[-1]] if snapshots else None),
            error=JobError(code=record.error_code, message=record.error_message or "")
            if record.error_code else None,
            links=JobLinks(self=job_url, history=f"{job_url}/history", events=f"{job_url}/events",
                           snapshots=f"{job_url}/snapshots", cancel=f"{job_url}/cancel"),
        )


class JobList(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next (older) page.")


class Snapshot(BaseModel):
    """One snapshot PNG: the output at an iteration (also the data of a `snapshot` event)."""

    iteration: int
    name: str = Field(description="Its file name, as served under the job's `/files/`.")
    url: str

    @classmethod
    def of(cls, name: str, *, files_url: str) -> Snapshot:
        """The snapshot file ``name`` (``snapshot_00050.png``); ``files_url`` is the job's ``.../files``."""
        return cls(iteration=snapshot_order(name), name=name, url=f"{files_url}/{name}")


class SnapshotPage(BaseModel):
    items: list[Snapshot] = Field(description="Oldest first.")
    total: int = Field(description="Snapshots the job has now, on every page.")
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next (newer) page.")


def _history_point() -> type[BaseModel]:
    """The engine's :class:`~dip_engine.history.LogRecord`, as the API serves it: every value but
    the iteration may be null (not measured, or not finite in a diverging run)."""
    fields: dict[str, Any] = {
        field.name: (int, ...) if field.name == "iteration" else
        (float | None, Field(None, description=_HISTORY_DESCRIPTIONS.get(field.name)))
        for field in dataclasses.fields(LogRecord)
    }
    return create_model("HistoryPoint", __doc__="One logged point of the optimisation.", **fields)


_HISTORY_DESCRIPTIONS = {
    "loss": "The data-fit loss; null if it was not finite (a diverging run).",
    "psnr_degraded": "PSNR (dB) of A(output) against the measurement.",
    "elapsed_s": "Seconds spent optimising.",
    "psnr": "PSNR (dB) of the output against the reference (needs one).",
    "psnr_avg": "PSNR (dB) of the averaged output against the reference (needs one).",
    "ssim": "SSIM of the output against the reference (needs one).",
    "variance": "Early stopping's (ES-WMV) windowed variance of the output; null until its window is full.",
}
HistoryPoint = _history_point()


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)
