"""Test-only fault injection: ``DIP_FAULT_INJECTION`` makes a worker fail on purpose.

Never set it in production. The fault tests set it on one worker process to
stand for faults that cannot be produced on demand. Several rules are separated
by commas; a rule ``<point>:<job id>`` applies to that job only, ``<point>`` to any.

- ``crash_on_start``: kill the pool process running the job right after claiming
  it (a native crash, the out-of-memory killer).
- ``hold_before_claim``: wait before the claim while the file ``hold_before_claim``
  exists in ``DIP_VAR_DIR``, so that a test can break Redis between the delivery of
  a message and the claim of its job.
- ``slow_steps``: sleep ``SLOW_STEP_S`` after every step of the job, so that a test
  can act on a worker in the middle of a job however fast the machine runs it.
- ``device_error``, ``out_of_memory``, ``disk_full``: raise, when the engine starts the
  job, what a broken GPU (a CUDA error), a full GPU (``torch.cuda.OutOfMemoryError``)
  or a full results volume (``OSError(ENOSPC)``) raises there.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from pathlib import Path

from dip_engine.callbacks import Callback, FitState

log = logging.getLogger(__name__)

ENV_VAR = "DIP_FAULT_INJECTION"
HOLD_FILE = "hold_before_claim"
SLOW_STEP_S = 0.2


def _applies(point: str, job_id: str) -> str | None:
    """The rule that names ``point`` for this job (or any job), if one does."""
    for rule in os.environ.get(ENV_VAR, "").split(","):
        name, _, target = rule.strip().partition(":")
        if name == point and target in ("", job_id):
            return rule.strip()
    return None


def maybe_crash(point: str, job_id: str) -> None:
    """Kill this process with SIGKILL if a rule names ``point`` (and this job or no job)."""
    rule = _applies(point, job_id)
    if rule is not None:
        log.warning("%s=%s: killing this worker process (pid %d) at %s of job %s",
                    ENV_VAR, rule, os.getpid(), point, job_id)
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_hold(point: str, job_id: str, var_dir: Path) -> None:
    """Wait while ``var_dir/<point>`` exists, if a rule names ``point``."""
    rule = _applies(point, job_id)
    hold = var_dir / point
    if rule is None or not hold.exists():
        return
    log.warning("%s=%s: holding job %s at %s while %s exists", ENV_VAR, rule, job_id, point, hold)
    while hold.exists():
        time.sleep(0.05)


class SlowSteps(Callback):
    """Sleeps after every step: the ``slow_steps`` rule."""

    def on_step(self, state: FitState) -> None:
        time.sleep(SLOW_STEP_S)


def maybe_slow(job_id: str) -> list[Callback]:
    """The callbacks that slow this job down, if a ``slow_steps`` rule names it (or any job)."""
    return [SlowSteps()] if _applies("slow_steps", job_id) else []


def maybe_fail(job_id: str) -> None:
    """Raise the device or disk error a rule names for this job (called where the engine starts it)."""
    if _applies("device_error", job_id):
        raise RuntimeError(f"CUDA error: an illegal memory access was encountered ({ENV_VAR}: device_error)")
    if _applies("out_of_memory", job_id):
        import torch  # late: only the worker's engine side imports torch

        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB ({ENV_VAR})")
    if _applies("disk_full", job_id):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"checkpoint of job {job_id} ({ENV_VAR})")
