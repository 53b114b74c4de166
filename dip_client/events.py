"""A job's Server-Sent Events: decoding them, and folding them into the job they describe.

Events are the API's own :class:`~core.store.JobEvent` (``id``, ``type``, ``data``), as the
server stores and sends them; no separate client-side model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from core.schemas import JobError, JobPublic, Metrics, Progress, Snapshot
from core.store import EventType, JobEvent, JobStatus

__all__ = ["EventType", "Follower", "JobEvent", "SSEDecoder", "is_terminal", "snapshot_of"]


class SSEDecoder:
    """Turns text/event-stream lines into events, one line at a time (fed by sync or async reads).

    ``last_id`` is the id of the latest event with one: what ``Last-Event-ID`` resumes after.
    """

    def __init__(self, last_id: str | None = None) -> None:
        self.last_id = last_id
        self._fields: dict[str, str] = {}
        self._data: list[str] = []

    def feed(self, line: str) -> JobEvent | None:
        """The event that ``line`` completes (a blank line ends one), else ``None``."""
        if line:
            if not line.startswith(":"):  # comment lines are the server's keep-alive pings
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    self._data.append(value)
                else:
                    self._fields[name] = value
            return None
        fields, data = self._fields, self._data
        self._fields, self._data = {}, []
        if not data:
            return None
        try:
            kind = EventType(fields.get("event", ""))
        except ValueError:
            return None  # a kind this client does not know yet: skipped, not fatal
        event_id = fields.get("id", "")
        if event_id:
            self.last_id = event_id
        return JobEvent(id=event_id, type=kind, data=json.loads("\n".join(data)))

    def events(self, lines: Iterable[str]) -> Iterator[JobEvent]:
        for line in lines:
            event = self.feed(line)
            if event is not None:
                yield event


def is_terminal(event: JobEvent) -> bool:
    """The job's last event: its stream ends after it."""
    return event.type is EventType.status and JobStatus(event.data["status"]).is_terminal


def snapshot_of(event: JobEvent) -> Snapshot:
    """The snapshot a ``snapshot`` event announces."""
    return Snapshot.model_validate(event.data)


class Follower:
    """The job as its events change it, for ``wait``'s progress callback.

    A stream replays the job's events from the start: progress older than the job
    already showed is skipped, so the callback never sees iterations go back.
    """

    def __init__(self, job: JobPublic) -> None:
        self.job = job
        self._floor = job.progress.iteration if job.progress else -1

    def update(self, event: JobEvent) -> bool:
        """Apply ``event``; whether ``job`` changed."""
        data = event.data
        if event.type is EventType.progress:
            progress = Progress.model_validate(data["progress"])
            if progress.iteration <= self._floor:
                return False
            self._floor = -1  # caught up: from now on the events are news
            self.job = self.job.model_copy(update={
                "status": JobStatus.running, "progress": progress,
                "metrics": Metrics.model_validate(data.get("metrics") or {})})
        elif event.type is EventType.snapshot:
            outputs = self.job.outputs.model_copy(update={"latest_snapshot": snapshot_of(event).url})
            self.job = self.job.model_copy(update={"outputs": outputs})
        else:
            status = JobStatus(data["status"])
            if status is JobStatus.queued:
                self._floor = -1  # handed back: it resumes from a checkpoint, maybe further back
            error = JobError.model_validate(data["error"]) if data.get("error") else None
            self.job = self.job.model_copy(update={"status": status, "error": error})
        return True
