"""What a job measured: its metrics, declared once.

The job object (``core.schemas``), the ``job.completed`` webhook (``core.webhooks``)
and the worker's record of a job's end all read these fields by name from a job
record or an engine result (:meth:`Metrics.of`). Below both of them, since the
webhooks' models are imported by the settings.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Metrics(BaseModel):
    loss: float | None = Field(None, description="Latest data-fit loss.")
    psnr: float | None = Field(None, description="Latest PSNR (dB) against the reference, if any.")
    psnr_degraded: float | None = Field(None, description="PSNR of A(output) against the measurement.")
    ssim: float | None = None
    psnr_best: float | None = Field(None, description="Best PSNR so far (needs a reference).")
    psnr_output: float | None = Field(None, description="PSNR of the final result (needs a reference).")
    best_iteration: int | None = None
    early_stop_iteration: int | None = Field(None, description="Where early stopping fired.")

    @classmethod
    def of(cls, source: Any) -> Metrics | None:
        """The metrics that ``source`` (a job record, an engine result) holds, by name; ``None`` if none."""
        metrics = cls(**{name: getattr(source, name, None) for name in cls.model_fields})
        return None if metrics == cls() else metrics
