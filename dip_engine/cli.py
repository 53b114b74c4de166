"""``dip restore``: run Deep Image Prior on one image from the command line.

Importing this module is cheap (no torch); the run itself imports the engine.
Bad input prints one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from .problems import PROBLEMS
from .spec import SCALES, TASKS, RestoreSpec, request_fields

EXIT_BAD_INPUT = 2


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``dip restore``'s arguments to ``parser``: the request's fields come from
    :class:`~dip_engine.spec.RestoreSpec`, the files and local options are the command's own."""
    parser.add_argument("task", choices=TASKS, help="what to restore: " + "; ".join(
        f"{name}: {problem.description}" for name, problem in PROBLEMS.items()))
    parser.add_argument("input", type=Path, help="the degraded image (or a clean one with --add-noise / --from-hr / "
                        "--drop-fraction / --from-sharp / --jpeg-quality)")
    groups = {"mask": parser.add_mutually_exclusive_group(), "kernel": parser.add_mutually_exclusive_group()}
    groups["mask"].add_argument("--mask", type=Path, help="inpainting mask, white = known pixel")
    groups["kernel"].add_argument("--kernel", type=Path, help="deblurring: the blur kernel as a grayscale image")
    parser.add_argument("--reference", type=Path, help="clean image to measure PSNR/SSIM against")
    add_spec_arguments(parser, groups=groups)
    parser.add_argument("--checkpoint-every", type=int, default=200,
                        help="iterations between resumable checkpoints (0: none; default 200)")
    parser.add_argument("--out", type=Path, default=Path("out"), help="output directory (default ./out)")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", dest="overrides",
                        help="override any preset field, e.g. --set fit.lr=0.005 --set net.channels=96 (repeatable)")
    parser.add_argument("--json", action="store_true", help="print metrics.json's summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_spec_arguments(parser: argparse.ArgumentParser, *, groups: dict[str, Any] | None = None,
                       service_only: bool = False) -> None:
    """One option per field of :class:`~dip_engine.spec.RestoreSpec` but ``task`` (``dest`` is the
    field's name); ``service_only`` leaves out what a job may not set (the device)."""
    for each in request_fields():
        if each.name == "task" or (service_only and not each.param.service):
            continue
        target = (groups or {}).get(each.param.group, parser)
        flag = each.param.flag or "--" + each.name.replace("_", "-")
        text = each.param.help + (f" (default {each.default})" if each.default not in (None, False) else "")
        choices = _choices(each.type)
        if each.type is bool:
            target.add_argument(flag, dest=each.name, action="store_true", help=text)
        elif choices:
            target.add_argument(flag, dest=each.name, choices=choices, default=each.default, help=text)
        else:
            kind = int if int in _members(each.type) else float
            target.add_argument(flag, dest=each.name, type=kind, default=each.default, metavar=each.param.metavar,
                                choices=SCALES if each.name == "scale" else None, help=text)


def spec_from_args(args: argparse.Namespace, **fixed: Any) -> RestoreSpec:
    """The request ``args`` (parsed with :func:`add_spec_arguments`) describe; ``fixed`` wins."""
    values = {each.name: getattr(args, each.name) for each in request_fields() if hasattr(args, each.name)}
    return RestoreSpec(**{**values, **fixed})


def _members(hint: Any) -> tuple[Any, ...]:
    return get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)


def _choices(hint: Any) -> tuple[Any, ...]:
    for member in _members(hint):
        if get_origin(member) is Literal:
            return get_args(member)
    return ()


def run_restore(args: argparse.Namespace) -> int:
    """Run ``dip restore`` for parsed ``args``; returns the exit status."""
    from .callbacks import ProgressBar
    from .errors import InputError
    from .presets import parse_overrides
    from .restore import RestoreInputs, restore
    try:
        spec = spec_from_args(args)
        if args.checkpoint_every < 0:
            raise InputError("invalid_parameter", f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
        try:
            overrides = parse_overrides(args.overrides)
        except ValueError as error:
            raise InputError("invalid_parameter", str(error)) from None
        result = restore(
            spec, RestoreInputs(args.input, mask=args.mask, kernel=args.kernel, reference=args.reference), args.out,
            callbacks=[ProgressBar(disable=args.quiet or args.json)], checkpoint_every=args.checkpoint_every or None,
            overrides=overrides,
        )
    except InputError as exc:
        print(f"dip restore: error: {exc.message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as exc:
        print(f"dip restore: error: {exc}", file=sys.stderr)
        return 1
    summary = result.metrics["summary"]
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(_describe(summary, result.files["result"]))
    return 0


def _describe(summary: dict, result: Path) -> str:
    parts = [f"{summary['stop_reason']} after {summary['iterations']} iterations in {summary['elapsed_s']:.1f} s"]
    if summary.get("early_stop_iteration") is not None:
        parts.append(f"early-stop iterate {summary['early_stop_iteration']}")
    if summary.get("psnr_output") is not None:
        parts.append(f"PSNR {summary['psnr_output']:.2f} dB (best {summary['psnr_best']:.2f} at {summary['best_iteration']})")
    if summary.get("psnr_input") is not None:
        parts.append(f"input {summary['psnr_input']:.2f} dB")
    if summary.get("psnr_y_output") is not None:
        parts.append(f"Y {summary['psnr_y_output']:.2f} dB (bicubic {summary['psnr_y_input']:.2f})")
    return f"wrote {result} ({'; '.join(parts)})"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="dip restore", description=__doc__.splitlines()[0])
    add_restore_arguments(parser)
    return run_restore(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
