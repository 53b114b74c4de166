"""``dip serve``: Redis (embedded unless ``DIP_REDIS_URL`` or ``DIP_REDIS_SENTINELS`` is set), one worker and the API.

The supervisor starts each part as a child process in its own process group,
restarts any that exits (with a back-off while it keeps crashing), and on
Ctrl-C or SIGTERM stops them in order: API, worker, Redis.

Tests drive it step by step::

    sup = Supervisor(settings, children=[ChildSpec("sleeper", ("sleep", "60"))])
    sup.start()
    sup.poll_once()     # notices exits, restarts what is due; never blocks
    sup.stop()
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from core.config import Settings
from core.process import free_port, kill_group, port_is_free, spawn
from stack.redis_server import RedisServer, RedisStartError

log = logging.getLogger(__name__)

DEFAULT_REDIS_PORT = 6390


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` makes the API reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name other than localhost may resolve anywhere
        return False


def open_bind_refusal(settings: Settings, host: str) -> str | None:
    """Why the API must not listen on ``host``, or ``None`` if it may.

    Without keys anyone who reaches the API can use it, so it binds to
    loopback only unless ``DIP_ALLOW_OPEN`` says otherwise.
    """
    if settings.auth_enabled or settings.allow_open or is_loopback(host):
        return None
    return (f"no API keys are configured (DIP_API_KEYS), so the API would be open to anyone who can "
            f"reach {host}; refusing to listen there. Set DIP_API_KEYS (and DIP_ADMIN_KEYS), listen "
            f"on 127.0.0.1, or set DIP_ALLOW_OPEN=true to run open anyway.")


def access_line(settings: Settings, host: str) -> str:
    """One line saying who can use an API listening on ``host``."""
    if settings.auth_enabled:
        return (f"access: API key required ({len(settings.api_keys)} API keys, "
                f"{len(settings.admin_keys)} admin keys configured)")
    where = "this machine only (loopback)" if is_loopback(host) else f"anyone who can reach {host}"
    return f"open: no API keys configured; the API is unauthenticated and usable by {where}"


@dataclass(frozen=True)
class ChildSpec:
    """One supervised process.

    Args:
        name: shown in log lines ("worker", "api").
        argv: the command; run with the supervisor's environment plus
            the Redis to use (``DIP_REDIS_URL``, or the sentinels) and the data directories.
        stop_timeout_s: after SIGTERM, how long to wait before SIGKILL.
        env_defaults: variables set for this child unless the environment already has them.
    """

    name: str
    argv: tuple[str, ...]
    stop_timeout_s: float = 10.0
    env_defaults: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "argv", tuple(self.argv))
        if not self.name:
            raise ValueError("ChildSpec.name must not be empty")
        if not self.argv:
            raise ValueError(f"ChildSpec {self.name!r}: argv must not be empty")
        if self.stop_timeout_s < 0:
            raise ValueError(f"ChildSpec {self.name!r}: stop_timeout_s must be >= 0, got {self.stop_timeout_s!r}")


@dataclass(frozen=True)
class ChildStatus:
    """A snapshot of one supervised part, for tests and status lines."""

    name: str
    pid: int | None
    restarts: int
    restart_in_s: float | None  # waiting out a back-off when not None


def default_children(
    settings: Settings, *, python: str = sys.executable, worker_grace_s: float = 30.0
) -> list[ChildSpec]:
    """The worker and the API as ``dip`` subcommands, in start order.

    ``worker_grace_s`` is how long the worker may take to hand its job back
    after SIGTERM (Celery's shutdown) before it is killed; a killed worker's
    job is redelivered anyway, so this only trades shutdown time for tidiness.
    """
    dip = (python, "-m", "stack.cli")
    # Leave a core to the API and Redis: a worker whose torch threads take every core makes
    # status reads wait behind the optimisation on a small machine.
    threads = str(max(1, (os.cpu_count() or 1) - 1))
    return [
        ChildSpec("worker", (*dip, "worker"), stop_timeout_s=worker_grace_s,
                  env_defaults=(("OMP_NUM_THREADS", threads),)),
        ChildSpec("api", (*dip, "api", "--host", settings.host, "--port", str(settings.port))),
    ]


@dataclass
class _Backoff:
    """Delay before a restart: none after a long run, doubling while it keeps crashing."""

    first_s: float
    max_s: float
    stable_after_s: float
    failures: int = 0

    def after_exit(self, uptime_s: float) -> float:
        self.failures = self.failures + 1 if uptime_s < self.stable_after_s else 0
        if self.failures == 0:
            return 0.0
        return min(self.max_s, self.first_s * 2 ** (self.failures - 1))


@dataclass
class _Child:
    spec: ChildSpec
    backoff: _Backoff
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    restarts: int = 0


@dataclass
class _EmbeddedRedis:
    server: RedisServer
    backoff: _Backoff
    started_at: float = 0.0
    restart_at: float | None = None
    restarts: int = 0


class Supervisor:
    """Starts, watches and stops the parts of the service.

    Args:
        settings: the service settings; ``redis_url`` and ``redis_sentinels`` both
            unset means a private Redis with its data in ``var_dir / "redis"``.
        children: what to run besides Redis; default ``default_children(settings)``.
        redis_port: port of the private Redis; default the one used last time
            in that directory, else 6390, else any free port.
        env: base environment of the children; default ``os.environ``.
        restart_backoff_s: first delay after a quick crash; it doubles on
            each further quick crash, up to ``max_backoff_s``.
        stable_after_s: a process that ran this long is restarted at once.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        children: Sequence[ChildSpec] | None = None,
        redis_port: int | None = None,
        env: Mapping[str, str] | None = None,
        restart_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        stable_after_s: float = 30.0,
    ) -> None:
        if restart_backoff_s < 0 or max_backoff_s < restart_backoff_s:
            raise ValueError(
                f"need 0 <= restart_backoff_s <= max_backoff_s, got {restart_backoff_s!r} and {max_backoff_s!r}"
            )
        if stable_after_s < 0:
            raise ValueError(f"stable_after_s must be >= 0, got {stable_after_s!r}")
        specs = list(children) if children is not None else default_children(settings)
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names) or "redis" in names:
            raise ValueError(f"child names must be unique and not 'redis', got {names!r}")
        self.settings = settings
        self._base_env = dict(os.environ if env is None else env)
        self._new_backoff = lambda: _Backoff(restart_backoff_s, max_backoff_s, stable_after_s)
        self._children = [_Child(spec, self._new_backoff()) for spec in specs]
        self._redis: _EmbeddedRedis | None = None
        self._redis_port = redis_port
        self._started = False
        self._stop_requested = False
        self._force = False

    # -- public -----------------------------------------------------------------

    @property
    def embeds_redis(self) -> bool:
        """Whether ``start()`` starts a private Redis: neither a Redis URL nor sentinels are configured."""
        return not self.settings.redis_url and not self.settings.redis_sentinels

    @property
    def redis_url(self) -> str | None:
        """The Redis URL the children get (valid after ``start()`` in embedded mode).

        ``None`` with sentinels and no ``DIP_REDIS_URL``: the children find the primary
        through the sentinels, and a URL would only add a password or database.
        """
        if not self.embeds_redis:
            return self.settings.redis_url or None
        if self._redis is None:
            raise RuntimeError("the embedded Redis has no URL before start()")
        return self._redis.server.url

    @property
    def embedded_redis(self) -> RedisServer | None:
        return self._redis.server if self._redis else None

    def start(self) -> None:
        """Start Redis (if embedded), then the children in order."""
        self._start_redis()
        self._start_children()

    def poll_once(self) -> None:
        """Notice exited processes and restart those whose back-off is over; never blocks long."""
        now = time.monotonic()
        if self._redis is not None:
            self._poll_redis(now)
        for child in self._children:
            if child.proc is not None and child.proc.poll() is not None:
                code = child.proc.returncode
                kill_group(child.proc)  # pool processes it may have left behind
                child.proc = None
                delay = child.backoff.after_exit(now - child.started_at)
                child.restart_at = now + delay
                log.warning("%s exited with %s; restarting%s", child.spec.name, _describe_exit(code), _in(delay))
            if child.proc is None and child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._spawn(child)

    def stop(self) -> None:
        """Stop the children in reverse start order, then Redis. Safe to call twice."""
        for child in reversed(self._children):
            child.restart_at = None
            if child.proc is not None:
                proc, child.proc = child.proc, None
                log.info("stopping %s (pid %d)", child.spec.name, proc.pid)
                self._stop_proc(proc, child.spec.stop_timeout_s)
        if self._redis is not None:
            self._redis.restart_at = None
            if self._redis.server.is_running():
                log.info("stopping redis (pid %d)", self._redis.server.pid)
                self._redis.server.stop()

    def status(self) -> list[ChildStatus]:
        """Redis (when embedded) and each child: pid, restarts, pending back-off."""
        now = time.monotonic()
        rows = []
        if self._redis is not None:
            r = self._redis
            rows.append(ChildStatus("redis", r.server.pid, r.restarts, _left(r.restart_at, now)))
        for c in self._children:
            pid = c.proc.pid if c.proc is not None and c.proc.poll() is None else None
            rows.append(ChildStatus(c.spec.name, pid, c.restarts, _left(c.restart_at, now)))
        return rows

    def pids(self) -> dict[str, int | None]:
        return {row.name: row.pid for row in self.status()}

    def banner(self) -> str:
        """Where things are, printed once at start."""
        s = self.settings
        host = f"[{s.host}]" if ":" in s.host else s.host
        if self._redis:
            redis_where = f"{self.redis_url}  (embedded, data in {self._redis.server.data_dir})"
        elif s.redis_sentinels:
            redis_where = f"primary {s.redis_sentinel_master!r} via sentinels {', '.join(s.redis_sentinels)}"
        else:
            redis_where = str(self.redis_url)
        lines = [
            f"API       http://{host}:{s.port}  (docs: /docs)",
            f"Redis     {redis_where}",
            f"results   {s.results_url or Path(s.results_dir).resolve()}",
        ]
        lines.append(access_line(s, s.host))
        lines.append("Ctrl-C stops everything.")
        return "\n".join(lines)

    def run(self, *, poll_interval_s: float = 1.0) -> int:
        """Start, supervise until SIGINT/SIGTERM, stop. A second signal kills at once.

        Returns:
            0 after a clean stop.
        """
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            try:
                self._start_redis()
                print(self.banner(), flush=True)
                self._start_children()
                while not self._stop_requested:
                    self.poll_once()
                    time.sleep(poll_interval_s)
            finally:
                log.info("shutting down")
                self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    # -- internals --------------------------------------------------------------

    def _start_redis(self) -> None:
        if self._started:
            raise RuntimeError("Supervisor.start() called twice")
        self._started = True
        self.settings.var_dir.mkdir(parents=True, exist_ok=True)
        self.settings.results_dir.mkdir(parents=True, exist_ok=True)
        if self.embeds_redis:
            redis_dir = self.settings.var_dir / "redis"
            port = self._redis_port or _embedded_redis_port(redis_dir)
            self._redis = _EmbeddedRedis(RedisServer(redis_dir, port=port), self._new_backoff())
            self._redis.server.start()
            self._redis.started_at = time.monotonic()

    def _start_children(self) -> None:
        for child in self._children:
            self._spawn(child)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stop_requested:
            log.warning("second %s: killing everything now", signal.Signals(signum).name)
            self._force = True
        self._stop_requested = True

    def _child_env(self) -> dict[str, str]:
        env = dict(self._base_env)
        if self.redis_url:
            env["DIP_REDIS_URL"] = self.redis_url
        if self.settings.redis_sentinels:
            # From our settings, not just inherited: they may come from arguments or a .env
            # the children do not read, and they must follow the same primary as we report.
            env["DIP_REDIS_SENTINELS"] = ",".join(self.settings.redis_sentinels)
            env["DIP_REDIS_SENTINEL_MASTER"] = self.settings.redis_sentinel_master
        # Absolute, so that children agree with us whatever their working directory.
        env["DIP_VAR_DIR"] = str(Path(self.settings.var_dir).resolve())
        env["DIP_RESULTS_DIR"] = str(Path(self.settings.results_dir).resolve())
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _spawn(self, child: _Child) -> None:
        child.proc = spawn(child.spec.argv, env=dict(child.spec.env_defaults) | self._child_env())
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info("started %s (pid %d)", child.spec.name, child.proc.pid)

    def _poll_redis(self, now: float) -> None:
        r = self._redis
        assert r is not None
        if r.restart_at is None and not r.server.is_running():
            code = r.server.returncode
            delay = r.backoff.after_exit(now - r.started_at)
            r.restart_at = now + delay
            log.warning("redis exited with %s; restarting%s", _describe_exit(code), _in(delay))
        if r.restart_at is not None and now >= r.restart_at:
            r.restarts += 1
            try:
                r.server.start()
            except RedisStartError as exc:
                delay = r.backoff.after_exit(0.0)
                r.restart_at = time.monotonic() + delay
                log.error("redis did not start: %s; trying again%s", exc, _in(delay))
                return
            r.started_at = time.monotonic()
            r.restart_at = None
            log.info("restarted redis (pid %d) at %s", r.server.pid, r.server.url)

    def _stop_proc(self, proc: subprocess.Popen, timeout_s: float) -> None:
        # Polite signal to the main process only: Celery's main process shuts its pool
        # down itself. Waiting in small steps lets a second Ctrl-C cut the wait short.
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline and not self._force:
            time.sleep(0.05)
        if proc.poll() is None:
            log.warning("pid %d did not stop within %g s; killing it", proc.pid, timeout_s)
        kill_group(proc)
        proc.wait()


def _embedded_redis_port(redis_dir: Path) -> int:
    """The port used last time in ``redis_dir`` if free, else 6390, else any; remembered."""
    record = redis_dir / "port"
    try:
        last = int(record.read_text().strip())
    except (FileNotFoundError, ValueError):
        last = None
    if last is not None and 0 < last < 65536 and port_is_free(last):
        return last
    port = DEFAULT_REDIS_PORT if port_is_free(DEFAULT_REDIS_PORT) else free_port()
    redis_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(f"{port}\n")
    return port


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def _in(delay: float) -> str:
    return f" in {delay:g} s" if delay > 0 else ""


def _left(at: float | None, now: float) -> float | None:
    return None if at is None else max(0.0, at - now)
