from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stack.cli import COMMANDS, _run_restore, build_parser, main, worker_argv


def test_every_command_has_help() -> None:
    out = subprocess.run([sys.executable, "-m", "stack.cli", "--help"], capture_output=True, text=True, check=True)
    for command in COMMANDS:
        assert command.name in out.stdout


def test_no_command_prints_usage_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: dip" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["api", "--port", "0"], ["serve", "--port", "70000"], ["worker", "-c", "0"]])
def test_bad_numbers_are_refused_with_the_value(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert argv[-1] in capsys.readouterr().err


def test_worker_command_line() -> None:
    args = build_parser().parse_args(["worker", "--loglevel", "debug", "-n", "w1@%h"])
    argv = worker_argv(args, queue="dip", concurrency=2, python="py")
    assert argv[:6] == ["py", "-m", "celery", "-A", "worker.celery_app:app", "worker"]
    joined = " ".join(argv)
    for part in ("--queues dip", "--pool prefork", "--concurrency 2", "-O fair", "--loglevel DEBUG", "--hostname w1@%h"):
        assert part in joined
    explicit = worker_argv(build_parser().parse_args(["worker", "-c", "3"]), queue="q", concurrency=1)
    assert "--concurrency 3" in " ".join(explicit)


def test_restore_takes_the_engine_arguments() -> None:
    args = build_parser().parse_args(["restore", "denoise", "in.png", "--iterations", "10"])
    assert (args.command, args.task, args.input, args.iterations) == ("restore", "denoise", Path("in.png"), 10)
    assert (args.preset, args.scale) == ("fast", 4)  # the engine's defaults where nothing was given
    assert args._run is _run_restore  # main() hands these to the engine's restore


def test_serve_refuses_a_negative_grace(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--shutdown-grace", "-1"]) == 2
    assert "-1" in capsys.readouterr().err
