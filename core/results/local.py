"""Job files on a local (or network) volume: ``<root>/<job id>/<name>``."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from core.layout import JOB_ID, job_dir
from core.results.base import ObjectInfo, ResultsStore


class LocalResults(ResultsStore):
    """The results volume that the API and the workers share (``DIP_RESULTS_DIR``)."""

    shared_disk = True

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalResults({str(self.root)!r})"

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"DIP_RESULTS_DIR {str(self.root)!r} cannot be created: {exc.strerror}") from None
        if not os.access(self.root, os.W_OK):
            raise ValueError(f"DIP_RESULTS_DIR {str(self.root)!r} is not writable")

    def _path(self, job_id: str, name: str) -> Path:
        directory = job_dir(self.root, job_id)
        path = (directory / name).resolve()
        if not path.is_relative_to(directory.resolve()):
            raise ValueError(f"not a file name inside a job: {name!r}")
        return path

    def put_file(self, job_id: str, name: str, path: Path) -> None:
        target = self._path(job_id, name)
        if Path(path).resolve() == target:
            return  # written in place (the workers' folder is the job's folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        os.close(fd)
        try:
            shutil.copyfile(path, temporary)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def put_folder(self, job_id: str, folder: Path) -> None:
        # One rename on the same volume: the job's folder appears whole or not at all.
        target = job_dir(self.root, job_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        folder.rename(target)

    def get_file(self, job_id: str, name: str, path: Path) -> bool:
        source = self._path(job_id, name)
        if Path(path).resolve() == source:
            return source.is_file()
        if not source.is_file():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
        return True

    def info(self, job_id: str, name: str) -> ObjectInfo | None:
        path = self._path(job_id, name)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        if not path.is_file():
            return None
        return ObjectInfo(stat.st_size, f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"', stat.st_mtime)

    def read(self, job_id: str, name: str, *, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        with open(self._path(job_id, name), "rb") as handle:
            while chunk := handle.read(chunk_bytes):
                yield chunk

    def list(self, job_id: str) -> dict[str, ObjectInfo]:
        directory = job_dir(self.root, job_id)
        found: dict[str, ObjectInfo] = {}
        for root, _dirs, files in os.walk(directory):
            for file in files:
                name = Path(root, file).relative_to(directory).as_posix()
                info = self.info(job_id, name)
                if info is not None:
                    found[name] = info
        return found

    def delete(self, job_id: str, names: list[str] | None = None) -> None:
        if names is None:
            shutil.rmtree(job_dir(self.root, job_id), ignore_errors=True)
            return
        for name in names:
            self._path(job_id, name).unlink(missing_ok=True)

    def job_ids(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            if entry.is_dir() and JOB_ID.fullmatch(entry.name):
                yield entry.name

    def local_path(self, job_id: str, name: str) -> Path | None:
        return self._path(job_id, name)

    def newest_change(self, job_id: str) -> float | None:
        directory = job_dir(self.root, job_id)
        try:
            newest = directory.stat().st_mtime
        except FileNotFoundError:
            return None
        for root, dirs, files in os.walk(directory):
            for name in (*dirs, *files):
                try:
                    newest = max(newest, os.stat(os.path.join(root, name)).st_mtime)
                except OSError:
                    continue  # removed meanwhile
        return newest
