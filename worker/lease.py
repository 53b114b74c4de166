"""A claimed job's lease, renewed from a thread while the job runs.

One iteration of the engine's loop can take seconds (a large image on a CPU),
so the lease is renewed on a fixed period (a third of it) from a daemon
thread, not from the loop. A Redis error is only logged: an outage shorter
than the lease costs nothing.

The lease is also a fence. A holder whose last successful renewal is older
than the lease can no longer know that the job is still its own: another
worker may have re-queued and claimed it. So it counts as lost (:attr:`LeaseKeeper.stale`):
the run stops at once and writes nothing more (see :class:`LeaseLost`). The
time is measured from when the renewal was *sent*, on this host's monotonic
clock, so the holder always gives up before the lease's expiry on the Redis
clock; reapers wait a margin past that expiry (``Settings.lease_margin_s``),
which covers the one iteration a holder may still be in when its fence falls.
A renewal that finds the job taken over also marks the lease lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType


from core.store import Renewal, StoreError, WorkerStore

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
        held_since: When the lease was last known held (``clock()`` when the claim was
            sent); default: now.
        clock: Monotonic clock (tests pass a fake one).
    """

    def __init__(self, store: WorkerStore, job_id: str, token: str, *, lease_s: float,
                 interval_s: float | None = None, held_since: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
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
        self._clock = clock
        self._held_since = clock() if held_since is None else held_since
        self._lost = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lost(self) -> bool:
        """Another worker holds the job, it ended, or the fence fell (see :attr:`stale`)."""
        return self._lost.is_set() or self.stale

    @property
    def stale(self) -> bool:
        """The last successful renewal was sent longer than a lease ago."""
        return self._clock() - self._held_since > self._lease_s

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this holder may still write the job's files."""
        if self._lost.is_set():
            raise LeaseLost(f"job {self.job_id}: lease lost")
        if self.stale:
            self._lost.set()  # for good: a later renewal must not reopen the fence
            silent_s = self._clock() - self._held_since
            log.warning("job %s: lease not renewed for %.1f s, longer than the lease (%.1f s): stopping and "
                        "writing nothing more; another worker may run it now", self.job_id, silent_s, self._lease_s)
            raise LeaseLost(f"job {self.job_id}: lease not renewed for {silent_s:.1f} s (lease {self._lease_s:g} s)")

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
        sent = self._clock()
        try:
            renewal = self._store.renew(self.job_id, token=self.token, lease_s=self._lease_s)
        except StoreError as exc:
            log.warning("job %s: could not renew its lease (%s); retrying in %.1f s", self.job_id, exc,
                        self._interval_s)
            return
        if self.lost:
            return  # fenced (or lost) meanwhile: the run has stopped, and a late answer changes nothing
        if renewal is Renewal.lost:
            log.warning("job %s: lease lost: another worker took the job over, or it ended", self.job_id)
            self._lost.set()
            return
        self._held_since = max(self._held_since, sent)
        if renewal is Renewal.taken_back:
            log.info("job %s: taken back after Redis was out of reach for longer than the lease", self.job_id)
