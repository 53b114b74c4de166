"""``dip submit / status / watch / download / cancel / jobs``: the job API from a shell.

``stack.cli`` holds one table entry per command; the arguments and the runs are here.
Exit status: 0 done (a job that succeeded), 1 the job failed or the server could not be
reached, 2 bad usage or input (a 4xx answer, a missing file), 3 the job was canceled.
Errors are one ``dip CMD: error: ...`` line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the client (httpx, pydantic models) loads only when a command runs
    from dip_client import Client, JobPublic

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELED = 0, 1, 2, 3


# -- arguments ------------------------------------------------------------------------


def _add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the API's base URL (default: DIP_URL, else http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="API key, sent as a Bearer token (default: DIP_API_KEY)")
    parser.add_argument("--json", action="store_true", help="print the job(s) as JSON on stdout")


def _add_job_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", metavar="ID", help="the job's id (as `dip submit` or `dip jobs` print it)")
    _add_connection(parser)


def add_submit(parser: argparse.ArgumentParser) -> None:
    # The job's options are dip restore's, from the same table (RestoreSpec), but the device:
    # the worker's to choose.
    from dip_engine.cli import add_spec_arguments
    from dip_engine.spec import TASKS

    parser.add_argument("image", metavar="IMAGE", help="the image to restore (PNG, JPEG...): a file, or an "
                        "https://, http:// or s3:// URL for the server to fetch (as --mask, --kernel, --reference)")
    parser.add_argument("--task", required=True, choices=TASKS, help="what to restore")
    groups = {"mask": parser.add_mutually_exclusive_group(), "kernel": parser.add_mutually_exclusive_group()}
    groups["mask"].add_argument("--mask", metavar="FILE", help="inpaint: white = known pixel, black = to fill")
    groups["kernel"].add_argument("--kernel", metavar="FILE", help="deblur: the blur kernel as a grayscale image")
    parser.add_argument("--reference", metavar="FILE", help="clean image the size of the output, for PSNR")
    add_spec_arguments(parser, groups=groups, service_only=True)
    parser.add_argument("--wait", action="store_true",
                        help="follow the job until it ends, with a progress line on stderr")
    parser.add_argument("--out", metavar="DIR", help="when it ends, download its files here (implies --wait)")
    _add_connection(parser)


def add_status(parser: argparse.ArgumentParser) -> None:
    _add_job_id(parser)


def add_watch(parser: argparse.ArgumentParser) -> None:
    _add_job_id(parser)
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long (exit 1)")


def add_download(parser: argparse.ArgumentParser) -> None:
    _add_job_id(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to save the files in")
    parser.add_argument("--snapshots", action="store_true", help="also the snapshot PNGs")


def add_cancel(parser: argparse.ArgumentParser) -> None:
    _add_job_id(parser)


def add_jobs(parser: argparse.ArgumentParser) -> None:
    # Spelled out: core.store would load redis just to build `dip --help`.
    statuses = ("queued", "running", "succeeded", "failed", "canceled")
    parser.add_argument("--status", choices=statuses, help="only jobs in this status")
    parser.add_argument("--limit", type=int, default=20, help="how many, newest first (1-100, default 20)")
    _add_connection(parser)


# -- runs -----------------------------------------------------------------------------


def run_submit(args: argparse.Namespace) -> int:
    from dip_engine.spec import request_fields

    params: dict[str, Any] = {each.name: value for each in request_fields()
                              if each.param.service and each.name != "task"
                              and (value := getattr(args, each.name, None)) is not None}

    def submit(client: Client) -> int:
        job = client.submit(args.image, task=args.task, mask=args.mask, reference=args.reference,
                            kernel=args.kernel, **params)
        if not (args.wait or args.out):
            _print_job(job, args)
            return EXIT_OK
        print(f"dip submit: job {job.id} queued", file=sys.stderr)
        return _follow(client, job.id, args)

    return _with_client("submit", args, submit)


def run_status(args: argparse.Namespace) -> int:
    return _with_client("status", args, lambda client: _print_job(client.get(args.job_id), args))


def run_watch(args: argparse.Namespace) -> int:
    return _with_client("watch", args, lambda client: _follow(client, args.job_id, args))


def run_download(args: argparse.Namespace) -> int:
    def download(client: Client) -> int:
        saved = client.download(args.job_id, args.out, snapshots=args.snapshots)
        if args.json:
            print(json.dumps({name: str(path) for name, path in saved.items()}))
        else:
            for path in saved.values():
                print(path)
        return EXIT_OK

    return _with_client("download", args, download)


def run_cancel(args: argparse.Namespace) -> int:
    return _with_client("cancel", args, lambda client: _print_job(client.cancel(args.job_id), args))


def run_jobs(args: argparse.Namespace) -> int:
    def jobs(client: Client) -> int:
        page = client.list(status=args.status, limit=args.limit)
        if args.json:
            print(page.model_dump_json())
        for job in [] if args.json else page.items:
            print(_summary(job))
        return EXIT_OK

    return _with_client("jobs", args, jobs)


# -- shared ---------------------------------------------------------------------------


def _with_client(command: str, args: argparse.Namespace, body: Callable[[Client], int]) -> int:
    """Run ``body`` with a client, turning every expected failure into one line and a status."""
    from dip_client import Client, DipError

    try:
        with Client(args.url, api_key=args.api_key) as client:
            return body(client)
    except DipError as exc:
        print(f"dip {command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT if exc.is_client_error else EXIT_FAILED
    except (OSError, ValueError, TypeError) as exc:  # a missing or unreadable file, a value the client refuses
        print(f"dip {command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TimeoutError as exc:
        print(f"dip {command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _follow(client: Client, job_id: str, args: argparse.Namespace) -> int:
    """Wait for the job with a live line on stderr, download it if ``--out``; its status as exit code."""
    line = _ProgressLine()
    try:
        job = client.wait(job_id, progress=line.show, timeout=getattr(args, "timeout", None))
    finally:
        line.close()
    if getattr(args, "out", None) and job.status.value == "succeeded":
        client.download(job.id, args.out)
    _print_job(job, args)
    if job.error is not None:
        print(f"dip: job {job.id} {job.status.value}: {job.error.message} ({job.error.code})", file=sys.stderr)
    return {"succeeded": EXIT_OK, "canceled": EXIT_CANCELED}.get(job.status.value, EXIT_FAILED)


class _ProgressLine:
    """One stderr line rewritten in place (``\\r``): iteration, loss, PSNR, ETA."""

    def __init__(self) -> None:
        self._width = 0

    def show(self, job: JobPublic) -> None:
        text = _summary(job)
        sys.stderr.write("\r" + text.ljust(self._width))
        sys.stderr.flush()
        self._width = len(text)

    def close(self) -> None:
        if self._width:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _summary(job: JobPublic) -> str:
    parts = [job.id, job.task, job.status.value]
    if job.status.value == "queued" and job.queue_position:
        parts.append(f"#{job.queue_position} in queue")
    if job.progress:
        parts.append(f"it {job.progress.iteration}/{job.progress.total}")
    if job.metrics and job.metrics.loss is not None:
        parts.append(f"loss {job.metrics.loss:.4g}")
    if job.metrics and job.metrics.psnr is not None:
        parts.append(f"PSNR {job.metrics.psnr:.2f} dB")
    if job.status.value == "running" and job.progress and job.progress.eta_seconds is not None:
        parts.append(f"ETA {job.progress.eta_seconds:.0f} s")
    return "  ".join(parts)


def _print_job(job: JobPublic, args: argparse.Namespace) -> int:
    print(job.model_dump_json() if args.json else _summary(job))
    return EXIT_OK
