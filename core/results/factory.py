"""Choose the results store from the settings."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

from core.config import Settings
from core.layout import STAGING_DIR
from core.results.base import ResultsStore
from core.results.local import LocalResults


def open_results(settings: Settings) -> ResultsStore:
    """The store ``DIP_RESULTS_URL`` names (``s3://bucket/prefix``), else the ``DIP_RESULTS_DIR`` volume.

    Raises:
        ValueError: A malformed ``DIP_RESULTS_URL`` (checked before any connection).
    """
    if not settings.results_url:
        return LocalResults(settings.results_dir)
    parts = urlsplit(settings.results_url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"DIP_RESULTS_URL must look like s3://bucket or s3://bucket/prefix, "
                         f"got {settings.results_url!r}")
    from core.results.s3 import S3Results  # late: boto3 loads in a second or so

    return S3Results(parts.netloc, parts.path.strip("/"), endpoint_url=settings.s3_endpoint_url)


def staging_dir(settings: Settings, results: ResultsStore) -> Path:
    """Where uploads wait for their checks: on the results volume itself (so that putting a job
    in place is one rename), or in the process's scratch folder with object storage."""
    return (settings.results_dir if results.shared_disk else settings.scratch_dir) / STAGING_DIR


def clear_stale_staging(folder: Path, *, older_than_s: float = 3600, now: float | None = None) -> int:
    """Remove uploads abandoned in ``folder`` (a process died while receiving them); returns how many.

    Uploads younger than ``older_than_s`` may still be arriving, and are left alone.
    """
    now = time.time() if now is None else now
    removed = 0
    for entry in [*folder.iterdir()] if folder.is_dir() else []:
        if entry.is_dir() and entry.stat().st_mtime < now - older_than_s:
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed


def results_refusal(settings: Settings) -> str | None:
    """Why the configured results store cannot be used (a one-line reason), or ``None``.

    A malformed ``DIP_RESULTS_URL``, missing credentials, a missing bucket or an
    unreachable endpoint: the processes refuse to start rather than fail every job.
    """
    try:
        open_results(settings).check()
    except ValueError as exc:
        return str(exc)
    return None
