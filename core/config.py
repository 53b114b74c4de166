"""Every setting of the service, read from ``DIP_*`` environment variables (or ``.env``).

One class for the API, the workers and ``dip serve``; build it with
``get_settings()`` (cached), never at import time.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.auth import parse_key_entries
from core.webhooks import secret_key

# Read as a JSON list or comma-separated by the validator, not as JSON only.
KeyList = Annotated[tuple[str, ...], NoDecode]


def parse_sentinel(entry: str) -> tuple[str, int]:
    """A Sentinel address, ``host:port`` (``[v6 address]:port`` too), as (host, port).

    Raises:
        ValueError: not that shape, or the port is not a number in 1..65535 (the entry is named).
    """
    host, sep, port = entry.strip().rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    # A bare IPv6 address is ambiguous (which colon starts the port?): it must be bracketed.
    if not sep or not host or (":" in host and not bracketed):
        raise ValueError(f"DIP_REDIS_SENTINELS: {entry!r} is not host:port")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"DIP_REDIS_SENTINELS: {entry!r} has no valid port (1..65535)")
    return host, int(port)


class Settings(BaseSettings):
    # Inputs are left out of validation errors: they may hold API keys. Our
    # own messages name the bad value where it is not a secret.
    model_config = SettingsConfigDict(env_prefix="DIP_", env_file=".env", extra="ignore",
                                      hide_input_in_errors=True)

    redis_url: str | None = Field(
        None, description="Redis to use; unset (and no redis_sentinels): `dip serve` starts a private one in var_dir."
    )
    var_dir: Path = Field(Path("var"), description="Embedded Redis data (append-only file) and logs.")
    results_dir: Path = Field(Path("var/results"), description="Results volume: inputs and outputs per job.")
    results_url: str | None = Field(
        None, description="Object storage for the jobs' files: `s3://bucket/prefix`, with credentials and "
        "region from the standard AWS variables and the endpoint from s3_endpoint_url. Unset: the "
        "results_dir volume, shared by the API and the workers.")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO...); unset: AWS's.")
    scratch_dir: Path = Field(Path("var/scratch"), description="With results_url: where a worker keeps its "
                              "local copy of the files of the jobs it runs (private to the worker).")
    presign: bool = Field(False, description="With results_url: GET .../files/{name} answers 307 to a "
                          "presigned URL of the object (handed to the job's owner only) instead of "
                          "streaming it through the API.")
    presign_expires_s: int = Field(900, ge=1, le=7 * 86400, description="Lifetime of a presigned URL.")
    results_retry_s: float = Field(120.0, gt=0, description="How long a worker retries an upload to (or a "
                                   "download from) the results store before it hands the job back to the queue.")
    input_buckets: KeyList = Field((), description="Buckets jobs may read inputs from by `s3://` URL "
                                   "(image_url, mask_url, kernel_url, reference_url); none: no s3:// inputs.")
    input_allow_http: bool = Field(False, description="Allow http:// input URLs (else https:// and s3:// only).")
    input_allow_private: bool = Field(False, description="Allow input URLs on private, loopback or "
                                      "link-local addresses.")
    input_fetch_timeout_s: float = Field(30.0, gt=0, le=600, description="How long fetching one input "
                                         "URL may take, in all.")

    redis_sentinels: KeyList = Field((), description="Redis Sentinel addresses (`host:port`, JSON list or "
                                     "comma-separated) for the job store and the broker; redis_url then "
                                     "only gives the password and database, if any.")
    redis_sentinel_master: str = Field("dip", description="The name the sentinels monitor the primary under.")

    host: str = Field("127.0.0.1", description="API bind address.")
    port: int = Field(8000, description="API port.")

    api_keys: KeyList = Field(
        (), description="API keys (JSON list or comma-separated), each a raw key or sha256:<hex>; "
                        "kept as digests. None: no authentication, and the API binds to loopback only.")
    admin_keys: KeyList = Field(
        (), description="Keys that also see every job and /metrics; same format as api_keys.")
    allowed_hosts: KeyList = Field(
        ("localhost", "127.0.0.1", "::1"), description="Host names the API answers for (JSON list or "
        "comma-separated; `*.example.com` for subdomains, `*` for any): a request for another name, "
        "such as a DNS-rebinding page's, gets 400. Add the name clients use when the API is published.")
    allow_open: bool = Field(
        False, description="Allow binding a non-loopback address with no keys configured (anyone "
                           "who reaches it can use the API).")

    max_upload_bytes: int = Field(20 * 1024 * 1024, description="Largest accepted upload, per file.")
    max_pixels: int = Field(4_000_000, description="Largest input image (width x height).")
    max_output_pixels: int = Field(16_000_000, description="Largest output (super-resolution multiplies).")
    min_size: int = Field(16, description="Smallest accepted width or height.")
    max_iterations: int = Field(20_000, description="Upper bound on a job's iterations.")
    max_queued: int = Field(1000, ge=1, description="Jobs waiting for a worker, all clients together; "
                                                    "more submissions get 429.")
    max_queued_per_client: int = Field(100, ge=1, description="Jobs waiting for a worker per API key; "
                                                              "more submissions get 429.")
    max_streams_per_caller: int = Field(
        8, ge=1, description="Event streams (GET /v1/jobs/{id}/events) open at once per API key, or per "
                             "client address when no keys are configured, across every API process; "
                             "more get 429 too_many_streams.")
    max_job_seconds: int | None = Field(
        None, ge=1, description="Wall-time limit of one run of a job; unset: soft_time_limit_s, "
                                "the most it may be.")

    retention_s: int = Field(7 * 24 * 3600, description="Job records and files are deleted this long after a job ends (queued and running jobs never expire).")
    sweep_interval_s: int = Field(3600, description="How often the retention sweep runs.")
    soft_time_limit_s: int = Field(3 * 3600, description="Celery soft time limit per job.")
    hard_time_limit_s: int = Field(3 * 3600 + 300, description="Celery hard time limit per job.")
    max_attempts: int = Field(3, description="A job that kills its worker this many times fails.")
    progress_interval_s: float = Field(0.25, description="Least time between progress writes to Redis.")
    checkpoint_every: int = Field(100, description="Iterations between resumable checkpoints.")
    max_snapshots: int = Field(100, ge=0, description="Snapshot PNGs kept per job: one per logged point up "
                               "to this many, evenly thinned past it (0: none).")
    lease_s: float = Field(30.0, gt=0, description="A running job's lease: renewed every third of it; "
                           "a job whose lease lapsed (its worker died, or was cut off from Redis) more "
                           "than half a lease ago is re-queued, and a worker that could not renew it for a "
                           "whole lease stops the job, writing nothing more. Also the grace a "
                           "queued job's message has to be confirmed sent (by the API on submission, by "
                           "a worker on re-queueing) before a worker's reaper sends it again.")
    redispatch_s: float = Field(900.0, ge=0, description="A queued job's message is sent again this long "
                                "after the last one, then after twice as long, and so on, until a worker "
                                "claims the job: a broker can lose a message it delivers while Redis is full "
                                "or failing over. Extra messages are dropped by the worker that gets them "
                                "(0: never).")
    redis_retry_s: float = Field(120.0, gt=0, description="How long a worker retries a job's claim or "
                                 "final write while Redis is unreachable or refuses writes (full, "
                                 "read-only); a claim still refused then sends the job's message again "
                                 "for later.")

    allow_eviction: bool = Field(False, description="Run even on a Redis whose maxmemory-policy may evict "
                                 "keys (volatile-* or allkeys-*), which can silently delete jobs.")

    device: str = Field("auto", description="Worker device: auto, cpu or cuda.")
    device_failure_limit: int = Field(3, ge=1, description="A worker process whose device (or results "
                                      "disk) fails this many jobs in a row stops taking jobs and says so on "
                                      "/readyz; queued jobs wait for healthy workers. A job's own bad input "
                                      "or size (out_of_memory) does not count; a job that ends well resets "
                                      "the count.")
    deterministic: bool = Field(False, description="GPU workers: repeatable seeded runs (deterministic "
                                "cuDNN and PyTorch algorithms, no autotuning); slower.")
    worker_concurrency: int = Field(1, description="Worker processes (one per GPU).")
    batch_max: int = Field(1, ge=1, le=64, description="Jobs a worker process trains at once as one "
                           "batched model: queued jobs of the same task, parameters (but seed and noise "
                           "level), image size and time limit. Worth it on a GPU, where one small job "
                           "leaves most of the card idle; 1 (the default) runs one job at a time.")
    batch_wait_s: float = Field(0.0, ge=0, le=60, description="How long a worker that has claimed a job "
                                "waits for compatible queued jobs to join its batch (batch_max > 1).")
    queue: str = Field("dip", description="Celery queue name.")

    webhook_secret: SecretStr | None = Field(None, description="Signs webhook deliveries (Standard Webhooks): "
                                             "`whsec_` + base64 of 24+ random bytes. Unset: jobs cannot ask "
                                             "for a webhook.")
    webhook_allow_http: bool = Field(False, description="Allow http:// webhook targets (else https only).")
    webhook_allow_private: bool = Field(False, description="Allow webhook targets on private, loopback or "
                                        "link-local addresses (checked at submission and at each delivery).")
    webhook_progress_interval_s: float = Field(10.0, gt=0, description="Least time between two `progress` "
                                               "webhooks of a job (the latest progress is sent).")
    webhook_timeout_s: float = Field(10.0, gt=0, le=60, description="How long a webhook receiver has to "
                                     "answer one delivery.")
    webhook_retry_base_s: float = Field(5.0, gt=0, description="First wait before retrying a failed webhook "
                                        "delivery; it doubles each time, up to an hour.")
    webhook_give_up_s: float = Field(86400.0, gt=0, description="A webhook delivery failing this long is given "
                                     "up, with the job's later events (logged).")

    @field_validator("input_buckets", "redis_sentinels", mode="before")
    @classmethod
    def _parse_list(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
        return tuple(str(item).strip() for item in value if str(item).strip())

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            parse_sentinel(entry)  # a typo fails at start-up, not at the first failover
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _parse_hosts(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
        hosts = tuple(str(host).strip() for host in value if str(host).strip())
        if not hosts:
            raise ValueError("DIP_ALLOWED_HOSTS must name at least one host (or `*` for any)")
        return hosts

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            secret_key(value.get_secret_value())  # refuses a malformed one at start-up, not at the first delivery
        return value

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: Any, info: ValidationInfo) -> tuple[str, ...]:
        return parse_key_entries(value, setting=f"DIP_{(info.field_name or '').upper()}")

    @model_validator(mode="after")
    def _check_sentinel_settings(self) -> Settings:
        if not self.redis_sentinels:
            return self
        if not self.redis_sentinel_master.strip():
            raise ValueError("DIP_REDIS_SENTINEL_MASTER must name the primary the sentinels monitor")
        # The sentinels name the primary's host and port; the URL only lends its password and
        # database, and neither kombu's sentinel transport nor the store's clients speak TLS or sockets here.
        scheme = urlsplit(self.redis_url or "redis://").scheme
        if scheme != "redis":
            raise ValueError(f"with DIP_REDIS_SENTINELS, DIP_REDIS_URL must be a redis:// URL (password and "
                             f"database only), not {scheme}://")
        return self

    @model_validator(mode="after")
    def _check_job_time_limit(self) -> Settings:
        if self.max_job_seconds is not None and self.max_job_seconds > self.soft_time_limit_s:
            # The broker's visibility timeout follows the global limits: a longer
            # job would be handed to a second worker while still running.
            raise ValueError(f"max_job_seconds ({self.max_job_seconds}) must be at most "
                             f"soft_time_limit_s ({self.soft_time_limit_s})")
        if self.batch_wait_s * 2 >= self.lease_s:
            # A claimed job's lease is renewed only once its batch starts.
            raise ValueError(f"batch_wait_s ({self.batch_wait_s:g}) must be under half of lease_s ({self.lease_s:g})")
        return self

    @property
    def sentinel_addresses(self) -> tuple[tuple[str, int], ...]:
        """``redis_sentinels`` as (host, port) pairs."""
        return tuple(parse_sentinel(entry) for entry in self.redis_sentinels)

    @property
    def auth_enabled(self) -> bool:
        """Whether requests need a key (any API or admin key is configured)."""
        return bool(self.api_keys or self.admin_keys)

    @property
    def job_time_limit_s(self) -> int:
        """Soft wall-time limit of one run of a job."""
        return self.max_job_seconds or self.soft_time_limit_s

    @property
    def lease_margin_s(self) -> float:
        """How long past a lease's expiry reapers wait before they re-queue its job.

        Its holder stopped writing at the expiry at the latest (the fence in
        ``worker.lease``), but may be inside one iteration, or one write, then.
        """
        return self.lease_s / 2

    @property
    def visibility_timeout_s(self) -> int:
        # Redis re-delivers unacknowledged messages after this; it must outlast the
        # longest job or a running job would be handed to a second worker.
        return self.hard_time_limit_s + 600


@lru_cache
def get_settings() -> Settings:
    return Settings()
