"""Test-only fault injection: ``DIP_FAULT_INJECTION`` makes a worker crash on purpose.

Never set it in production. The fault tests set it on one worker process to
stand for a job that kills its worker every time (a native crash, the
out-of-memory killer): ``crash_on_start`` kills the pool process running any
job right after claiming it, ``crash_on_start:<job id>`` only that job's.
Several rules are separated by commas.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

ENV_VAR = "DIP_FAULT_INJECTION"


def maybe_crash(point: str, job_id: str) -> None:
    """Kill this process with SIGKILL if a rule names ``point`` (and this job or no job)."""
    for rule in os.environ.get(ENV_VAR, "").split(","):
        name, _, target = rule.strip().partition(":")
        if name == point and target in ("", job_id):
            log.warning("%s=%s: killing this worker process (pid %d) at %s of job %s",
                        ENV_VAR, rule.strip(), os.getpid(), point, job_id)
            os.kill(os.getpid(), signal.SIGKILL)
