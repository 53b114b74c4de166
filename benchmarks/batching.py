"""Several DIP jobs per device: K jobs fitted as one batch against the same K jobs fitted one after another.

Each job has its own synthetic image (noise of sigma 25), net, code and jitter stream. The
speed table counts job-iterations per second (K jobs x ``--steps`` iterations over the wall
time), after a short warm-up of both paths (allocator, cuDNN autotuning, oneDNN primitives).
The quality table fits the largest K for ``--iterations`` both ways and compares each job's
PSNR. DIP amplifies float noise (a grouped convolution sums in another order), so the two
differ by as much as a solo run differs from itself with the other memory layout, which the
last column shows.

    python benchmarks/batching.py --smoke
    python benchmarks/batching.py --device cuda --size 256 --jobs 1 2 4 8 16 --steps 100 --iterations 500
    python benchmarks/batching.py --device cuda --precision bf16 --channels-last
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from torch import Tensor

from dip_engine.batched import BatchJob, fit_batch
from dip_engine.config import FitConfig, NetConfig
from dip_engine.fit import FitResult, fit
from dip_engine.metrics import psnr
from dip_engine.nets import build_from_config, count_parameters
from dip_engine.physics import Denoising
from dip_engine.presets import FAST_NET
from dip_engine.restore import configure_determinism, make_input, pick_device

SMOKE_NET = NetConfig(name="skip", channels=8, levels=2, skip_channels=2)
PAPER_NET = NetConfig(name="skip")


def _clean(seed: int, size: int) -> Tensor:
    """A smooth colour image with an edge, different for each seed, in [0, 1]."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    phase = torch.rand(3, generator=torch.Generator().manual_seed(seed)) * 6
    channels = [0.5 + 0.3 * torch.sin(6 * xs + phase[c] + 4 * c * ys) + 0.15 * (ys > 0.3 + 0.1 * c).float()
                for c in range(3)]
    return torch.stack(channels)[None].clamp(0, 1)


def _job(k: int, net_config: NetConfig, size: int, device: torch.device) -> tuple[BatchJob, Tensor]:
    clean = _clean(k, size)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(1000 + k)) * (25 / 255)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2000 + k)
        net = build_from_config(net_config, out_channels=3).to(device)
    z = make_input(net_config, size, size, generator=torch.Generator().manual_seed(3000 + k)).to(device)
    job = BatchJob(net=net, z=z, y=(clean + noise).clamp(0, 1).to(device), physics=Denoising().to(device),
                   reference=clean.to(device), generator=torch.Generator(device=device).manual_seed(4000 + k))
    return job, clean.to(device)


def _jobs(count: int, net_config: NetConfig, size: int, device: torch.device) -> list[BatchJob]:
    return [_job(k, net_config, size, device)[0] for k in range(count)]


def _solo(job: BatchJob, config: FitConfig) -> FitResult:
    return fit(job.net, job.z, job.y, job.physics, config=config, reference=job.reference, generator=job.generator)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, run: object) -> float:
    _sync(device)
    started = time.perf_counter()
    run()  # type: ignore[operator]
    _sync(device)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[4], help="batch sizes K to time")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50, help="iterations per timed run")
    parser.add_argument("--iterations", type=int, default=200, help="iterations of the quality comparison")
    parser.add_argument("--net", choices=["fast", "paper"], default="fast", help="the fast or the paper preset's net")
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--smoke", action="store_true", help="tiny net and image, a few steps: a CPU check")
    args = parser.parse_args(argv)
    net_name, net_config = args.net, {"fast": FAST_NET, "paper": PAPER_NET}[args.net]
    if args.smoke:
        net_name, net_config, args.size, args.steps, args.iterations = "smoke", SMOKE_NET, 32, 20, 30
    device = pick_device(args.device)
    if device.type == "cuda":
        configure_determinism(False)  # cuDNN autotunes, as the service's runs do
    config = FitConfig(iterations=args.steps, log_every=args.steps, early_stop=None, max_snapshots=0,
                       precision=args.precision, channels_last=args.channels_last)
    warm = replace(config, iterations=3, log_every=3)
    params = count_parameters(build_from_config(net_config, out_channels=3))
    print(f"{args.size} px, {net_name} net ({params:,} parameters), {device}, precision {args.precision}, "
          f"channels_last {args.channels_last}, {torch.get_num_threads()} threads, {args.steps} timed iterations\n")

    print("| K | solo, one after another (job-it/s) | batched (job-it/s) | batched (batch-it/s) | throughput ratio |")
    print("|---|---|---|---|---|")
    for count in args.jobs:
        _solo(_jobs(1, net_config, args.size, device)[0], warm)
        fit_batch(_jobs(count, net_config, args.size, device), config=warm)
        solo_jobs, batch_jobs = (_jobs(count, net_config, args.size, device) for _ in range(2))
        solo_s = _timed(device, lambda: [_solo(job, config) for job in solo_jobs])
        batch_s = _timed(device, lambda: fit_batch(batch_jobs, config=config))
        solo_rate, batch_rate = count * args.steps / solo_s, count * args.steps / batch_s
        print(f"| {count} | {solo_rate:.1f} | {batch_rate:.1f} | {batch_rate / count:.1f} | "
              f"{batch_rate / solo_rate:.2f}x |")

    count = max(args.jobs)
    quality = replace(config, iterations=args.iterations, log_every=max(1, args.iterations // 4))
    cleans = [_job(k, net_config, args.size, device)[1] for k in range(count)]
    solo = [_solo(job, quality) for job in _jobs(count, net_config, args.size, device)]
    # The noise floor: the same solo run with only its memory layout changed, i.e. float sums reordered.
    relaid = replace(quality, channels_last=not quality.channels_last)
    floor = [_solo(job, relaid) for job in _jobs(count, net_config, args.size, device)]
    batch = fit_batch(_jobs(count, net_config, args.size, device), config=quality)
    print(f"\nPSNR of the output after {args.iterations} iterations (K = {count}); the last column is a solo "
          "run's own spread: the same run with the other memory layout\n")
    print("| job | solo (dB) | batched (dB) | batched - solo (dB) | backtracks solo / batched | "
          "solo, other layout - solo (dB) |")
    print("|---|---|---|---|---|---|")
    for k, (one, many, other, clean) in enumerate(zip(solo, batch, floor, cleans)):
        a, b, c = (float(psnr(r.output, clean)) for r in (one, many, other))
        print(f"| {k} | {a:.2f} | {b:.2f} | {b - a:+.3f} | {one.backtracks} / {many.backtracks} | {c - a:+.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
