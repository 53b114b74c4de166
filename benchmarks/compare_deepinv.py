"""Side by side with DeepInverse's ``DeepImagePrior`` on the same noisy image and iteration count.

Both methods see the same 8-bit noisy PNG; PSNR is against the clean image.
DeepInverse returns its last iterate (ConvDecoder network, Adam); ours returns
its early-stop iterate. Needs ``deepinv`` (and its torchvision) importable.

    python benchmarks/compare_deepinv.py IMAGE --sigma 25 --iterations 1000 --crop 96
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dip_engine.io import load_image, save_image
from dip_engine.metrics import psnr
from dip_engine.restore import RestoreInputs, pick_device, restore
from dip_engine.spec import RestoreSpec


def to_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None].to(device)


def run_deepinv(noisy: torch.Tensor, iterations: int, channels: int) -> torch.Tensor:
    import deepinv

    in_size = [4, 4]
    generator = deepinv.models.ConvDecoder(img_size=tuple(noisy.shape[1:]), in_size=in_size, channels=channels).to(noisy.device)
    model = deepinv.models.DeepImagePrior(generator, img_size=[channels, *in_size], iterations=iterations, learning_rate=1e-2)
    with torch.no_grad():
        return model(noisy, deepinv.physics.Denoising()).clamp(0, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path, nargs="+")
    parser.add_argument("--sigma", type=float, default=25.0)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--crop", type=int, default=0, help="centre crop side (0: whole image)")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--channels", type=int, default=64, help="ConvDecoder width")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    print("| image | noisy | deepinv DIP | s | ours (early stop) | ours best | s | iterations run |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.images:
            image = Image.open(path).convert("RGB")
            if args.crop:
                w, h = image.size
                left, top = (w - args.crop) // 2, (h - args.crop) // 2
                image = image.crop((left, top, left + args.crop, top + args.crop))
            clean = np.asarray(image, dtype=np.float32) / 255.0
            rng = np.random.default_rng(args.seed)
            noisy = np.clip(clean + rng.normal(0, args.sigma / 255.0, clean.shape), 0, 1).astype(np.float32)
            clean_path = save_image(Path(tmp) / "clean.png", clean)
            noisy_path = save_image(Path(tmp) / "noisy.png", noisy)
            noisy8 = load_image(noisy_path).pixels
            reference = to_tensor(clean, device)

            torch.manual_seed(args.seed)
            started = time.monotonic()
            theirs = run_deepinv(to_tensor(noisy8, device), args.iterations, args.channels)
            their_s = time.monotonic() - started

            spec = RestoreSpec(task="denoise", preset=args.preset, iterations=args.iterations, seed=args.seed, device=args.device)
            started = time.monotonic()
            ours = restore(spec, RestoreInputs(noisy_path, reference=clean_path), Path(tmp) / f"out_{path.stem}")
            our_s = time.monotonic() - started
            print(
                f"| {path.stem} | {float(psnr(to_tensor(noisy8, device), reference)):.2f} | {float(psnr(theirs, reference)):.2f} | "
                f"{their_s:.0f} | {ours.psnr_output:.2f} | {ours.psnr_best:.2f} | {our_s:.0f} | {ours.iterations} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
