"""Throughput benchmark: iterations per second of the fitting loop, per net and image size.

    python benchmarks/throughput.py --device cuda --sizes 256 512
"""

from __future__ import annotations

import argparse
import time

import torch

from dip_engine.config import FitConfig, NetConfig
from dip_engine.fit import fit
from dip_engine.physics import Denoising
from dip_engine.restore import build_net, make_input, pick_device

NETS = {
    "skip 5x128 (paper)": NetConfig(channels=128),
    "skip 5x64 (fast)": NetConfig(channels=64),
    "unet 4 levels": NetConfig(name="unet", levels=4, channels=128),
}


def measure(net_config: NetConfig, size: int, device: torch.device, iterations: int) -> float:
    generator = torch.Generator().manual_seed(0)
    z = make_input(net_config, size, size, generator=generator).to(device)
    y = torch.rand((1, 3, size, size), generator=generator).to(device)
    config = FitConfig(iterations=iterations, early_stop=None, log_every=iterations, backtrack_db=5.0)
    warm = build_net(net_config, out_channels=3).to(device)
    fit(warm, z, y, Denoising(), config=FitConfig(iterations=10, early_stop=None, log_every=10))
    net = build_net(net_config, out_channels=3).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    fit(net, z, y, Denoising(), config=config)  # ends with a host sync (the last log point)
    return iterations / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--iterations", type=int, default=50)
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; {args.iterations} timed iterations after 10 warm-up")
    print("| net | " + " | ".join(f"{s}x{s} it/s" for s in args.sizes) + " |")
    print("|---|" + "---|" * len(args.sizes))
    for label, net_config in NETS.items():
        rates = [measure(net_config, size, device, args.iterations) for size in args.sizes]
        print(f"| {label} | " + " | ".join(f"{r:.1f}" for r in rates) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
