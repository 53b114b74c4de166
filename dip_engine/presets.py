"""The building blocks of the presets, and how a request's ``--set`` overrides apply (torch-free).

A task's presets themselves are in its entry of the task table; ``problems.preset_config``
and ``problems.resolve`` look them up.

Three presets, each a function per task in :data:`dip_engine.problems.PROBLEMS`:

- ``fast`` (the default): sized for a 2-core CPU at 256-512 px: a 5x32 net in
  bf16 where the hardware has it, early stopping on the averaged output once the
  fit has reached the measurement's noise, our loop improvements.
- ``quality``: the paper's full-width networks and iteration counts with our
  loop improvements (bias-corrected averaging, rollback backtracking,
  ES-WMV early stopping, best-iterate tracking).
- ``paper``: the published protocol exactly, as the authors' notebooks run
  it: fixed iterations, no early stopping, the raw output ``net(z)`` at the
  end, the notebooks' averaging (seeded with the first output) and
  backtracking rule (denoising and JPEG only).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from .config import EarlyStopConfig, FitConfig, NetConfig, RunConfig

__all__ = [
    "DENOISE_CAP", "DENOISE_STOP", "FAST_NET", "FAST_STOP", "HOLES_NET", "HOURGLASS", "NOISE_FREE_CAP", "PAPER_STOP",
    "SNAIL_NET", "RunConfig", "SizeCap", "apply_overrides", "fast_fit", "paper_fit", "parse_overrides",
]

# The paper's hourglass: 5 levels of 128 channels, skips of 4 (denoising, super-resolution,
# 50%-pixel inpainting).
HOURGLASS = NetConfig(name="skip", channels=128, levels=5, skip_channels=4, upsample_mode="bilinear")
# Text and hole inpainting (kate.png): skips of 128 and nearest upsampling.
HOLES_NET = replace(HOURGLASS, skip_channels=128, upsample_mode="nearest")
# JPEG artefact removal (snail.jpg): a narrow pyramid on a 3-channel code, skips only at depth.
SNAIL_NET = NetConfig(name="skip", input_channels=3, upsample_mode="bilinear",
                      channels_down=(8, 16, 32, 64, 128), channels_up=(8, 16, 32, 64, 128),
                      channels_skip=(0, 0, 0, 4, 4))
# The fast preset's net and detector were chosen from replayed 256 px runs (docs/benchmarks.md,
# "Real sizes"): 5x32 in bf16 runs ~3x the iterations of 5x64 in fp32 on a 2-core CPU, and the
# 96 px detector (patience 200, 20% margin, no gate) stopped 256 px denoising 1.5 dB early.
FAST_NET = NetConfig(name="skip", channels=32, levels=5, skip_channels=4, upsample_mode="bilinear")
PAPER_STOP = EarlyStopConfig(window=100, patience=1000)
FAST_STOP = EarlyStopConfig(window=100, patience=300, signal="ema", min_delta=0.2, noise_gate=1.0)
# Denoising also ends where the loss has fallen 20% below the estimated noise: on small images the
# averaged output's variance can keep dropping by the margin long past the PSNR peak (docs/benchmarks.md,
# "The noise floor").
DENOISE_STOP = replace(FAST_STOP, noise_floor=0.8)


@dataclass(frozen=True)
class SizeCap:
    """An iteration cap that grows with the output: ``small`` up to ``from_side`` px a side, ``large``
    from ``to_side`` px, linear in the side between, rounded to ``step``. A side is the square root of
    the pixel count, so a 128x512 image counts as 256 px.

    A noise-free fit (known pixels, a clean low-resolution image) has nothing to overfit, so its cap
    is what ends it; a larger image takes more iterations to reach the same detail, and on a small
    one the extra iterations bring little (docs/benchmarks.md, "The cap grows with the image")."""

    small: int
    large: int
    from_side: int
    to_side: int
    step: int = 500

    def at(self, pixels: int | None) -> int:
        """The cap for an output of ``pixels`` pixels; ``None`` (not read yet): the largest."""
        if pixels is None:
            return self.large
        t = min(1.0, max(0.0, (math.sqrt(pixels) - self.from_side) / (self.to_side - self.from_side)))
        return int(round((self.small + t * (self.large - self.small)) / self.step)) * self.step


# The fast preset's cap for the noise-free tasks (scattered missing pixels, super-resolution), which run
# to it: 3000 at 96 px a side, 3500 at 128, 5000 from 256. On the tuning images 5000 against 3000 gained
# 0.04 / 0.11 / 0.44 dB for inpainting at 96 / 128 / 256 px, and 0.10 / 0.13 dB for super-resolution at
# 128 / 256 px (docs/benchmarks.md, "The cap grows with the image").
NOISE_FREE_CAP = SizeCap(small=3000, large=5000, from_side=96, to_side=256)

# The fast preset's denoising cap: 3000 up to 256 px a side, where the gated detector ends most runs
# before it, growing to 5000 at 512 px, where the noise gate was still shut at 5000 and the averaged
# output still rising: +0.52 to +0.63 dB against 3000 on three tuning images (docs/benchmarks.md,
# "The denoising cap grows from 256 to 512 px").
DENOISE_CAP = SizeCap(small=3000, large=5000, from_side=256, to_side=512)


def fast_fit(*, iterations: int, reg_noise_std: float, ema: float = 0.99, lr: float = 0.01,
             early_stop: EarlyStopConfig = FAST_STOP) -> FitConfig:
    """The fast preset's loop: averaged output, the gated detector, logged every 25
    iterations, bf16 where the hardware has it, NHWC layout."""
    return FitConfig(iterations=iterations, lr=lr, reg_noise_std=reg_noise_std, ema=ema, log_every=25,
                     early_stop=early_stop, precision="auto", channels_last=True)


def paper_fit(*, iterations: int, reg_noise_std: float, lr: float = 0.01, averaged: bool = False,
              backtracking: bool = False) -> FitConfig:
    """A notebook's loop: fixed iterations, the raw output, and optionally its averaging
    (``exp_weight`` 0.99, seeded with the first output) and backtracking (5 dB).

    The arithmetic is ours: bf16 where the hardware has it and NHWC layout (measured within
    0.1 dB of float32, docs/benchmarks.md); ``--set fit.precision=fp32`` for the notebooks' float32."""
    return FitConfig(iterations=iterations, lr=lr, reg_noise_std=reg_noise_std,
                     ema=0.99 if averaged else 0.0, ema_start="first",
                     backtrack_db=5.0 if backtracking else None, backtrack_rule="reference",
                     early_stop=None, output="raw", log_every=100, precision="auto", channels_last=True)


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """``--set`` arguments (``"fit.lr=0.005"``) as the mapping :func:`apply_overrides` takes.

    Raises:
        ValueError: an item without ``PATH=``.
    """
    overrides = {}
    for item in items:
        path, sep, value = item.partition("=")
        if not sep or not path.strip():
            raise ValueError(f"--set needs PATH=VALUE, got {item!r}")
        overrides[path.strip()] = value.strip()
    return overrides


def apply_overrides(run: RunConfig, overrides: dict[str, object]) -> RunConfig:
    """Set any field by a dotted path, e.g. ``{"fit.lr": 0.005, "net.channels": 96,
    "fit.early_stop.patience": 300, "net.channels_down": "16,32,64"}``; strings are
    converted to the field's type (comma-separated for per-level tuples).

    Raises:
        ValueError: an unknown path or a value of the wrong type.
    """
    for path, value in overrides.items():
        run = _override(run, path.split("."), value, path)
    return run


def _override(obj: object, keys: list[str], value: object, path: str) -> object:
    key, rest = keys[0], keys[1:]
    fields = getattr(obj, "__dataclass_fields__", None)
    if fields is None or key not in fields:
        known = ", ".join(sorted(fields)) if fields else "none"
        raise ValueError(f"unknown setting {path!r}: {key!r} is not one of {known}")
    current = getattr(obj, key)
    if rest:
        if current is None:
            raise ValueError(f"cannot set {path!r}: {key} is off (None) in this preset")
        return replace(obj, **{key: _override(current, rest, value, path)})
    return replace(obj, **{key: _coerce(current, value, path, fields[key].type)})


def _coerce(current: object, value: object, path: str, annotation: object = None) -> object:
    if not isinstance(value, str):
        return tuple(value) if isinstance(value, list) else value
    if value.lower() in ("none", "off") and not isinstance(current, str):
        return None
    try:
        if isinstance(current, tuple) or "tuple" in str(annotation):
            return tuple(int(part) for part in value.replace(" ", "").strip("()[]").split(",") if part)
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        if isinstance(current, int):
            return int(value)
        if current is None and "int" in str(annotation) and "float" not in str(annotation):
            return int(value)
        if isinstance(current, float) or current is None:
            return float(value)
    except ValueError:
        kind = "comma-separated list of ints" if "tuple" in str(annotation) else type(current).__name__
        raise ValueError(f"{path} needs a {kind}, got {value!r}") from None
    return value
