"""Small process helpers shared by the embedded Redis server and the supervisor."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


def poll_until(condition: Callable[[], Any], *, timeout_s: float, what: str, every_s: float = 0.05,
               error: type[BaseException] = TimeoutError) -> Any:
    """Call ``condition`` until it returns something truthy, and return that; after
    ``timeout_s`` raise ``error("not within {timeout_s} s: {what}")``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"not within {timeout_s} s: {what}")
        time.sleep(every_s)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` can be bound on ``host`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option as servers use, so a port in TIME_WAIT after a clean stop counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when this process dies.

    Without it a ``kill -9`` of ``dip serve`` (or of a test run) would leave
    Redis, the worker and the API running, holding their ports.  Linux only;
    elsewhere children simply outlive a killed parent.
    """
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
) -> subprocess.Popen:
    """Start ``argv`` in its own process group, tied to this process's life.

    Its own group keeps a terminal's Ctrl-C away from it, so that the parent
    decides the order in which things stop.
    """
    return subprocess.Popen(
        list(argv),
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        process_group=0,
        preexec_fn=_die_with_parent(),
    )


def stop_process(proc: subprocess.Popen, *, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int:
    """Send ``sig`` to ``proc``, wait up to ``timeout_s``, then SIGKILL its whole group.

    The polite signal goes to the main process only (Celery's main process
    shuts its pool down itself); the kill goes to the group so that no pool
    child outlives it.

    Returns:
        The process's exit code.
    """
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
    kill_group(proc)
    return proc.wait()


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group that ``proc`` leads (no-op if gone)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def signal_pid(pid: int, sig: int) -> None:
    """``os.kill`` that ignores a process already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc: trust kill(0)
        return True


def wait_pid_gone(pid: int, timeout_s: float) -> bool:
    """Poll until ``pid`` is gone or ``timeout_s`` passes; True if it is gone."""
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
