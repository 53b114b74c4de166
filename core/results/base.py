"""The results-store interface: a job's files as objects under the job's prefix.

A file is named by its path inside the job (``input.png``, ``out/result.png``,
``out/snapshots/iter_00050.png``); the store keeps it under ``<job id>/<name>``.
"""

from __future__ import annotations

import abc
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class ResultsUnavailable(Exception):
    """The results store could not be reached or refused to answer (an outage, not a missing file)."""


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str  # quoted, as sent in an ETag header
    modified: float  # Unix time


class ResultsStore(abc.ABC):
    """A job's files, by job id and name. Methods raise :class:`ResultsUnavailable` on an outage."""

    #: Whether the API and the workers see the same files on one disk (no copy to a scratch folder).
    shared_disk: bool = False

    @abc.abstractmethod
    def check(self) -> None:
        """Raise ``ValueError`` (with a one-line reason) if the store cannot be used at all."""

    @abc.abstractmethod
    def put_file(self, job_id: str, name: str, path: Path) -> None:
        """Store the local file ``path`` as ``name``, whole or not at all."""

    def put_folder(self, job_id: str, folder: Path) -> None:
        """Store every file of the local ``folder`` under the job, all or none, and remove the folder."""
        stored: list[str] = []
        try:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    name = path.relative_to(folder).as_posix()
                    self.put_file(job_id, name, path)
                    stored.append(name)
        except BaseException:
            try:
                if stored:
                    self.delete(job_id, stored)
            except ResultsUnavailable:
                pass  # no record names them: the sweep deletes them, a retention later
            raise
        shutil.rmtree(folder, ignore_errors=True)

    @abc.abstractmethod
    def get_file(self, job_id: str, name: str, path: Path) -> bool:
        """Write ``name`` to the local ``path`` (whole or not at all); ``False`` if there is no such file."""

    @abc.abstractmethod
    def info(self, job_id: str, name: str) -> ObjectInfo | None:
        """Size, ETag and time of ``name``; ``None`` if there is no such file."""

    @abc.abstractmethod
    def read(self, job_id: str, name: str, *, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The bytes of ``name``, chunk by chunk (``FileNotFoundError`` if there is no such file)."""

    @abc.abstractmethod
    def list(self, job_id: str) -> dict[str, ObjectInfo]:
        """Every file of the job, by name."""

    @abc.abstractmethod
    def delete(self, job_id: str, names: list[str] | None = None) -> None:
        """Delete ``names`` of the job, or every file under its prefix."""

    @abc.abstractmethod
    def job_ids(self) -> Iterator[str]:
        """The ids of the jobs that have files (for the retention sweep)."""

    def url(self, job_id: str, name: str, *, expires_s: int, filename: str) -> str | None:
        """A URL that downloads ``name`` without credentials for ``expires_s``; ``None`` if the
        store cannot hand one out (the API then serves the file itself)."""
        return None

    def local_path(self, job_id: str, name: str) -> Path | None:
        """The file itself, when the store is a local disk (served without copying)."""
        return None

    def newest_change(self, job_id: str) -> float | None:
        """The latest modification time among the job's files; ``None`` if it has none."""
        files = self.list(job_id)
        return max((info.modified for info in files.values()), default=None)
