"""Every setting of the service, read from ``DIP_*`` environment variables (or ``.env``).

One class for the API, the workers and ``dip serve``; build it with
``get_settings()`` (cached), never at import time.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIP_", env_file=".env", extra="ignore")

    redis_url: str | None = Field(
        None, description="Redis to use; unset: `dip serve` starts a private one in var_dir."
    )
    var_dir: Path = Field(Path("var"), description="Embedded Redis data (append-only file) and logs.")
    results_dir: Path = Field(Path("var/results"), description="Results volume: inputs and outputs per job.")
    host: str = Field("127.0.0.1", description="API bind address.")
    port: int = Field(8000, description="API port.")

    max_upload_bytes: int = Field(20 * 1024 * 1024, description="Largest accepted upload, per file.")
    max_pixels: int = Field(4_000_000, description="Largest input image (width x height).")
    max_output_pixels: int = Field(16_000_000, description="Largest output (super-resolution multiplies).")
    min_size: int = Field(16, description="Smallest accepted width or height.")
    max_iterations: int = Field(20_000, description="Upper bound on a job's iterations.")

    retention_s: int = Field(7 * 24 * 3600, description="Job records and files are deleted after this.")
    sweep_interval_s: int = Field(3600, description="How often the retention sweep runs.")
    soft_time_limit_s: int = Field(3 * 3600, description="Celery soft time limit per job.")
    hard_time_limit_s: int = Field(3 * 3600 + 300, description="Celery hard time limit per job.")
    max_attempts: int = Field(3, description="A job that kills its worker this many times fails.")
    progress_interval_s: float = Field(0.25, description="Least time between progress writes to Redis.")
    checkpoint_every: int = Field(100, description="Iterations between resumable checkpoints.")

    device: str = Field("auto", description="Worker device: auto, cpu or cuda.")
    worker_concurrency: int = Field(1, description="Worker processes (one per GPU).")
    queue: str = Field("dip", description="Celery queue name.")

    @property
    def visibility_timeout_s(self) -> int:
        # Redis re-delivers unacknowledged messages after this; it must outlast the
        # longest job or a running job would be handed to a second worker.
        return self.hard_time_limit_s + 600


@lru_cache
def get_settings() -> Settings:
    return Settings()
