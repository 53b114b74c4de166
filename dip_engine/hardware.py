"""What the device computes fast: the precision a run with ``precision="auto"`` uses."""

from __future__ import annotations

import torch

__all__ = ["bf16_is_fast", "resolve_precision"]


def bf16_is_fast(device: torch.device) -> bool:
    """True where bfloat16 convolutions run on dedicated hardware: GPUs with bf16 support
    (Ampere and later) and CPUs with AMX tiles or AVX-512 BF16 (Sapphire Rapids and later).
    Elsewhere bf16 is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        # Private probes, but the only ones torch offers; a torch without them gets float32.
        probes = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
        return any(probe is not None and probe() for probe in probes)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` where :func:`bf16_is_fast`, else ``"fp32"``; others unchanged."""
    if precision != "auto":
        return precision
    return "bf16" if bf16_is_fast(device) else "fp32"
