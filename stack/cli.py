"""The ``dip`` command.

Subcommands::

    dip restore TASK IMAGE ...   restore one image here (the engine's CLI)
    dip serve                    Redis (embedded unless DIP_REDIS_URL), a worker and the API
    dip api                      the REST API alone (uvicorn)
    dip worker                   one Celery worker alone
    dip cluster                  several hosts on one machine: Redis with a sentinel, an S3
                                 server, the API and N workers sharing no folder

Each subcommand is one ``Command`` in ``COMMANDS``; a new one (``dip submit``,
``dip status``...) is one more entry. Heavy modules are imported inside the
``run`` functions so that ``dip --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dip_engine.cli import ArgumentParser


@dataclass(frozen=True)
class Command:
    """One ``dip`` subcommand: its arguments and what it runs (returns the exit status)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# -- dip restore ----------------------------------------------------------------


def _add_restore(parser: argparse.ArgumentParser) -> None:
    from dip_engine.cli import add_restore_arguments

    add_restore_arguments(parser)


def _run_restore(args: argparse.Namespace) -> int:
    from dip_engine.cli import run_restore

    return run_restore(args)


# -- dip api --------------------------------------------------------------------


def _add_api(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="bind address (default: DIP_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=_port, help="port (default: DIP_PORT, 8000)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def _run_api(args: argparse.Namespace) -> int:
    import uvicorn

    from core.config import get_settings
    from core.results import results_refusal
    from stack.supervisor import access_line, open_bind_refusal

    settings = get_settings()
    host = args.host or settings.host
    port = args.port or settings.port
    refusal = open_bind_refusal(settings, host) or results_refusal(settings)
    if refusal:
        print(f"dip api: error: {refusal}", file=sys.stderr)
        return 2
    print(f"dip api: {access_line(settings, host)}", file=sys.stderr, flush=True)
    # The app reads its settings again; make them agree with where it really listens.
    os.environ["DIP_HOST"], os.environ["DIP_PORT"] = host, str(port)
    get_settings.cache_clear()
    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=host,
        port=port,
        log_level=args.log_level,
        # Open event streams would otherwise hold a shutdown forever.
        timeout_graceful_shutdown=5,
    )
    return 0


# -- dip worker -----------------------------------------------------------------


def _add_worker(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", "-c", type=_positive_int,
                        help="worker processes, one per GPU (default: DIP_WORKER_CONCURRENCY, 1)")
    parser.add_argument("--loglevel", "-l", default="INFO",
                        choices=("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"), type=str.upper)
    parser.add_argument("--hostname", "-n", help="Celery node name (default celery@HOST); unique per worker")


def worker_argv(args: argparse.Namespace, *, queue: str, concurrency: int, python: str = sys.executable) -> list[str]:
    """The ``celery worker`` command line that ``dip worker`` runs."""
    argv = [
        python, "-m", "celery", "-A", "worker.celery_app:app", "worker",
        "--queues", queue,
        "--pool", "prefork",
        "--concurrency", str(args.concurrency or concurrency),
        # Hand a job only to a pool process that is free; with the default a long
        # job could have the next one waiting behind it in the same process.
        "-O", "fair",
        "--loglevel", args.loglevel,
    ]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    return argv


def _run_worker(args: argparse.Namespace) -> int:
    from core.config import get_settings
    from core.results import results_refusal

    settings = get_settings()
    refusal = results_refusal(settings)
    if refusal:
        print(f"dip worker: error: {refusal}", file=sys.stderr)
        return 2
    argv = worker_argv(args, queue=settings.queue, concurrency=settings.worker_concurrency)
    sys.stdout.flush()
    sys.stderr.flush()
    # exec, not a child: signals from a supervisor or Docker reach Celery itself.
    os.execv(argv[0], argv)
    return 1  # not reached


# -- dip serve ------------------------------------------------------------------


def _add_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="API bind address (default: DIP_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=_port, help="API port (default: DIP_PORT, 8000)")
    parser.add_argument("--shutdown-grace", type=float, default=30.0, metavar="SECONDS",
                        help="how long the worker may take to stop before it is killed (default 30)")


def _run_serve(args: argparse.Namespace) -> int:
    from core.config import get_settings
    from core.results import results_refusal
    from stack.redis_server import RedisStartError
    from stack.supervisor import Supervisor, default_children, open_bind_refusal

    logging.basicConfig(level=logging.INFO, format="%(asctime)s dip serve: %(message)s", datefmt="%H:%M:%S")
    if args.shutdown_grace < 0:
        print(f"dip serve: error: --shutdown-grace must be >= 0, got {args.shutdown_grace}", file=sys.stderr)
        return 2
    settings = get_settings()
    updates = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = settings.model_copy(update=updates)
    refusal = open_bind_refusal(settings, settings.host) or results_refusal(settings)
    if refusal:
        print(f"dip serve: error: {refusal}", file=sys.stderr)
        return 2
    children = default_children(settings, worker_grace_s=args.shutdown_grace)
    try:
        return Supervisor(settings, children=children).run()
    except RedisStartError as exc:
        print(f"dip serve: error: {exc}", file=sys.stderr)
        return 1


# -- dip cluster ----------------------------------------------------------------


def _add_cluster(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=_positive_int, default=2, help="workers to start (default 2)")
    parser.add_argument("--port", type=_port, help="API port (default: DIP_PORT, 8000)")
    parser.add_argument("--dir", default="var/cluster", help="where each process keeps its own folders "
                        "(default var/cluster)")


def _run_cluster(args: argparse.Namespace) -> int:
    from pathlib import Path

    from core.config import get_settings
    from stack.cluster import ClusterError, run_cluster
    from stack.redis_server import RedisStartError
    from stack.sentinel import TopologyTimeout

    logging.basicConfig(level=logging.INFO, format="%(asctime)s dip cluster: %(message)s", datefmt="%H:%M:%S")
    settings = get_settings()
    if args.port is not None:
        settings = settings.model_copy(update={"port": args.port})
    try:
        return run_cluster(settings, root=Path(args.dir), workers=args.workers)
    except (ClusterError, RedisStartError, TopologyTimeout) as exc:
        print(f"dip cluster: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1


# -- dip submit / status / watch / download / cancel / jobs (clients of a running API) --


def _client_command(name: str, summary: str) -> Command:
    """A client command of ``dip_client.cli`` (``add_<name>``, ``run_<name>``), imported when used."""
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        from dip_client import cli

        getattr(cli, f"add_{name}")(parser)

    def run(args: argparse.Namespace) -> int:
        from dip_client import cli

        return int(getattr(cli, f"run_{name}")(args))

    return Command(name, summary, add_arguments, run)


# -- the command ----------------------------------------------------------------

COMMANDS: tuple[Command, ...] = (
    Command("restore", "restore one image with Deep Image Prior (no server)", _add_restore, _run_restore),
    Command("serve", "run Redis, a worker and the API together", _add_serve, _run_serve),
    Command("api", "run the REST API alone", _add_api, _run_api),
    Command("worker", "run one Celery worker alone", _add_worker, _run_worker),
    Command("cluster", "several hosts on one machine: Redis with a sentinel, an S3 server, the API and "
                       "N workers sharing no folder", _add_cluster, _run_cluster),
    _client_command("submit", "submit an image to a running API (and --wait for it)"),
    _client_command("status", "show a job of a running API"),
    _client_command("watch", "follow a job live until it ends"),
    _client_command("download", "save a job's result and files"),
    _client_command("cancel", "cancel a queued or running job"),
    _client_command("jobs", "list your jobs, newest first"),
)


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    """The ``dip`` argument parser with one subparser per command."""
    parser = ArgumentParser(prog="dip", description="Deep Image Prior restoration: a library, a CLI and a job service.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for command in commands:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args._run(args)
    except KeyboardInterrupt:
        return 130


def _version() -> str:
    from dip_engine import __version__

    return __version__


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


if __name__ == "__main__":
    raise SystemExit(main())
