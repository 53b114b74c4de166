"""Quality benchmark: DIP against classical baselines on the shared test images.

For each task and image it prints: degraded-input PSNR, a classical baseline
(non-local means for denoising, bicubic for super-resolution, biharmonic for
inpainting), DIP at its best iterate (oracle, needs the reference), DIP at the
ES-WMV early-stop iterate (ground-truth free), the detection gap, iterations
and seconds.

Default: CPU-sized centre crops with ``--preset fast``. ``--full``: whole
images with the paper's preset (for a GPU).

    python benchmarks/quality.py --tasks denoise --images 3
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

from dip_engine.io import load_image, resize_image
from dip_engine.problems import build_measurement
from dip_engine.restore import RestoreInputs, restore
from dip_engine.spec import RestoreSpec

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def image_sets(data: Path) -> dict[str, list[Path]]:
    return {
        "denoise": sorted(p for p in (data / "benchmarks" / "denoise9" / "originals").iterdir() if p.suffix in (".png", ".ppm")),
        "superres": sorted((data / "benchmarks" / "set5").glob("*.png")),
        "inpaint": sorted((data / "benchmarks" / "inpaint11").glob("*.png")),
    }


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def centre_crop(path: Path, size: int | None, out: Path) -> Path:
    image = Image.open(path)
    image = image.convert("L" if image.mode in ("L", "I;16", "I") else "RGB")
    if size:
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    image.save(out)
    return out


def baseline(task: str, degraded: np.ndarray, clean: np.ndarray, mask: np.ndarray | None, sigma: float, scale: int) -> tuple[str, float]:
    from skimage.restoration import denoise_nl_means, estimate_sigma, inpaint_biharmonic  # noqa: F401

    if task == "denoise":
        s = sigma / 255.0
        channel_axis = -1 if degraded.shape[-1] == 3 else None
        img = degraded if channel_axis is not None else degraded[..., 0]
        out = denoise_nl_means(img, h=0.8 * s, sigma=s, fast_mode=False, patch_size=5, patch_distance=6, channel_axis=channel_axis)
        out = out.reshape(clean.shape)
        return "nlm", psnr(np.clip(out, 0, 1), clean)
    if task == "superres":
        h, w = clean.shape[:2]
        out = resize_image(degraded, size=(w, h), method="bicubic")
        return "bicubic", psnr(out, clean)
    channel_axis = -1
    out = inpaint_biharmonic(degraded, ~mask, channel_axis=channel_axis)
    return "biharmonic", psnr(np.clip(out, 0, 1), clean)


def run_one(task: str, path: Path, args: argparse.Namespace, work: Path) -> dict:
    crop = None if args.full else {"denoise": args.crop, "superres": args.sr_input * args.scale, "inpaint": args.crop}[task]
    src = centre_crop(path, crop, work / f"{path.stem}.png")
    spec = RestoreSpec(
        task=task, preset="paper" if args.full else args.preset, iterations=args.iterations,
        add_noise_sigma=args.sigma if task == "denoise" else None,
        from_hr=task == "superres", scale=args.scale,
        drop_fraction=args.drop if task == "inpaint" else None,
        early_stop=args.early_stop, seed=args.seed, device=args.device,
    )
    out = work / f"{task}_{path.stem}"
    started = time.monotonic()
    overrides = dict(item.split("=", 1) for item in args.set)
    result = restore(spec, RestoreInputs(src), out, overrides=overrides)
    seconds = time.monotonic() - started
    s = result.metrics["summary"]
    clean = load_image(src).pixels
    degraded = load_image(out / "degraded.png").pixels
    # The engine rebuilds the same seeded measurement: the exact mask the run saw.
    mask = build_measurement(spec, src).mask
    name, base = baseline(task, degraded, clean, mask, args.sigma, args.scale)
    extra = {}
    if task == "superres":
        # The SR literature's protocol (the paper's table): PSNR on luma, border of `scale` px shaved.
        import torch
        from dip_engine.metrics import psnr_y

        def y_psnr(array: np.ndarray) -> float:
            as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]
            return float(psnr_y(as_tensor(array), as_tensor(clean), shave=args.scale))

        bicubic = resize_image(degraded, size=(clean.shape[1], clean.shape[0]), method="bicubic")
        extra = {"y_bicubic": y_psnr(bicubic), "y_best": y_psnr(load_image(out / "best.png").pixels),
                 "y_es": y_psnr(load_image(result.files["result"]).pixels)}
    return {
        "task": task, "image": path.stem, "size": "x".join(map(str, clean.shape[:2])),
        "input": s["psnr_input"], "baseline": name, "baseline_psnr": base,
        "best": s["psnr_best"], "best_it": s["best_iteration"], "es": s["psnr_output"], "es_it": s["output_iteration"],
        "last": s["psnr_last"], "gap": s["detection_gap_db"], "iters": s["iterations"], "cap": s["iteration_cap"],
        "seconds": round(seconds, 1), **extra,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["denoise", "superres", "inpaint"])
    parser.add_argument("--images", type=int, default=3, help="images per task")
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--sr-input", type=int, default=32, help="low-resolution crop side for super-resolution")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--sigma", type=float, default=25.0)
    parser.add_argument("--drop", type=float, default=0.5)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--early-stop", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--full", action="store_true", help="whole images, paper preset (GPU)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--skip", type=int, default=0, help="skip the first N images of each set")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help="override a preset field, as `dip restore --set` (repeatable)")
    args = parser.parse_args(argv)

    sets = image_sets(args.data)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            for path in sets[task][args.skip : args.skip + args.images]:
                rows.append(run_one(task, path, args, Path(tmp)))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    cols = ["task", "image", "size", "input", "baseline", "baseline_psnr", "best", "best_it", "es", "es_it", "last", "gap", "iters", "cap", "seconds"]
    if any("y_best" in row for row in rows):
        cols += ["y_bicubic", "y_best", "y_es"]
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else ("-" if v is None else str(v))
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(fmt(row.get(c)) for c in cols) + " |")
    for task in args.tasks:
        done = [r for r in rows if r["task"] == task]
        if done:
            mean = lambda key: sum(r[key] for r in done if r.get(key) is not None) / len(done)
            wins = sum(r["es"] >= r["baseline_psnr"] for r in done)
            stop = sum(r["iters"] / r["cap"] for r in done) / len(done)
            print(f"mean {task} {' '.join(args.set)}: baseline {mean('baseline_psnr'):.2f}, DIP best {mean('best'):.2f}, "
                  f"DIP early-stop {mean('es'):.2f} (>= baseline on {wins}/{len(done)}), gap {mean('gap'):.2f} dB, "
                  f"stopped at {stop:.0%} of the cap, {mean('seconds'):.1f} s per image, {len(done)} images")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
