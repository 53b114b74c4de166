"""Iterations per second of the engine's loop against a reference-style loop, side by side.

The reference-style loop is what the authors' notebooks do: the paper's skip
net in float32, default threads, plain Adam, ``.item()`` on the loss every
step. The engine runs ``fit()`` with the paper preset's loop as ``dip restore
--preset paper`` does (bf16 where the hardware has it, channels-last layout) and
with those two choices undone one at a time. Blocks alternate, so a busy machine
slows both alike; the table prints the median of the blocks. ``--preset fast``
times the default's net and loop instead (the reference-style loop then runs that net).

    python benchmarks/loop_speed.py --size 128 --blocks 3 --steps 10
    python benchmarks/loop_speed.py --preset fast --size 256 --blocks 3 --steps 30
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from dip_engine.fit import fit
from dip_engine.hardware import resolve_precision
from dip_engine.nets import build_from_config
from dip_engine.physics import Denoising
from dip_engine.problems import preset_config
from dip_engine.restore import make_input, pick_device


def reference_loop(net: torch.nn.Module, z: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    started = time.perf_counter()
    for _ in range(steps):
        out = net(z + torch.randn_like(z) / 30)
        loss = torch.nn.functional.mse_loss(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()
    return steps / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="iterations per block")
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--preset", choices=["paper", "fast"], default="paper")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    run = preset_config(args.preset, "denoise")
    z = make_input(run.net, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    y = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(device)
    base = replace(run.fit, iterations=args.steps, log_every=args.steps)
    resolved = resolve_precision(base.precision, device)
    variants = {
        f"engine, `--preset {args.preset}` ({resolved}, channels last)": base,
        "engine, fp32, NCHW": replace(base, precision="fp32", channels_last=False),
        "engine, fp32, channels last": replace(base, precision="fp32", channels_last=True),
        "engine, bf16, NCHW": replace(base, precision="bf16", channels_last=False),
    }
    if device.type == "cuda":
        # The capture (three warm-up passes and the recording) is inside the timed block.
        variants[f"engine, `--preset {args.preset}` + CUDA graph"] = replace(base, cuda_graph=True)
        variants["engine, fp32, channels last + CUDA graph"] = replace(base, precision="fp32", channels_last=True,
                                                                       cuda_graph=True)
    speeds: dict[str, list[float]] = {"reference-style loop": []} | {name: [] for name in variants}
    for _ in range(args.blocks):
        speeds["reference-style loop"].append(reference_loop(build_from_config(run.net, out_channels=3).to(device),
                                                             z, y, args.steps))
        for name, config in variants.items():
            net = build_from_config(run.net, out_channels=3).to(device)
            fit(net, z, y, Denoising(), config=config)  # warm-up block: allocator, oneDNN primitives
            started = time.perf_counter()
            fit(net, z, y, Denoising(), config=config)
            speeds[name].append(args.steps / (time.perf_counter() - started))
    reference = statistics.median(speeds["reference-style loop"])
    print(f"{args.size} px, {args.preset} net, {device}, {torch.get_num_threads()} threads, "
          f"median of {args.blocks} blocks of {args.steps} iterations")
    print("| loop | it/s | vs reference |\n|---|---|---|")
    for name, values in speeds.items():
        print(f"| {name} | {statistics.median(values):.2f} | {statistics.median(values) / reference:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
