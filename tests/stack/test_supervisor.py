from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from api.config import Settings
from stack.process import free_port, pid_alive
from stack.redis_server import RedisServer
from stack.supervisor import ChildSpec, Supervisor, default_children

SLEEPER = (sys.executable, "-c", "import time; time.sleep(60)")


def _settings(tmp_path: Path, **overrides) -> Settings:
    values = {"var_dir": tmp_path / "var", "results_dir": tmp_path / "var" / "results", "redis_url": None}
    return Settings(**(values | overrides))


def _until(condition: Callable[[], bool], sup: Supervisor, timeout_s: float) -> float:
    """Poll the supervisor as ``run()`` would until ``condition``; returns the seconds taken."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, f"not within {timeout_s} s: {sup.status()}"
        sup.poll_once()
        time.sleep(0.1)
    return time.monotonic() - start


@pytest.fixture
def supervised(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[..., Supervisor]]:
    """Build supervisors against the session Redis; all are stopped at the end."""
    made: list[Supervisor] = []

    def make(children, **kwargs) -> Supervisor:
        sup = Supervisor(_settings(tmp_path, redis_url=redis_server.url), children=children, **kwargs)
        made.append(sup)
        sup.start()
        return sup

    yield make
    for sup in made:
        sup.stop()


def test_a_killed_child_is_restarted_within_seconds(supervised) -> None:
    sup = supervised([ChildSpec("worker", SLEEPER), ChildSpec("api", SLEEPER)])
    before = sup.pids()
    assert all(before.values())
    os.kill(before["worker"], signal.SIGKILL)

    took = _until(lambda: sup.pids()["worker"] not in (None, before["worker"]), sup, timeout_s=5)
    after = sup.pids()
    assert pid_alive(after["worker"])
    assert after["api"] == before["api"]  # the others are left alone
    assert {s.name: s.restarts for s in sup.status()} == {"worker": 1, "api": 0}
    assert took < 3


def test_stop_ends_every_child_in_reverse_order(supervised, tmp_path: Path) -> None:
    log = tmp_path / "order.log"
    # Each child appends its name when it receives SIGTERM, so the file shows the stop order.
    code = (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        f"    open({str(log)!r}, 'a').write(sys.argv[1] + '\\n'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "time.sleep(60)\n"
    )
    sup = supervised([ChildSpec(n, (sys.executable, "-c", code, n)) for n in ("worker", "api")])
    time.sleep(0.5)  # let them install their handlers
    pids = sup.pids()
    sup.stop()
    assert not any(pid_alive(pid) for pid in pids.values())
    assert log.read_text().split() == ["api", "worker"]
    assert all(s.pid is None for s in sup.status())


def test_a_child_that_ignores_sigterm_is_killed_after_its_timeout(supervised) -> None:
    stubborn = (sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)")
    sup = supervised([ChildSpec("stubborn", stubborn, stop_timeout_s=1.0)])
    time.sleep(0.5)
    pid = sup.pids()["stubborn"]
    start = time.monotonic()
    sup.stop()
    assert 0.9 < time.monotonic() - start < 5
    assert not pid_alive(pid)


def test_a_crash_loop_backs_off(supervised) -> None:
    crasher = (sys.executable, "-c", "raise SystemExit(3)")
    sup = supervised([ChildSpec("crasher", crasher)], restart_backoff_s=0.2, max_backoff_s=0.8)
    delays = []
    for _ in range(4):
        _until(lambda: sup.status()[0].restart_in_s is not None, sup, timeout_s=5)
        delays.append(sup.status()[0].restart_in_s)
        _until(lambda: sup.status()[0].restart_in_s is None, sup, timeout_s=5)
    # 0.2, 0.4, 0.8, 0.8 minus the little time between the exit and the look.
    assert delays[0] < delays[1] < delays[2]
    assert delays[2] == pytest.approx(0.8, abs=0.15) and delays[3] == pytest.approx(0.8, abs=0.15)
    assert sup.status()[0].restarts == 4


def test_children_get_the_redis_url_and_absolute_dirs(supervised, tmp_path: Path, redis_server) -> None:
    out = tmp_path / "env.txt"
    code = (
        "import os\n"
        f"open({str(out)!r}, 'w').write('\\n'.join(os.environ[k] for k in "
        "('DIP_REDIS_URL', 'DIP_VAR_DIR', 'DIP_RESULTS_DIR')))\n"
        "import time; time.sleep(60)\n"
    )
    supervised([ChildSpec("env", (sys.executable, "-c", code))])
    deadline = time.monotonic() + 5
    while not out.exists() or len(out.read_text().splitlines()) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    url, var_dir, results_dir = out.read_text().splitlines()
    assert url == redis_server.url
    assert Path(var_dir).is_absolute() and Path(var_dir) == (tmp_path / "var").resolve()
    assert Path(results_dir) == (tmp_path / "var" / "results").resolve()


def test_embedded_redis_is_started_restarted_and_stopped(tmp_path: Path) -> None:
    port = free_port()
    sup = Supervisor(_settings(tmp_path), children=[ChildSpec("sleeper", SLEEPER)], redis_port=port)
    try:
        sup.start()
        assert sup.redis_url == f"redis://127.0.0.1:{port}/0"
        server = sup.embedded_redis
        assert server is not None and server.data_dir == (tmp_path / "var" / "redis").resolve()
        server.client().set("job:1", "queued")
        server.client().execute_command("BGREWRITEAOF")  # on disk before the crash below
        time.sleep(0.5)
        old = server.pid
        os.kill(old, signal.SIGKILL)
        _until(lambda: sup.pids()["redis"] not in (None, old), sup, timeout_s=5)
        assert server.port == port
        assert server.client().get("job:1") == b"queued"
        assert "embedded" in sup.banner() and "open: no API keys configured" in sup.banner()
    finally:
        sup.stop()
    assert not server.is_running()
    assert all(s.pid is None for s in sup.status())


def test_embedded_redis_port_is_remembered(tmp_path: Path) -> None:
    first = Supervisor(_settings(tmp_path), children=[])
    first.start()
    port = first.embedded_redis.port
    first.stop()
    second = Supervisor(_settings(tmp_path), children=[])
    second.start()
    try:
        assert second.embedded_redis.port == port
    finally:
        second.stop()


def test_default_children_run_dip_subcommands(tmp_path: Path) -> None:
    settings = _settings(tmp_path, host="127.0.0.1", port=8123)
    worker, api = default_children(settings, python="py", worker_grace_s=45)
    assert worker.argv == ("py", "-m", "stack.cli", "worker") and worker.stop_timeout_s == 45
    assert api.argv == ("py", "-m", "stack.cli", "api", "--host", "127.0.0.1", "--port", "8123")


def test_bad_specs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="argv"):
        ChildSpec("x", ())
    with pytest.raises(ValueError, match="-1"):
        ChildSpec("x", ("true",), stop_timeout_s=-1)
    with pytest.raises(ValueError, match="unique"):
        Supervisor(_settings(tmp_path), children=[ChildSpec("a", ("true",)), ChildSpec("a", ("true",))])


def _run_in_process(tmp_path: Path, redis_url: str) -> tuple[subprocess.Popen, list[int]]:
    """``Supervisor.run()`` with two sleepers in a real process; returns it and the children's pids."""
    pids_file = tmp_path / "pids"
    script = (
        "import sys\n"
        "from api.config import Settings\n"
        "from stack.supervisor import ChildSpec, Supervisor\n"
        f"s = Settings(var_dir={str(tmp_path / 'var')!r}, results_dir={str(tmp_path / 'res')!r}, "
        f"redis_url={redis_url!r})\n"
        f"sup = Supervisor(s, children=[ChildSpec('a', {SLEEPER!r}), ChildSpec('b', {SLEEPER!r})])\n"
        "poll = sup.poll_once\n"
        "def report_and_poll():\n"
        f"    open({str(pids_file)!r}, 'w').write(' '.join(str(p) for p in sup.pids().values()))\n"
        "    poll()\n"
        "sup.poll_once = report_and_poll\n"
        "sys.exit(sup.run(poll_interval_s=0.1))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 10
    while not pids_file.exists() or len(pids_file.read_text().split()) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.05)
    return proc, [int(p) for p in pids_file.read_text().split()]


def test_sigterm_stops_run_cleanly(tmp_path: Path, redis_server: RedisServer) -> None:
    proc, pids = _run_in_process(tmp_path, redis_server.url)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert "open: no API keys configured" in out
    assert not any(pid_alive(p) for p in pids)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="children die with their parent on Linux only")
def test_children_do_not_outlive_a_killed_supervisor(tmp_path: Path, redis_server: RedisServer) -> None:
    proc, pids = _run_in_process(tmp_path, redis_server.url)
    proc.kill()
    proc.communicate(timeout=5)
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"orphans left running: {pids}"
        time.sleep(0.05)
