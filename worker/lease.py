"""A claimed job's lease, renewed from a thread while the job runs.

One iteration of the engine's loop can take seconds (a large image on a CPU),
so the lease is renewed on a fixed period (a third of it) from a daemon
thread, not from the loop. A Redis error is only logged: if Redis stays away
longer than the lease, a reaper re-queues the job once Redis is back, and this
holder takes it back at its next renewal unless another worker claimed it
first. A renewal that finds the job taken over marks the lease lost; the run
then stops without writing anything more (see :class:`LeaseLost`).
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

import redis.exceptions

from api.store import Renewal, WorkerStore

log = logging.getLogger(__name__)


class LeaseLost(RuntimeError):
    """This worker no longer holds the job: another worker runs it now, or it ended."""


class LeaseKeeper:
    """Keeps the lease of one claimed job alive; use as a context manager around the run.

    Args:
        store: The worker's job store.
        job_id: The claimed job.
        token: The lease token the claim returned.
        lease_s: Lease length; each renewal extends it to this long from now.
        interval_s: Time between renewals (default: a third of ``lease_s``).
    """

    def __init__(self, store: WorkerStore, job_id: str, token: str, *, lease_s: float,
                 interval_s: float | None = None) -> None:
        if not lease_s > 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s!r}")
        interval_s = lease_s / 3 if interval_s is None else interval_s
        if not 0 < interval_s < lease_s:
            raise ValueError(f"interval_s must be in (0, lease_s={lease_s}), got {interval_s!r}")
        if not token:
            raise ValueError("token must be the non-empty token of a claim")
        self._store = store
        self.job_id = job_id
        self.token = token
        self._lease_s = lease_s
        self._interval_s = interval_s
        self._lost = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def start(self) -> LeaseKeeper:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"lease-{self.job_id}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop renewing (the lease then lapses unless the job ends or is handed back)."""
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def confirm(self) -> bool:
        """Renew now; ``False`` if the lease is lost. Called when a write found the job
        not running under this lease (a reaper may have re-queued it: it is taken back)."""
        self._renew()
        return not self.lost

    def __enter__(self) -> LeaseKeeper:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s) and not self.lost:
            self._renew()

    def _renew(self) -> None:
        try:
            renewal = self._store.renew(self.job_id, token=self.token, lease_s=self._lease_s)
        except redis.exceptions.RedisError as exc:
            log.warning("job %s: could not renew its lease (%s); retrying in %.1f s", self.job_id, exc,
                        self._interval_s)
            return
        if renewal is Renewal.lost and not self.lost:
            log.warning("job %s: lease lost: another worker took the job over, or it ended", self.job_id)
            self._lost.set()
        elif renewal is Renewal.taken_back:
            log.info("job %s: taken back after Redis was out of reach for longer than the lease", self.job_id)
