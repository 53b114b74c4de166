"""Are seeded runs repeatable, and what does ``--deterministic`` cost? Prints one table.

Runs the same seeded restoration twice in each mode (autotuned cuDNN, then
deterministic algorithms) and compares the two results bit for bit. On a CPU
both modes repeat; on CUDA only the deterministic one is expected to.

    python benchmarks/determinism.py --device cuda --size 256 --iterations 500
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dip_engine.restore import RestoreInputs, restore
from dip_engine.spec import RestoreSpec

DEFAULT_IMAGE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dip_repo" / "data" / "denoising" / "F16_GT.png"


def _crop(source: Path, size: int, out: Path) -> Path:
    image = Image.open(source).convert("RGB")
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image.crop((left, top, left + size, top + size)).save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--preset", default="quality")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = _crop(args.image, args.size, Path(tmp) / "clean.png")
        for deterministic in (False, True):
            results, seconds = [], []
            for attempt in range(2):
                spec = RestoreSpec(task="denoise", add_noise_sigma=25, preset=args.preset, iterations=args.iterations,
                                   early_stop="off", seed=7, device=args.device, deterministic=deterministic)
                started = time.monotonic()
                result = restore(spec, RestoreInputs(source), Path(tmp) / f"{deterministic}-{attempt}")
                seconds.append(time.monotonic() - started)
                results.append((np.asarray(Image.open(result.files["last"])), result.metrics["summary"]))
            (a, sa), (b, sb) = results
            rows.append({
                "mode": "deterministic" if deterministic else "autotuned",
                "it/s": args.iterations / min(seconds),
                "identical": bool(np.array_equal(a, b)),
                "max |diff| (8-bit)": int(np.abs(a.astype(int) - b.astype(int)).max()),
                "psnr run 1": sa["psnr_last"], "psnr run 2": sb["psnr_last"],
            })
    cols = list(rows[0])
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)
    print(f"denoise sigma=25, {args.size}px, {args.iterations} iterations, preset {args.preset}, device {args.device}")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(fmt(row[c]) for c in cols) + " |")
    cost = rows[0]["it/s"] / rows[1]["it/s"]
    print(f"deterministic mode costs {cost:.2f}x the time per iteration")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
