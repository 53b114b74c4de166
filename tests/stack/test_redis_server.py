from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from core.process import pid_alive
from stack.redis_server import RedisServer, RedisStartError, find_redis_executable


def test_finds_an_executable() -> None:
    assert Path(find_redis_executable()).is_file()


def test_the_embedded_server_never_evicts(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        client = server.client(decode_responses=True)
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        client.close()


def test_data_survive_a_restart_on_the_same_directory(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    with server:
        first_pid = server.pid
        client = server.client()
        client.set("job:1", "queued")
        client.rpush("queue", "a", "b")
        client.close()
    assert server.pid is None and not pid_alive(first_pid)

    with RedisServer(tmp_path, port=server.port) as again:
        client = again.client(decode_responses=True)
        assert client.get("job:1") == "queued"
        assert client.lrange("queue", 0, -1) == ["a", "b"]
        client.close()


def test_restart_keeps_port_and_data(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        port, pid = server.port, server.pid
        server.client().set("k", "v")
        server.restart()
        assert server.port == port
        assert server.pid != pid
        assert server.client().get("k") == b"v"
        assert server.url == f"redis://127.0.0.1:{port}/0"


def test_two_servers_run_at_once_on_free_ports(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "a") as a, RedisServer(tmp_path / "b") as b:
        assert a.port != b.port
        a.client().set("who", "a")
        b.client().set("who", "b")
        assert a.client().get("who") == b"a"
        assert b.client().get("who") == b"b"
        assert (tmp_path / "a" / "redis.log").stat().st_size > 0


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "a") as a:
        with pytest.raises(RedisStartError, match=f"port {a.port}.*in use"):
            RedisServer(tmp_path / "b", port=a.port).start()


def test_a_server_that_cannot_start_reports_its_log(tmp_path: Path) -> None:
    # A stand-in binary that fails the way a real one does on a bad option or a broken file.
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'cannot open the append only file' ; exit 1\n")
    fake.chmod(0o755)
    with pytest.raises(RedisStartError, match="(?s)exited with code 1.*cannot open the append only file"):
        RedisServer(tmp_path, executable=str(fake), startup_timeout_s=5).start()


def test_crash_is_visible_and_start_recovers(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        server.client().set("k", "v")
        # appendfsync everysec: wait for the write to reach the file before the crash.
        server.client().execute_command("BGREWRITEAOF")
        _wait_rewrite(server)
        os.kill(server.pid, signal.SIGKILL)
        # Not wait_pid_gone: the main thread shows as a zombie while redis' other threads
        # are still exiting, and only then can the parent reap it (what is_running checks).
        deadline = time.monotonic() + 5
        while server.is_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.is_running()
        assert server.returncode == -signal.SIGKILL
        server.start()
        assert server.client().get("k") == b"v"


def test_a_server_left_running_on_the_directory_is_stopped_first(tmp_path: Path) -> None:
    orphan = RedisServer(tmp_path).start()
    orphan_pid = orphan.pid
    try:
        with RedisServer(tmp_path) as successor:
            assert not pid_alive(orphan_pid)
            assert successor.client().ping()
    finally:
        orphan.stop()


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="70000"):
        RedisServer("x", port=70000)
    with pytest.raises(ValueError, match="startup_timeout_s"):
        RedisServer("x", startup_timeout_s=0)


def test_session_fixture_is_a_live_server(redis_server: RedisServer) -> None:
    assert redis_server.is_running()
    assert redis_server.client().ping()


def _wait_rewrite(server: RedisServer) -> None:
    import time

    deadline = time.monotonic() + 5
    while server.client().info("persistence")["aof_rewrite_in_progress"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
