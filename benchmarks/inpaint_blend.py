"""Inpainting: DIP and biharmonic blended by known pixels held out of the fit, from outside the engine.

The experiment that led to ``RunConfig.holdout``, which now does this inside the engine
with its own random stream (``realsize.py`` measures that). For each image, as
``realsize.py --tasks inpaint`` prepares it (the same crop, the same 50% mask): a
fraction ``--holdout`` of the known pixels (its own random stream) is left out of the
uploaded mask, so the net never fits them; the run is the default otherwise, with the
engine's own holdout off. On those pixels the DIP output and a biharmonic fill made
without them are compared with their true values, which gives the least-squares weight
``alpha`` of ``alpha * DIP + (1 - alpha) * biharmonic``. The answer keeps every known
pixel (the held-out ones too) and fills the missing ones with that blend, the biharmonic
part made from all the known pixels. No clean image is used to choose anything.

Each row also saves the arrays (``--keep DIR``) so other blend rules can be scored
without running the net again.

    python benchmarks/inpaint_blend.py --skip 7 --images 1 --holdout 0.03
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from realsize import DEFAULT_DATA, _load, _save, centre_crop, image_sets, psnr

from dip_engine.blend import blend_weight
from dip_engine.presets import parse_overrides
from dip_engine.restore import RestoreInputs, restore
from dip_engine.spec import RestoreSpec


def run_one(path: Path, args: argparse.Namespace, work: Path) -> dict | None:
    from skimage.restoration import inpaint_biharmonic

    clean = centre_crop(path, args.size)
    if clean is None:
        return None
    work.mkdir(parents=True)
    truth = clean.astype(np.float64) / 255.0
    known = np.random.default_rng(args.seed + 1000).random(clean.shape[:2]) >= args.drop
    held = known & (np.random.default_rng(args.seed + 2000).random(clean.shape[:2]) < args.holdout)
    fitted_on = known & ~held
    masked = (clean * fitted_on[..., None]).astype(np.uint8)
    image, mask = _save(masked, work / "masked.png"), _save(np.where(fitted_on, 255, 0).astype(np.uint8)[..., None],
                                                           work / "mask.png")
    spec = RestoreSpec(task="inpaint", seed=args.seed, device=args.device)
    started = time.monotonic()
    # The engine's own holdout is off: the pixels are held out here, through the uploaded mask.
    overrides = {"holdout": "0"} | parse_overrides(args.set)
    result = restore(spec, RestoreInputs(image, mask=mask, reference=_save(clean, work / "clean.png")), work / "out",
                     overrides=overrides)
    seconds = time.monotonic() - started
    dip = _load(result.files["result"]).astype(np.float64)

    observed = truth * known[..., None]
    fill_all = np.clip(inpaint_biharmonic(observed, ~known, channel_axis=-1), 0, 1)
    fill_held = np.clip(inpaint_biharmonic(truth * fitted_on[..., None], ~fitted_on, channel_axis=-1), 0, 1)
    alpha = blend_weight(dip[held], fill_held[held], truth[held])
    keep = known[..., None]
    answers = {
        "biharmonic": fill_all,
        "dip": np.where(keep, truth, dip),
        "blend": np.where(keep, truth, alpha * dip + (1 - alpha) * fill_all),
    }
    row = {"image": path.stem, "size": args.size, "holdout": args.holdout, "alpha": alpha,
           "seconds": round(seconds, 1), "iterations": result.metrics["summary"]["iterations"]}
    row |= {name: psnr(np.clip(answer, 0, 1), truth) for name, answer in answers.items()}
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.keep / f"{path.stem}-{args.size}.npz", truth=truth, known=known, held=held,
                            dip=dip, fill_all=fill_all, fill_held=fill_held)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=11)
    parser.add_argument("--skip", type=int, default=0)
    parser.add_argument("--holdout", type=float, default=0.03, help="fraction of the known pixels left out")
    parser.add_argument("--drop", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help="override a preset field, as `dip restore --set` (smoke runs)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--keep", type=Path, help="save each image's arrays here (npz)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        images = [p for p in image_sets(args.data)["inpaint"] if centre_crop(p, args.size) is not None]
        for path in images[args.skip:args.skip + args.images]:
            row = run_one(path, args, Path(tmp) / path.stem)
            if row is not None:
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"\n### inpainting, {args.size} px, {args.holdout:.0%} of the known pixels held out\n")
    print("| image | biharmonic | DIP (held-out run) | blend | alpha | blend vs biharmonic | iterations | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['image']} | {r['biharmonic']:.2f} | {r['dip']:.2f} | {r['blend']:.2f} | {r['alpha']:.2f} | "
              f"{r['blend'] - r['biharmonic']:+.2f} | {r['iterations']} | {r['seconds']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
