"""Quality benchmark: DIP against classical baselines on the shared test images.

For each task and image it prints: degraded-input PSNR, the classical baseline
(the best of the candidates below), DIP at its best iterate (oracle, needs the
reference), DIP at the ES-WMV early-stop iterate (ground-truth free), the
detection gap, iterations and seconds (DIP and baseline).

Baselines (scikit-image; ``oracle`` = its setting is picked per image with the
clean image, which is generous to it):

- denoise: non-local means (h = 0.8 sigma, 5x5 patches, 13x13 search).
- superres: bicubic upsampling of the low-resolution input.
- inpaint: biharmonic inpainting with the same mask.
- deblur: Richardson-Lucy (oracle iterations), Wiener (oracle balance), both
  per channel with the true PSF on a mirror-padded image, and the blurred input.
- dejpeg: total-variation denoising (Chambolle, oracle weight) and the JPEG input.

The benchmark makes the inpainting mask, the blurred-and-noisy image and the
JPEG itself, independently of the engine's synthetic degradations, and uploads
them with the clean crop as the reference; denoising and super-resolution use
the engine's ``add_noise_sigma`` / ``from_hr``.

Default: CPU-sized centre crops with ``--preset fast``. ``--full``: whole
images with the paper's preset (for a GPU).

    python benchmarks/quality.py --tasks denoise --images 3
    python benchmarks/quality.py --tasks deblur dejpeg --images 9
    python benchmarks/quality.py --tasks dejpeg --real ../shared/data/dip_repo/data/denoising/snail.jpg --preset paper
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import baselines  # noqa: E402  (benchmarks/baselines.py)

from dip_engine.degradations import gaussian_kernel  # noqa: E402
from dip_engine.io import load_image, save_image  # noqa: E402
from dip_engine.problems import build_measurement  # noqa: E402
from dip_engine.presets import parse_overrides  # noqa: E402
from dip_engine.restore import RestoreInputs, restore  # noqa: E402
from dip_engine.spec import RestoreSpec  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TASKS = ("denoise", "superres", "inpaint", "deblur", "dejpeg")


def image_sets(data: Path) -> dict[str, list[Path]]:
    denoise9 = sorted(p for p in (data / "benchmarks" / "denoise9" / "originals").iterdir() if p.suffix in (".png", ".ppm"))
    return {
        "denoise": denoise9,
        "superres": sorted((data / "benchmarks" / "set5").glob("*.png")),
        "inpaint": sorted((data / "benchmarks" / "inpaint11").glob("*.png")),
        "deblur": denoise9,
        "dejpeg": denoise9,
    }


psnr = baselines.psnr


def open_plain(path: Path) -> Image.Image:
    image = Image.open(path)
    return image.convert("L" if image.mode in ("L", "I;16", "I") else "RGB")


def centre_box(width: int, height: int, size: int | None, margin: int = 0) -> tuple[int, int, int, int]:
    """The centred ``size`` px square (the whole image when ``size`` is None), grown by ``margin`` px a side."""
    if size is None:
        return (0, 0, width, height)
    left, top = (width - size) // 2 - margin, (height - size) // 2 - margin
    if left < 0 or top < 0:
        raise ValueError(f"a {size} px crop with a {margin} px margin does not fit a {width}x{height} image")
    return (left, top, left + size + 2 * margin, top + size + 2 * margin)


def centre_crop(path: Path, size: int | None, out: Path) -> Path:
    image = open_plain(path)
    image.crop(centre_box(*image.size, size)).save(out)
    return out


def _as_pixels(image: Image.Image) -> np.ndarray:
    array = np.asarray(image, dtype=np.float64) / 255.0
    return array[..., None] if array.ndim == 2 else array


def make_inpaint(path: Path, args: argparse.Namespace, work: Path) -> tuple[RestoreInputs, np.ndarray]:
    """Clean crop, a 50% Bernoulli mask from the benchmark's own generator, the masked image."""
    clean_png = centre_crop(path, None if args.full else args.crop, work / f"{path.stem}.png")
    clean = load_image(clean_png).pixels
    height, width = clean.shape[:2]
    known = np.random.default_rng(args.seed).random((height, width)) >= args.drop  # same mask for all channels
    mask_png = work / f"{path.stem}_mask.png"
    Image.fromarray(np.where(known, 255, 0).astype(np.uint8)).save(mask_png)
    masked_png = save_image(work / f"{path.stem}_masked.png", clean * known[..., None])
    return RestoreInputs(masked_png, mask=mask_png, reference=clean_png), known


def make_deblur(path: Path, args: argparse.Namespace, work: Path) -> tuple[RestoreInputs, np.ndarray]:
    """Blur a crop larger by the kernel radius (valid convolution: real content at every border),
    add Gaussian noise from the benchmark's own generator, and write it as an 8-bit PNG."""
    kernel = gaussian_kernel(args.blur_sigma)
    radius = baselines.kernel_radius(kernel)
    image = open_plain(path)
    if args.full:  # the whole image less a border of the kernel radius
        large = image
        clean_image = image.crop((radius, radius, image.width - radius, image.height - radius))
    else:
        large = image.crop(centre_box(*image.size, args.crop, margin=radius))
        clean_image = image.crop(centre_box(*image.size, args.crop))
    clean_png = work / f"{path.stem}.png"
    clean_image.save(clean_png)
    blurred = baselines.blur_valid(_as_pixels(large), kernel)
    rng = np.random.default_rng(args.seed)
    noisy = blurred + rng.standard_normal(blurred.shape) * (args.blur_noise / 255.0)
    # 8-bit PNG: the engine reads 16 bits for grayscale only (mode I;16) and these images are colour.
    # Rounding adds uniform noise of std 0.29/255, ~1% of the variance of sigma 2.55/255.
    degraded_png = save_image(work / f"{path.stem}_blurred.png", noisy)
    return RestoreInputs(degraded_png, reference=clean_png), kernel


def make_dejpeg(path: Path, args: argparse.Namespace, work: Path) -> RestoreInputs:
    clean_png = centre_crop(path, None if args.full else args.crop, work / f"{path.stem}.png")
    jpeg = work / f"{path.stem}_q{args.jpeg_quality}.jpg"
    jpeg.write_bytes(baselines.jpeg_bytes(load_image(clean_png).pixels, args.jpeg_quality))
    return RestoreInputs(jpeg, reference=clean_png)


def run_one(task: str, path: Path, args: argparse.Namespace, work: Path) -> dict:
    preset = "paper" if args.full else args.preset
    common = dict(task=task, preset=preset, iterations=args.iterations, early_stop=args.early_stop,
                  seed=args.seed, device=args.device)
    known = kernel = None
    if task == "denoise":
        src = centre_crop(path, None if args.full else args.crop, work / f"{path.stem}.png")
        spec, inputs = RestoreSpec(**common, add_noise_sigma=args.sigma), RestoreInputs(src)
    elif task == "superres":
        src = centre_crop(path, None if args.full else args.sr_input * args.scale, work / f"{path.stem}.png")
        spec, inputs = RestoreSpec(**common, from_hr=True, scale=args.scale), RestoreInputs(src)
    elif task == "inpaint":
        spec = RestoreSpec(**common)
        inputs, known = make_inpaint(path, args, work)
    elif task == "deblur":
        spec = RestoreSpec(**common, blur_sigma=args.blur_sigma)
        inputs, kernel = make_deblur(path, args, work)
    elif task == "dejpeg":
        spec, inputs = RestoreSpec(**common), make_dejpeg(path, args, work)
    else:
        raise ValueError(f"unknown task {task!r}")

    out = work / f"{task}_{path.stem}"
    overrides = parse_overrides(args.set)
    started = time.monotonic()
    result = restore(spec, inputs, out, overrides=overrides)
    seconds = time.monotonic() - started
    s = result.metrics["summary"]

    # The exact (float) measurement the run saw: the engine's seeded synthetic degradation
    # for denoise/superres, the uploaded file otherwise.
    measurement = build_measurement(spec, inputs.image, mask=inputs.mask, kernel=inputs.kernel,
                                    reference=inputs.reference)
    clean, degraded = measurement.reference, measurement.y
    if task == "denoise":
        candidates = baselines.nlm(degraded, clean, args.sigma)
    elif task == "superres":
        candidates = [baselines.identity("bicubic", measurement.baseline, clean)]
    elif task == "inpaint":
        assert known is not None and np.array_equal(known, measurement.mask), "the engine read another mask"
        candidates = baselines.biharmonic(degraded, clean, known)
    elif task == "deblur":
        candidates = baselines.deconvolution(degraded, clean, kernel)
    else:
        candidates = baselines.dejpeg(degraded, clean)
    winner = baselines.best(candidates)

    extra = {}
    if task == "superres":
        # The SR literature's protocol (the paper's table): PSNR on luma, border of `scale` px shaved.
        import torch

        from dip_engine.metrics import psnr_y
        from dip_engine.restore import SR_SHAVE

        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]
        y_best = float(psnr_y(as_tensor(load_image(out / "best.png").pixels), as_tensor(clean), shave=SR_SHAVE))
        extra = {"y_bicubic": s["psnr_y_input"], "y_best": y_best, "y_es": s["psnr_y_output"]}
    return {
        "task": task, "image": path.stem, "size": "x".join(map(str, clean.shape[:2])),
        "input": s["psnr_input"], "baseline": winner.name + (f" ({winner.setting})" if winner.setting else ""),
        "baseline_psnr": winner.psnr, "base_s": round(winner.seconds, 2),
        "all_baselines": "; ".join(c.label() for c in candidates) if len(candidates) > 1 else None,
        "best": s["psnr_best"], "best_it": s["best_iteration"], "es": s["psnr_output"], "es_it": s["output_iteration"],
        "last": s["psnr_last"], "gap": s["detection_gap_db"], "iters": s["iterations"], "cap": s["iteration_cap"],
        "seconds": round(seconds, 1), **extra,
    }


def run_real(task: str, path: Path, args: argparse.Namespace, work: Path) -> dict:
    """A real input as uploaded (no crop, no reference): only that it runs, and how long it takes."""
    spec = RestoreSpec(task=task, preset=args.preset, iterations=args.iterations, early_stop=args.early_stop,
                       seed=args.seed, device=args.device)
    overrides = parse_overrides(args.set)
    started = time.monotonic()
    result = restore(spec, RestoreInputs(path), work / f"{task}_{path.stem}_real", overrides=overrides)
    s = result.metrics["summary"]
    return {"task": task, "image": path.name, "size": "x".join(map(str, result.metrics["output_size"])),
            "preset": args.preset, "stop_reason": s["stop_reason"], "iters": s["iterations"], "cap": s["iteration_cap"],
            "it_per_s": s["iterations_per_second"], "seconds": round(time.monotonic() - started, 1)}


def _fmt(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else ("-" if value is None else str(value))


def print_table(rows: list[dict], cols: list[str]) -> None:
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")


def summary(task: str, done: list[dict], settings: list[str]) -> str:
    def mean(key: str) -> float:
        values = [r[key] for r in done if r.get(key) is not None]
        return sum(values) / len(values) if values else float("nan")

    wins = sum(r["es"] >= r["baseline_psnr"] for r in done)
    stop = sum(r["iters"] / r["cap"] for r in done) / len(done)
    won = sorted({r["baseline"].split(" ")[0] for r in done})
    return (f"mean {task} {' '.join(settings)}: input {mean('input'):.2f}, baseline {mean('baseline_psnr'):.2f} "
            f"({'/'.join(won)}), DIP best {mean('best'):.2f}, DIP early-stop {mean('es'):.2f} "
            f"(>= baseline on {wins}/{len(done)}), gap {mean('gap'):.2f} dB, stopped at {stop:.0%} of the cap, "
            f"{mean('seconds'):.1f} s per image (baseline {mean('base_s'):.2f} s), {len(done)} images")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["denoise", "superres", "inpaint"], choices=TASKS)
    parser.add_argument("--images", type=int, default=3, help="images per task")
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--sr-input", type=int, default=32, help="low-resolution crop side for super-resolution")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--sigma", type=float, default=25.0, help="denoising noise, 0-255 scale")
    parser.add_argument("--drop", type=float, default=0.5, help="inpainting: fraction of pixels dropped")
    parser.add_argument("--blur-sigma", type=float, default=1.6, help="deblurring: Gaussian blur sigma, px")
    parser.add_argument("--blur-noise", type=float, default=2.55, help="deblurring: noise sigma, 0-255 scale (1%%)")
    parser.add_argument("--jpeg-quality", type=int, default=10, help="dejpeg: PIL JPEG quality")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--early-stop", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--full", action="store_true", help="whole images, paper preset (GPU)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--skip", type=int, default=0, help="skip the first N images of each set")
    parser.add_argument("--only", nargs="+", metavar="STEM", help="only these images (file stems), in set order")
    parser.add_argument("--real", type=Path, nargs="+", metavar="IMAGE",
                        help="instead of the sets: run each task on these files as they are (no reference): "
                             "reports that it runs and the seconds")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help="override a preset field, as `dip restore --set` (repeatable)")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.real:
            for task in args.tasks:
                for path in args.real:
                    rows.append(run_real(task, path, args, Path(tmp)))
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            print_table(rows, ["task", "image", "size", "preset", "stop_reason", "iters", "cap", "it_per_s", "seconds"])
            return 0
        sets = image_sets(args.data)
        for task in args.tasks:
            paths = sets[task]
            if args.only:
                paths = [p for p in paths if p.stem in args.only]
            for path in paths[args.skip : args.skip + args.images]:
                rows.append(run_one(task, path, args, Path(tmp)))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    cols = ["task", "image", "size", "input", "baseline", "baseline_psnr", "base_s", "best", "best_it", "es", "es_it",
            "last", "gap", "iters", "cap", "seconds"]
    if any("y_es" in row for row in rows):
        cols += ["y_bicubic", "y_best", "y_es"]
    if any(row.get("all_baselines") for row in rows):
        cols += ["all_baselines"]
    print_table(rows, cols)
    for task in args.tasks:
        done = [r for r in rows if r["task"] == task]
        if done:
            print(summary(task, done, args.set))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
