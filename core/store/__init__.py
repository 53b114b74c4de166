"""Job records in Redis: the one place that reads or writes them, and the only code that
imports redis (callers see :class:`StoreError` and :class:`StoreUnavailable`).

:class:`JobStore` (asyncio) serves the API, :class:`WorkerStore` (blocking)
the worker processes; both run the same atomic scripts over the same keys.
"""

from .base import check_eviction_policy
from .errors import StoreError, StoreUnavailable
from .jobs import InvalidCursor, JobStore, StoreStats
from .keys import Keys
from .records import EventType, JobEvent, JobRecord, JobStatus
from .streams import StreamLeases
from .worker import Claim, ClaimOutcome, ReapOutcome, Renewal, RunState, WorkerStore

__all__ = [
    "Claim", "ClaimOutcome", "EventType", "InvalidCursor", "JobEvent", "JobRecord", "JobStatus",
    "JobStore", "Keys", "ReapOutcome", "Renewal", "RunState", "StoreError", "StoreStats", "StoreUnavailable",
    "StreamLeases", "WorkerStore",
    "check_eviction_policy",
]
