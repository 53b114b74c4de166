"""Every Redis key name the service uses, in one place.

Per job: ``<p>:job:<id>`` (hash: the record), ``<p>:job:<id>:files`` (hash:
public file name -> path in the job directory), ``<p>:job:<id>:history``
(list of JSON log points) and ``<p>:job:<id>:events`` (stream). They all
expire together after the retention period.

Shared: ``<p>:jobs`` and ``<p>:jobs:<status>`` (sorted sets of job ids scored
by creation time, for listing and queue positions), ``<p>:idem:<owner>:<key>``
(idempotency key -> job id), ``<p>:owner:<owner>:jobs`` and
``<p>:owner:<owner>:queued`` (sorted sets: an owner's jobs, and those that
were queued when last counted), ``<p>:workers`` (sorted set of worker names
scored by their last heartbeat), ``<p>:stats:durations`` (hash of job
duration histogram counters), ``<p>:leases`` (sorted set of running jobs
scored by the expiry of their lease, and of queued jobs whose message is not
yet known sent, scored by the end of its grace), ``<p>:draining:<worker>`` (flag of
a worker that is shutting down) and ``<p>:streams:<caller>`` (sorted set: the leases of
a caller's open event streams, scored by their expiry; the key expires with the last one).
Webhooks: ``<p>:job:<id>:webhook`` (hash), ``...:webhook:log`` (list), ``...:webhook:lock``
and ``<p>:webhooks`` (sorted set of jobs with deliveries to come), see ``core.store.webhooks``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .records import JobStatus


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix (tests and several deployments can share a Redis)."""

    prefix: str = "dip"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def files(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:files"

    def history(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:history"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    def per_job(self, job_id: str) -> list[str]:
        """The four keys of one job, in the order every job script expects them."""
        return [self.job(job_id), self.files(job_id), self.history(job_id), self.events(job_id)]

    @property
    def all_jobs(self) -> str:
        return f"{self.prefix}:jobs"

    def by_status(self, status: JobStatus) -> str:
        return f"{self.prefix}:jobs:{status.value}"

    @property
    def status_indexes(self) -> list[str]:
        """One index per status, in ``JobStatus`` order (job scripts find them by position)."""
        return [self.by_status(status) for status in JobStatus]

    def idempotency(self, owner: str, key: str) -> str:
        return f"{self.prefix}:idem:{owner}:{key}"

    def owner_jobs(self, owner: str) -> str:
        """Jobs of ``owner`` (an API key's fingerprint; ``""`` without keys), scored by creation time."""
        return f"{self.prefix}:owner:{owner}:jobs"

    def owner_queued(self, owner: str) -> str:
        """Jobs of ``owner`` that may still be queued (pruned as they are counted)."""
        return f"{self.prefix}:owner:{owner}:queued"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def unhealthy_workers(self) -> str:
        """Hash: worker name -> why it stopped taking jobs (JSON), see ``core.store.health``."""
        return f"{self.prefix}:workers:unhealthy"

    @property
    def durations(self) -> str:
        return f"{self.prefix}:stats:durations"

    @property
    def leases(self) -> str:
        """Sorted set: ids of running jobs (and of new or re-queued ones awaiting their
        message), scored by when their lease (or dispatch grace) expires (Redis clock)."""
        return f"{self.prefix}:leases"

    def draining(self, worker: str) -> str:
        """Flag set while ``worker`` (``<node name>:<main pid>``) shuts down: its jobs hand themselves back."""
        return f"{self.prefix}:draining:{worker}"

    def streams(self, caller: str) -> str:
        """Leases of the event streams ``caller`` (``key:<fingerprint>`` or ``addr:<address>``) has open."""
        return f"{self.prefix}:streams:{caller}"

    def webhook(self, job_id: str) -> str:
        """Hash: a job's webhook (url, events), its delivery cursor and counters (``core.store.webhooks``)."""
        return f"{self.prefix}:job:{job_id}:webhook"

    def webhook_log(self, job_id: str) -> str:
        """List: a job's latest webhook delivery attempts (JSON), newest first."""
        return f"{self.prefix}:job:{job_id}:webhook:log"

    def webhook_lock(self, job_id: str) -> str:
        """The deliverer that holds it sends this job's webhooks (expiring token)."""
        return f"{self.prefix}:job:{job_id}:webhook:lock"

    @property
    def webhooks_due(self) -> str:
        """Sorted set: jobs with webhook deliveries to come, scored by when to look again (Redis clock)."""
        return f"{self.prefix}:webhooks"

    def job_script_keys(self, job_id: str, *extra: str) -> list[str]:
        """KEYS for a job script: the job's four keys, the status indexes, then ``extra``."""
        return [*self.per_job(job_id), *self.status_indexes, self.all_jobs, *extra]
