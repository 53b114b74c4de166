"""Where a job's files live on the results volume, and the names they are served under.

``<results_dir>/<job id>/`` holds the validated inputs (``input.png``,
``mask.png``, ``kernel.png``, ``reference.png``; the extension follows the uploaded format)
and the engine's outputs under ``out/``. Uploads are received in
``<results_dir>/.staging/`` and moved into place only once valid.

Public file names (``result.png``, ``snapshot_00050.png``...) map to paths in
the job directory through the job record; this module only says which names
are well-formed.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from pathlib import Path

JOB_ID = re.compile(r"[A-Za-z0-9_-]{22}")
FILE_NAME = re.compile(r"(?:input|mask|kernel|reference|result|best|last|degraded|curves)\.[a-z0-9]{2,5}"
                       r"|metrics\.json|snapshot_[0-9]{1,9}\.png")
OUT_DIR = "out"
STAGING_DIR = ".staging"
INPUT_FIELDS = {"image": "input", "mask": "mask", "kernel": "kernel", "reference": "reference"}

_EXTENSIONS = {"JPEG": "jpg", "TIFF": "tif", "JPEG2000": "jp2"}


def new_job_id() -> str:
    """A random, unguessable id: 16 bytes as 22 URL-safe characters, the first a letter or digit
    (a leading ``-`` would read as an option on a command line: ``dip status -hT0...``)."""
    while True:
        job_id = secrets.token_urlsafe(16)
        if job_id[0].isalnum():
            return job_id


def job_dir(results_dir: Path, job_id: str) -> Path:
    if not JOB_ID.fullmatch(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return results_dir / job_id


def input_file_name(field: str, image_format: str) -> str:
    """``input.png`` for an ``image`` upload in PNG format, ``mask.jpg``..."""
    extension = _EXTENSIONS.get(image_format, image_format.lower())
    if not re.fullmatch(r"[a-z0-9]{2,5}", extension):
        extension = "img"
    return f"{INPUT_FIELDS[field]}.{extension}"


def output_file_name(kind: str, path: Path) -> str:
    """Public name of an engine output: ``result.png``, ``curves.png``, ``metrics.json``."""
    return f"{kind}{path.suffix.lower()}"


def snapshot_file_name(path: Path) -> str:
    """``snapshots/iter_00050.png`` -> ``snapshot_00050.png``."""
    digits = re.sub(r"[^0-9]", "", path.stem)
    return f"snapshot_{digits or '0'}.png"


def snapshot_order(name: str) -> int:
    """The iteration of snapshot ``name``: ``snapshot_00050.png`` -> 50."""
    return int(name.removeprefix("snapshot_").removesuffix(".png") or 0)


def snapshot_names(names: Iterable[str]) -> list[str]:
    """The snapshot file names among ``names`` (a job's public file names), oldest first."""
    return sorted((name for name in names if name.startswith("snapshot_")), key=snapshot_order)
