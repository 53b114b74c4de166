"""Quality and time at the sizes people send: the defaults against the classical baselines.

One table per task, each image centre-cropped to ``--size`` (256 by default),
run exactly as ``dip restore TASK IMAGE`` runs it (the default preset, early
stopping, no reference used to stop: the clean image only scores the result).
Columns: the classical baseline, DIP's output, the oracle-best iterate and the
detection gap, where the run stopped against its cap, wall seconds, and how far
off the ETA was when a quarter of the run's time had passed (|ETA shown /
seconds really left - 1|, as the CLI's bar and ``progress.eta_seconds`` show it), the weight
a blended answer gave the net (``blend_alpha``: inpainting against biharmonic, denoising
against NL-means) and the net's own output before that blend (``net``).
The last ``--held-out`` images of each set are never used for tuning and are
summarised on their own line.

- denoise: sigma 25 (seeded, its own stream), against scikit-image NL-means
  (h = 0.8 sigma, 5x5 patches, 13x13 search, slow mode); denoise9 images.
- inpaint: 50% of pixels missing, the mask drawn here (independent of
  everything the network sees) and uploaded, against ``inpaint_biharmonic``;
  inpaint11 images.
- superres: x4, the low-resolution input is a PIL bicubic downscale of the
  crop (not the engine's Lanczos model; the two low-resolution images agree
  to 53-58 dB on these crops), against bicubic upscaling; Set14.

    python benchmarks/realsize.py --tasks denoise --size 256 --images 9
    python benchmarks/realsize.py --tasks denoise --size 512 --images 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from dip_engine.blend import Blend
from dip_engine.callbacks import Callback, FitState
from dip_engine.history import LogRecord
from dip_engine.presets import parse_overrides
from dip_engine.restore import RestoreInputs, restore
from dip_engine.spec import RestoreSpec

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TARGETS = {
    "denoise": "at or above NL-means on >= 8 of 9 and >= +0.2 dB on the mean",
    "inpaint": "at or above biharmonic on the mean, never more than 0.3 dB below",
    "superres": ">= 1 dB above bicubic on every image",
}


def image_sets(data: Path) -> dict[str, list[Path]]:
    bench = data / "benchmarks"
    return {
        "denoise": sorted(p for p in (bench / "denoise9" / "originals").iterdir() if p.suffix in (".png", ".ppm")),
        "inpaint": sorted((bench / "inpaint11").glob("*.png")),
        "superres": sorted((bench / "set14").glob("*.png")),
    }


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def centre_crop(path: Path, size: int) -> np.ndarray | None:
    """uint8 (H, W, C) crop, or None when the image is smaller than ``size``."""
    image = Image.open(path)
    image = image.convert("L" if image.mode in ("L", "I;16", "I") else "RGB")
    width, height = image.size
    if min(width, height) < size:
        return None
    left, top = (width - size) // 2, (height - size) // 2
    array = np.asarray(image.crop((left, top, left + size, top + size)))
    return array[..., None] if array.ndim == 2 else array


def _save(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)
    return path


def _load(path: Path) -> np.ndarray:
    array = np.asarray(Image.open(path), dtype=np.float32) / 255.0
    return array[..., None] if array.ndim == 2 else array


def prepare(task: str, clean: np.ndarray, work: Path, args: argparse.Namespace) -> tuple[RestoreSpec, RestoreInputs, str, float]:
    """The run's spec and files, and the classical baseline's name and PSNR."""
    reference = _save(clean, work / "clean.png")
    truth = clean.astype(np.float32) / 255.0
    channel_axis = -1 if clean.shape[-1] == 3 else None
    if task == "denoise":
        from skimage.restoration import denoise_nl_means

        spec = RestoreSpec(task="denoise", add_noise_sigma=args.sigma, seed=args.seed, device=args.device)
        from dip_engine.problems import build_measurement

        noisy = build_measurement(spec, reference).y  # the very measurement the run will see
        s = args.sigma / 255.0
        image = noisy if channel_axis is not None else noisy[..., 0]
        out = denoise_nl_means(image, h=0.8 * s, sigma=s, fast_mode=False, patch_size=5, patch_distance=6,
                               channel_axis=channel_axis).reshape(truth.shape)
        return spec, RestoreInputs(reference), "nlm", psnr(np.clip(out, 0, 1), truth)
    if task == "inpaint":
        from skimage.restoration import inpaint_biharmonic

        known = np.random.default_rng(args.seed + 1000).random(clean.shape[:2]) >= args.drop
        masked = (clean * known[..., None]).astype(np.uint8)
        mask = _save(np.where(known, 255, 0).astype(np.uint8)[..., None], work / "mask.png")
        out = inpaint_biharmonic(masked.astype(np.float64) / 255.0, ~known, channel_axis=-1)
        spec = RestoreSpec(task="inpaint", seed=args.seed, device=args.device)
        return (spec, RestoreInputs(_save(masked, work / "masked.png"), mask=mask, reference=reference),
                "biharmonic", psnr(np.clip(out, 0, 1), truth))
    low = Image.fromarray(clean[..., 0] if clean.shape[-1] == 1 else clean).resize(
        (clean.shape[1] // 4, clean.shape[0] // 4), Image.Resampling.BICUBIC)
    up = np.asarray(low.resize((clean.shape[1], clean.shape[0]), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    up = up[..., None] if up.ndim == 2 else up
    low.save(work / "low.png")
    spec = RestoreSpec(task="superres", scale=4, seed=args.seed, device=args.device)
    return spec, RestoreInputs(work / "low.png", reference=reference), "bicubic", psnr(up, truth)


class EtaAtAQuarter(Callback):
    """The ETA the run showed at each log point, and when it really ended."""

    def __init__(self) -> None:
        # (seconds since the start, ETA in seconds, iteration, the iteration the ETA counted down to)
        self.shown: list[tuple[float, float, int, int]] = []
        self.start = self.end = 0.0
        self.iterations = 0

    def on_fit_start(self, state: FitState) -> None:
        self.start = time.monotonic()

    def on_log(self, state: FitState, record: LogRecord) -> None:
        if state.eta_seconds is not None:
            self.shown.append((time.monotonic() - self.start, state.eta_seconds, state.iteration, state.end))

    def on_fit_end(self, state: FitState) -> None:
        self.end, self.iterations = time.monotonic() - self.start, state.iteration

    def errors(self) -> tuple[float | None, float | None]:
        """At the log point nearest a quarter of the run's time: |ETA / seconds really left - 1|, and
        the part of it that is the forecast end's, |iterations counted down / really left - 1|."""
        if not self.shown:
            return None, None
        at, eta, iteration, end = min(self.shown, key=lambda point: abs(point[0] - self.end / 4))
        left = self.iterations - iteration
        return (abs(eta / (self.end - at) - 1) if self.end > at else 0.0,
                abs((end - iteration) / left - 1) if left > 0 else 0.0)


def run_one(task: str, path: Path, args: argparse.Namespace, work: Path) -> dict | None:
    clean = centre_crop(path, args.size)
    if clean is None:
        return None
    work.mkdir(parents=True)
    spec, inputs, baseline, baseline_psnr = prepare(task, clean, work, args)
    overrides = parse_overrides(args.set)
    eta = EtaAtAQuarter()
    started = time.monotonic()
    result = restore(spec, inputs, work / "out", callbacks=[eta], overrides=overrides or None)
    seconds = time.monotonic() - started
    eta_error, eta_error_iterations = eta.errors()
    s = result.metrics["summary"]
    trace = {"history": result.metrics["history"]} if args.trace else {}
    if args.trace and task == "inpaint":
        trace["kept_at"] = _kept_psnr_along_the_run(work, clean)
    if args.trace and task == "denoise" and "blend" in result.metrics["setup"]:
        trace["answer_at"] = _blended_psnr_along_the_run(work, clean, spec, result.metrics)
    return {
        "task": task, "image": path.stem, "size": args.size, "baseline": baseline, "baseline_psnr": baseline_psnr,
        "dip": s["psnr_output"], "vs_baseline": s["psnr_output"] - baseline_psnr, "oracle": s["psnr_best"],
        "oracle_it": s["best_iteration"], "gap": s["detection_gap_db"], "stop_it": s["iterations"],
        "cap": s["iteration_cap"], "reason": s["stop_reason"], "seconds": round(seconds, 1), "eta_error": eta_error,
        "eta_error_iterations": eta_error_iterations,
        "noise_sigma_estimate": s.get("noise_sigma_estimate"),
        "kept_measured": result.metrics["setup"].get("kept_measured"),
        "blend_alpha": result.metrics["setup"].get("blend", {}).get("alpha"),
        "net": _net_psnr(result.metrics),
    } | trace


def _net_psnr(metrics: dict) -> float | None:
    """The net's own answer, before any blend: the logged PSNR of the output the answer came from."""
    at = metrics["summary"]["output_iteration"]
    logged = [r for r in metrics["history"] if r["iteration"] <= at]
    if not logged:
        return None
    return logged[-1]["psnr_avg" if metrics["config"]["fit"]["output"] == "ema" else "psnr"]


def snapshots(work: Path) -> dict[int, Path]:
    """A kept run's snapshots by iteration."""
    return {int(snap.stem.split("_")[1]): snap for snap in (work / "out" / "snapshots").glob("iter_*.png")}


def _kept_psnr_along_the_run(work: Path, clean: np.ndarray, every: int = 250) -> dict[int, float]:
    """Inpainting's answer keeps the known pixels, so the logged PSNR (of the net's whole output)
    can rise while the missing pixels get worse: the answer's PSNR at every ``every`` iterations,
    from the run's snapshots with the known pixels put back."""
    truth = clean.astype(np.float32) / 255.0
    masked, known = _load(work / "masked.png"), _load(work / "mask.png")[..., :1] > 0.5
    return {iteration: psnr(np.where(known, masked, _load(snap)), truth)
            for iteration, snap in sorted(snapshots(work).items()) if iteration % every == 0}


class DenoiseBlend:
    """The engine's denoising blend rebuilt from a kept run (its held-out pixels and its classical
    answers, ``dip_engine.blend.classical_answers`` with the run's streams), to apply to any of the
    run's snapshots."""

    def __init__(self, work: Path, spec: RestoreSpec, metrics: dict) -> None:
        from dip_engine.blend import classical_answers, hold_out
        from dip_engine.problems import build_measurement, get_problem
        from dip_engine.seeding import numpy_rng

        self.y = build_measurement(spec, work / "clean.png").y
        known = np.ones(self.y.shape[:2], dtype=bool)
        self.held = hold_out(known, metrics["config"]["holdout"], numpy_rng(spec.seed, "holdout"))
        classical = get_problem("denoise").classical_answer
        assert classical is not None
        self.answers = classical_answers(classical, self.y, known, self.held,
                                         metrics["summary"]["noise_sigma_estimate"], numpy_rng(spec.seed, "divergence"))

    def weigh(self, net: np.ndarray) -> Blend:
        """The engine's weight for ``net``."""
        return self.answers.weigh(net, self.y, self.held)

    def answer(self, net: np.ndarray, alpha: float | None = None) -> np.ndarray:
        """The answer with the engine's weight for ``net``, or with ``alpha``."""
        chosen = self.weigh(net)
        return self.answers.blend(net, chosen if alpha is None else replace(chosen, alpha=alpha))


def _blended_psnr_along_the_run(work: Path, clean: np.ndarray, spec: RestoreSpec, metrics: dict,
                                every: int = 250) -> dict[int, float]:
    """A denoising answer blends the net with NL-means, weighed on the held-out pixels: the answer's
    PSNR at every ``every`` iterations, as the engine would have blended each snapshot (8-bit, as
    written) had the run ended there."""
    truth = clean.astype(np.float32) / 255.0
    blend = DenoiseBlend(work, spec, metrics)
    return {iteration: psnr(blend.answer(_load(snap)), truth)
            for iteration, snap in sorted(snapshots(work).items()) if iteration % every == 0}


def _summary(rows: list[dict], label: str) -> str:
    if not rows:
        return f"{label}: no images"
    mean = lambda key: sum(r[key] for r in rows) / len(rows)
    wins = sum(r["vs_baseline"] >= 0 for r in rows)
    worst = min(r["vs_baseline"] for r in rows)
    return (f"{label}: {len(rows)} images, baseline {mean('baseline_psnr'):.2f}, DIP {mean('dip'):.2f} "
            f"({mean('vs_baseline'):+.2f} dB; >= baseline on {wins}/{len(rows)}, worst {worst:+.2f}), "
            f"oracle {mean('oracle'):.2f}, gap {mean('gap'):.2f} dB, stopped at {mean('stop_it'):.0f} of "
            f"{mean('cap'):.0f}, {mean('seconds'):.0f} s per image, worst ETA error at 25% "
            f"{100 * max(r['eta_error'] or 0.0 for r in rows):.0f}%")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["denoise", "inpaint", "superres"], choices=sorted(TARGETS))
    parser.add_argument("--size", type=int, default=256, help="crop side (the output side for superres)")
    parser.add_argument("--images", type=int, default=9, help="images per task")
    parser.add_argument("--skip", type=int, default=0, help="skip the first N images of each set")
    parser.add_argument("--held-out", type=int, default=3, help="the last N images of each set: reported apart")
    parser.add_argument("--sigma", type=float, default=25.0)
    parser.add_argument("--drop", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help="override a preset field, as `dip restore --set` (exploration, not the defaults)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep each run's files")
    parser.add_argument("--trace", action="store_true",
                        help="keep each run's logged history in the JSON rows (to replay stopping rules); for "
                             "inpainting and blended denoising also the answer's PSNR every 250 iterations, "
                             "from the snapshots")
    args = parser.parse_args(argv)

    sets = image_sets(args.data)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        for task in args.tasks:
            images = [p for p in sets[task] if centre_crop(p, args.size) is not None]
            held_out = {p.stem for p in images[len(images) - args.held_out:]} if args.held_out else set()
            for path in images[args.skip:args.skip + args.images]:
                row = run_one(task, path, args, Path(tmp) / f"{task}-{path.stem}")
                if row is not None:
                    row["held_out"] = path.stem in held_out
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    cols = ["image", "baseline", "baseline_psnr", "dip", "vs_baseline", "oracle", "gap", "stop_it", "cap", "seconds",
            "eta_error", "blend_alpha", "net"]
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else ("-" if v is None else str(v))
    settings = " ".join(args.set) or "defaults"
    for task in args.tasks:
        done = [r for r in rows if r["task"] == task]
        print(f"\n### {task}, {args.size} px, {settings} (target: {TARGETS[task]})\n")
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for row in done:
            name = row["image"] + (" (held out)" if row["held_out"] else "")
            print("| " + " | ".join(fmt(name if c == "image" else row[c]) for c in cols) + " |")
        print()
        print(_summary([r for r in done if not r["held_out"]], f"mean {task}, tuning images"))
        print(_summary([r for r in done if r["held_out"]], f"mean {task}, held-out images"))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
