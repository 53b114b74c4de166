"""Denoising's blend weight, measured on kept runs: each estimate against the clean image's weight.

The net's trajectory does not depend on how its output is weighed against NL-means at the
end, so the weight rules can be compared on the runs ``realsize.py --tasks denoise --keep
DIR`` kept: for each run, the net's averaged output where the answer came from (its 8-bit
snapshot), blended with the NL-means the engine made, under

- ``without``: the weight against NL-means made without the held-out pixels;
- ``stein``: the weight against NL-means made with them, Stein-corrected;
- ``rule``: the engine's weight, the mean of the two (``dip_engine.blend.weigh``);
- ``clean``: the weight the clean image gives (the oracle, for reference only).

    python benchmarks/realsize.py --tasks denoise --size 256 --keep /tmp/runs
    python benchmarks/denoise_weight.py /tmp/runs --held-out kodim03 kodim12 peppers
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from realsize import DenoiseBlend, _load, psnr, snapshots

from dip_engine.blend import blend_weight
from dip_engine.spec import RestoreSpec

RULES = ("without", "stein", "rule", "clean")


def reweigh(work: Path, sigma: float, seed: int) -> dict:
    metrics = json.loads((work / "out" / "metrics.json").read_text())
    at = metrics["summary"]["output_iteration"]
    kept = snapshots(work)
    net = _load(kept[max(i for i in kept if i <= at)])
    truth = _load(work / "clean.png")
    blend = DenoiseBlend(work, RestoreSpec(task="denoise", add_noise_sigma=sigma, seed=seed), metrics)
    chosen, nl_means = blend.weigh(net), blend.answers.everything
    alphas = {"without": chosen.alpha_without, "stein": chosen.alpha_stein, "rule": chosen.alpha,
              "clean": blend_weight(net, nl_means, truth)}
    row = {"image": work.name.split("-", 1)[1], "net": psnr(net, truth), "nlm_engine": psnr(nl_means, truth)}
    for rule, alpha in alphas.items():
        row[f"alpha_{rule}"] = alpha
        row[rule] = psnr(blend.answer(net, alpha), truth)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="a realsize.py --keep folder")
    parser.add_argument("--held-out", nargs="*", default=[], help="images reported apart")
    parser.add_argument("--sigma", type=float, default=25.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = [reweigh(work, args.sigma, args.seed) for work in sorted(args.runs.glob("denoise-*"))
            if (work / "out" / "metrics.json").exists()]
    print("| image | the net alone | " + " | ".join(f"{r} (alpha)" for r in RULES) + " |")
    print("|---|---|" + "---|" * len(RULES))
    for row in rows:
        name = row["image"] + (" (held out)" if row["image"] in args.held_out else "")
        print(f"| {name} | {row['net']:.2f} | " + " | ".join(f"{row[r]:.2f} ({row[f'alpha_{r}']:.2f})" for r in RULES) + " |")
    for label, chosen in (("tuning", [r for r in rows if r["image"] not in args.held_out]),
                          ("held out", [r for r in rows if r["image"] in args.held_out])):
        if chosen:
            means = {r: float(np.mean([row[r] for row in chosen])) for r in RULES}
            worst = {r: min(row[r] - row["clean"] for row in chosen) for r in RULES[:-1]}
            print(f"- {label} ({len(chosen)}): mean " + ", ".join(f"{r} {means[r]:.2f}" for r in RULES)
                  + "; worst against the clean image's weight " + ", ".join(f"{r} {worst[r]:+.2f}" for r in worst))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
