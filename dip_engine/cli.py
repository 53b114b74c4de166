"""``dip restore``: run Deep Image Prior on one image from the command line.

Importing this module is cheap (no torch); the run itself imports the engine.
Bad input prints one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .problems import PROBLEMS
from .spec import PRESETS, SCALES, TASKS

EXIT_BAD_INPUT = 2


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``dip restore``'s arguments to ``parser``."""
    parser.add_argument("task", choices=TASKS, help="what to restore: " + "; ".join(
        f"{name}: {problem.description}" for name, problem in PROBLEMS.items()))
    parser.add_argument("input", type=Path, help="the degraded image (or a clean one with --add-noise / --from-hr / "
                        "--drop-fraction / --from-sharp / --jpeg-quality)")
    masks = parser.add_mutually_exclusive_group()
    masks.add_argument("--mask", type=Path, help="inpainting mask, white = known pixel")
    masks.add_argument("--drop-fraction", type=float, metavar="P", help="inpainting: drop a random fraction P of the input's pixels")
    kernels = parser.add_mutually_exclusive_group()
    kernels.add_argument("--kernel", type=Path, help="deblurring: the blur kernel as a grayscale image")
    kernels.add_argument("--blur-sigma", type=float, metavar="S", help="deblurring: a Gaussian blur of S px")
    parser.add_argument("--from-sharp", action="store_true",
                        help="deblurring: the input is sharp; blur it first (and add --add-noise after)")
    parser.add_argument("--jpeg-quality", type=int, metavar="Q",
                        help="dejpeg: the input is clean; compress it as a JPEG of quality Q first")
    parser.add_argument("--reference", type=Path, help="clean image to measure PSNR/SSIM against")
    parser.add_argument("--add-noise", type=float, metavar="SIGMA", dest="add_noise_sigma",
                        help="denoising (and deblurring with --from-sharp): add Gaussian noise of SIGMA "
                        "(0-255 scale) to a clean input")
    parser.add_argument("--noise-sigma", type=float, metavar="SIGMA",
                        help="the input's noise level (0-255 scale) if known, 0 for noise-free; early stopping "
                        "waits until the fit reaches it (default: estimated from the image)")
    parser.add_argument("--from-hr", action="store_true", help="super-resolution: the input is high-resolution; downsample it first")
    parser.add_argument("--scale", type=int, default=4, choices=SCALES, help="super-resolution factor (default 4)")
    parser.add_argument("--preset", choices=PRESETS, default="fast",
                        help="fast (default): sized for a CPU; quality: the paper's networks with our loop; "
                        "paper: the published protocol exactly (fixed iterations, raw output)")
    parser.add_argument("--iterations", type=int, help="iteration cap (default: the preset's)")
    parser.add_argument("--early-stop", choices=("auto", "off"), help="ES-WMV early stopping (default auto)")
    parser.add_argument("--log-every", type=int, help="iterations between logged points")
    parser.add_argument("--snapshot-every", type=int, help="iterations between snapshot PNGs")
    parser.add_argument("--checkpoint-every", type=int, default=200,
                        help="iterations between resumable checkpoints (0: none; default 200)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--deterministic", action="store_true",
                        help="GPU: repeatable seeded runs (deterministic cuDNN, no autotuning; slower)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out"), help="output directory (default ./out)")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", dest="overrides",
                        help="override any preset field, e.g. --set fit.lr=0.005 --set net.channels=96 (repeatable)")
    parser.add_argument("--json", action="store_true", help="print metrics.json's summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_restore(args: argparse.Namespace) -> int:
    """Run ``dip restore`` for parsed ``args``; returns the exit status."""
    from .callbacks import ProgressBar
    from .errors import InputError
    from .restore import RestoreInputs, restore
    from .spec import RestoreSpec

    try:
        spec = RestoreSpec(
            task=args.task, scale=args.scale, from_hr=args.from_hr, add_noise_sigma=args.add_noise_sigma,
            drop_fraction=args.drop_fraction, blur_sigma=args.blur_sigma, from_sharp=args.from_sharp,
            jpeg_quality=args.jpeg_quality, noise_sigma=args.noise_sigma, preset=args.preset, iterations=args.iterations,
            log_every=args.log_every, snapshot_every=args.snapshot_every, early_stop=args.early_stop,
            seed=args.seed, device=args.device, deterministic=args.deterministic,
        )
        if args.checkpoint_every < 0:
            raise InputError("invalid_parameter", f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
        overrides = dict(_parse_override(item) for item in args.overrides)
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


def _parse_override(item: str) -> tuple[str, str]:
    from .errors import InputError

    path, sep, value = item.partition("=")
    if not sep or not path:
        raise InputError("invalid_parameter", f"--set needs PATH=VALUE, got {item!r}")
    return path.strip(), value.strip()


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
