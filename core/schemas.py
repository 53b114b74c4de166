"""Request and response bodies of the job API."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from core.layout import snapshot_names, snapshot_order
from core.store import JobRecord, JobStatus
from dip_engine.problems import PROBLEMS
from dip_engine.spec import SCALES, EarlyStopMode, PresetName, RestoreSpec, TaskName

__all__ = [
    "ErrorBody", "ErrorInfo", "HistoryPoint", "JobError", "JobCreate", "JobInputs", "JobLinks", "JobList",
    "JobOutputs", "JobPublic", "JobStatus", "Metrics", "Progress", "Snapshot", "SnapshotPage",
]

_MAX_SEED = 2**32 - 1


class JobCreate(BaseModel):
    """Parameters of a restoration job: the form fields of ``POST /v1/jobs``.

    Unset optional values take the preset's value. Validate with
    ``JobCreate.model_validate(fields, context={"max_iterations": n})`` to
    enforce the server's iteration cap.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    task: TaskName = Field(description="What to restore: " + "; ".join(
        f"{name}: {problem.description}" for name, problem in PROBLEMS.items()) + ".")
    scale: int = Field(4, description="Super-resolution factor: 2, 4 or 8.",
                       json_schema_extra={"enum": list(SCALES)})
    from_hr: bool = Field(False, description="superres: the image is high-resolution; downsample it "
                                             "by `scale` first and score the result against it.")
    add_noise_sigma: float | None = Field(None, gt=0, le=255, description="denoise (and deblur with "
                                          "from_sharp): add Gaussian noise of this sigma (0-255 scale) and "
                                          "score against the clean image.")
    drop_fraction: float | None = Field(None, gt=0, lt=1, description="inpaint: drop this fraction of "
                                        "pixels at random (seeded) instead of uploading a mask.")
    blur_sigma: float | None = Field(None, gt=0, le=20, description="deblur: the blur is a Gaussian of this "
                                     "sigma in pixels (or upload a `kernel` image instead).")
    from_sharp: bool = Field(False, description="deblur: the image is sharp; blur it with the kernel first "
                                                "(then add add_noise_sigma) and score the result against it.")
    jpeg_quality: int | None = Field(None, ge=1, le=95, description="dejpeg: the image is clean; compress it "
                                     "as a JPEG of this quality first and score the result against it.")
    noise_sigma: float | None = Field(None, ge=0, le=255, description="The image's noise level (0-255 scale) "
                                      "if you know it (0: noise-free); early stopping waits until the fit "
                                      "reaches it. Unset: estimated from the image.")
    preset: PresetName = Field("fast", description="Hyperparameter preset. fast: sized for a CPU; quality: "
                               "the paper's networks with our loop improvements; paper: the published "
                               "protocol exactly (fixed iterations, raw output, no early stopping).")
    iterations: int | None = Field(None, ge=1, description="Optimisation steps (server maximum applies).")
    log_every: int | None = Field(None, ge=1, description="Iterations between history points.")
    snapshot_every: int | None = Field(None, ge=1, description="Iterations between snapshot PNGs.")
    early_stop: EarlyStopMode | None = Field(None, description="auto: stop when the output stops "
                                             "improving (ES-WMV); off: run every iteration.")
    seed: int = Field(0, ge=0, le=_MAX_SEED, description="Random seed (input noise, dropped pixels).")

    @field_validator("scale")
    @classmethod
    def _check_scale(cls, value: int) -> int:
        if value not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(map(str, SCALES))}, got {value}")
        return value

    @field_validator("iterations")
    @classmethod
    def _check_iteration_cap(cls, value: int | None, info: ValidationInfo) -> int | None:
        cap = (info.context or {}).get("max_iterations")
        if value is not None and cap is not None and value > cap:
            raise ValueError(f"iterations must be at most {cap} on this server, got {value}")
        return value

    def to_spec(self, *, device: str = "auto", deterministic: bool = False) -> RestoreSpec:
        return RestoreSpec(**self.model_dump(), device=device, deterministic=deterministic)  # type: ignore[arg-type]


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


class Metrics(BaseModel):
    loss: float | None = Field(None, description="Latest data-fit loss.")
    psnr: float | None = Field(None, description="Latest PSNR (dB) against the reference, if any.")
    psnr_degraded: float | None = Field(None, description="PSNR of A(output) against the measurement.")
    ssim: float | None = None
    psnr_best: float | None = Field(None, description="Best PSNR so far (needs a reference).")
    psnr_output: float | None = Field(None, description="PSNR of the final result (needs a reference).")
    best_iteration: int | None = None
    early_stop_iteration: int | None = Field(None, description="Where early stopping fired.")


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
        metrics = Metrics(**{name: getattr(record, name) for name in Metrics.model_fields})
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
            metrics=None if metrics == Metrics() else metrics,
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


class HistoryPoint(BaseModel):
    """One logged point of the optimisation."""

    iteration: int
    loss: float | None = Field(None, description="None if it was not finite (a diverging run).")
    psnr: float | None = None
    psnr_avg: float | None = None
    psnr_degraded: float | None = None
    ssim: float | None = None
    elapsed_s: float | None = None


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)
