from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.config import Settings
from core.process import free_port, pid_alive
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


def _wait_for_files(paths: list[Path], timeout_s: float = 10) -> None:
    """Until every one of ``paths`` exists (children create them once ready)."""
    deadline = time.monotonic() + timeout_s
    while not all(path.exists() for path in paths):
        assert time.monotonic() < deadline, f"not created within {timeout_s} s: {[p for p in paths if not p.exists()]}"
        time.sleep(0.05)


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
    # Each child appends its name when it receives SIGTERM, so the file shows the stop order;
    # it creates ready-<name> once its handler is installed.
    code = (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        f"    open({str(log)!r}, 'a').write(sys.argv[1] + '\\n'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        f"open({str(tmp_path)!r} + '/ready-' + sys.argv[1], 'w').close()\n"
        "time.sleep(60)\n"
    )
    sup = supervised([ChildSpec(n, (sys.executable, "-c", code, n)) for n in ("worker", "api")])
    _wait_for_files([tmp_path / "ready-worker", tmp_path / "ready-api"])
    pids = sup.pids()
    assert all(pid_alive(pid) for pid in pids.values())  # none has exited (or been restarted) yet
    sup.stop()
    assert not any(pid_alive(pid) for pid in pids.values())
    assert log.read_text().split() == ["api", "worker"]
    assert all(s.pid is None for s in sup.status())


def test_a_child_that_ignores_sigterm_is_killed_after_its_timeout(supervised, tmp_path: Path) -> None:
    ready = tmp_path / "ignoring"
    stubborn = (sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                f"open({str(ready)!r}, 'w').close(); time.sleep(60)")
    sup = supervised([ChildSpec("stubborn", stubborn, stop_timeout_s=1.0)])
    _wait_for_files([ready])  # SIGTERM is ignored from now on
    pid = sup.pids()["stubborn"]
    start = time.monotonic()
    sup.stop()
    took = time.monotonic() - start
    assert not pid_alive(pid)
    # It waited out the timeout before killing; the upper bound only says it did not wait for
    # the child's 60 s sleep to end (generous: the kill comes late on a busy machine).
    assert 1.0 <= took < 30


def test_a_crash_loop_backs_off(supervised) -> None:
    crasher = (sys.executable, "-c", "raise SystemExit(3)")
    first_s, max_s = 0.2, 0.8
    sup = supervised([ChildSpec("crasher", crasher)], restart_backoff_s=first_s, max_backoff_s=max_s)
    configured = [0.2, 0.4, 0.8, 0.8]  # doubling, capped at max_s
    # For each restart: the delay the supervisor announced right after it noticed the exit
    # (an upper bound of the delay it set: time only shortens it), and how long it really waited
    # between noticing the exit and starting the child again (a lower bound: time only adds).
    # Neither bound can be broken by a slow machine, only by a wrong back-off.
    announced: list[float | None] = []
    waited: list[float] = []
    noticed_at: float | None = None
    deadline = time.monotonic() + 30
    while len(waited) < len(configured):
        assert time.monotonic() < deadline, f"only {len(waited)} restarts: {sup.status()}"
        before = time.monotonic()
        sup.poll_once()
        after = time.monotonic()
        row = sup.status()[0]
        if noticed_at is None and (row.restart_in_s is not None or row.restarts > len(waited)):
            noticed_at = before  # this poll saw the exit
            announced.append(row.restart_in_s)
        if row.restarts > len(waited):
            assert row.restarts == len(waited) + 1 and noticed_at is not None
            waited.append(after - noticed_at)  # this poll restarted it
            noticed_at = None
        time.sleep(0.02)

    assert all(a is not None for a in announced), f"restarted at once, no back-off: {announced}"
    for step, (expected, said, took) in enumerate(zip(configured, announced, waited)):
        assert said <= expected + 1e-6, f"restart {step + 1}: announced {said} s, more than {expected} s"
        assert took >= expected - 1e-6, f"restart {step + 1}: restarted after {took} s, before {expected} s"
    # So the delays grew: the later restarts waited clearly longer than the first was announced...
    assert min(waited[2:]) > 2 * announced[0]
    # ...and stopped at the cap (doubling on would have announced 1.6 s for the fourth).
    assert max(announced) <= max_s + 1e-6
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
        client = server.client()
        client.execute_command("BGREWRITEAOF")  # on disk before the crash below
        deadline = time.monotonic() + 10
        while True:  # until the rewrite (forked at once, or scheduled) is done and recorded
            info = client.info("persistence")
            if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                break
            assert time.monotonic() < deadline, f"AOF rewrite not done within 10 s: {info}"
            time.sleep(0.05)
        assert info["aof_last_bgrewrite_status"] == "ok", info
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


@pytest.mark.parametrize("redis_url", [None, "redis://:secret@ignored:1/2"])
def test_with_sentinels_no_private_redis_is_started(tmp_path: Path, monkeypatch, redis_url) -> None:
    def no_redis(*args, **kwargs):
        raise AssertionError("a private Redis was started although sentinels are configured")

    monkeypatch.setattr("stack.supervisor.RedisServer", no_redis)
    settings = _settings(tmp_path, redis_url=redis_url, redis_sentinels="s1:26379,s2:26379",
                         redis_sentinel_master="prod")
    sup = Supervisor(settings, children=[], env={"PATH": os.environ.get("PATH", "")})
    sup.start()
    try:
        assert not sup.embeds_redis and sup.embedded_redis is None
        assert [row.name for row in sup.status()] == []
        env = sup._child_env()
        # The children find the primary through the sentinels; a URL only lends a password and database.
        assert env.get("DIP_REDIS_URL") == redis_url
        assert env["DIP_REDIS_SENTINELS"] == "s1:26379,s2:26379" and env["DIP_REDIS_SENTINEL_MASTER"] == "prod"
        assert "via sentinels s1:26379, s2:26379" in sup.banner()
    finally:
        sup.stop()


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
        "from core.config import Settings\n"
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
