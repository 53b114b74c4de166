"""What an engine failure says about the job, and about the worker's device.

A job's own bad input fails that job only. A full GPU fails the job too, with
``out_of_memory`` and what to try, since a smaller job would fit. A full results
volume hands the job back: another worker, or this one once space is freed, resumes
it. Any other engine error (a CUDA error, a driver fault) is counted against the
device: :class:`DeviceHealth` says when a worker has failed enough jobs in a row
that it should stop taking more, rather than drain the queue into ``failed``.
"""

from __future__ import annotations

import errno
import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

log = logging.getLogger(__name__)

OUT_OF_MEMORY = "out_of_memory"
DISK_FULL = "disk_full"
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the GPU or the host running out of memory (not a device fault)."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    # CPU allocations fail as a RuntimeError: "DefaultCPUAllocator: not enough memory: ..."
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("not enough memory" in text or "out of memory" in text)


def disk_full_error(exc: BaseException) -> OSError | None:
    """The full-disk (or exhausted quota) error behind ``exc``, if any: itself or one it was
    raised from (``torch.save`` wraps the OSError of its file in a RuntimeError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def out_of_memory_message(image: Path | None, *, device: str) -> str:
    """The error of a job that ran out of memory: its image size, and what to try."""
    size = "its image"
    if image is not None:
        try:
            with Image.open(image) as opened:
                size = f"its {opened.height}×{opened.width} (H×W) image"
        except OSError:
            pass
    where = f"GPU ({device})" if device.startswith("cuda") else f"worker ({device})"
    return (f"the {where} ran out of memory fitting {size}. Try a smaller image, fewer snapshots, or a "
            "smaller network preset; operators of a batching worker can set DIP_BATCH_MAX=1")


def release_memory() -> None:
    """Give back what a failed run held, so the next job starts with the whole device."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class DeviceHealth:
    """Device (or disk) failures of one worker process in a row; a run that ends well resets it.

    ``limit`` failures in a row trip it (``DIP_DEVICE_FAILURE_LIMIT``); it stays tripped
    for the life of the process.
    """

    limit: int
    failures: int = 0
    reason: str = ""
    tripped_at: float | None = None
    announced: bool = False  # the worker has stopped taking jobs and said so

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit!r}")

    @property
    def tripped(self) -> bool:
        return self.tripped_at is not None

    def ok(self) -> None:
        if not self.tripped:
            self.failures = 0

    def failed(self, reason: str) -> bool:
        """Count one failure; ``True`` the time it reaches the limit."""
        self.failures += 1
        self.reason = reason
        if self.tripped or self.failures < self.limit:
            return False
        self.tripped_at = time.time()
        return True
