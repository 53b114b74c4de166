"""Prometheus exposition of the service's state, read from Redis at scrape time.

Each scrape builds its own registry from a :class:`~core.store.StoreStats`,
so no metric state lives in the process: every API replica reports the same
numbers, and they survive API restarts.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from core.store import JobStatus, StoreStats

CONTENT_TYPE = CONTENT_TYPE_LATEST


class _StatsCollector(Collector):
    def __init__(self, stats: StoreStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        jobs = GaugeMetricFamily("dip_jobs", "Jobs kept in the store, by status.", labels=["status"])
        for status, count in stats.jobs_by_status.items():
            jobs.add_metric([status.value], count)
        yield jobs
        yield GaugeMetricFamily("dip_queue_depth", "Jobs waiting for a worker.",
                                value=stats.jobs_by_status.get(JobStatus.queued, 0))
        yield GaugeMetricFamily("dip_iterations_per_second",
                                "Optimisation speed summed over the running jobs.",
                                value=stats.running_iterations_per_second)
        yield GaugeMetricFamily("dip_workers", "Workers with a recent heartbeat.", value=stats.live_workers)
        durations = HistogramMetricFamily("dip_job_duration_seconds",
                                          "Run time of finished jobs (start to end), by final status.",
                                          labels=["status"])
        for status, (buckets, count, total) in sorted(stats.durations.items()):
            points = [(_bound(bound), float(n)) for bound, n in sorted(buckets.items())]
            durations.add_metric([status], points + [("+Inf", float(count))], sum_value=total)
        yield durations


def render(stats: StoreStats) -> bytes:
    """The Prometheus text format of ``stats``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatsCollector(stats))
    return generate_latest(registry)


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)
