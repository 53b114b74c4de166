"""The Deep Image Prior optimisation loop.

``fit`` minimises ``||A(f_θ(z + σ·n_t)) - y||²`` over the weights θ of a
randomly initialised network, for any forward operator ``A``; it never looks
at a task name. Around the paper's loop (fixed code ``z``, input jitter, Adam,
output EMA, backtracking) it adds best-iterate tracking against an optional
reference, ES-WMV early stopping, snapshots and resumable checkpoints.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .callbacks import Callback, FitState
from .checkpoint import load_checkpoint, restore_generator, save_checkpoint
from .config import FitConfig
from .cuda_graph import GraphedStep
from .early_stopping import EarlyStopping
from .hardware import resolve_precision
from .history import LogRecord
from .metrics import psnr, ssim
from .physics import Physics

SnapshotWriter = Callable[[int, Tensor], Path]


@dataclass(frozen=True)
class CheckpointConfig:
    """Write the whole loop state to ``path`` every ``every`` iterations; resume from it if present."""

    path: Path
    every: int = 100
    resume: bool = True


@dataclass
class FitResult:
    """What a run produced. Output tensors are (1, C, h, w), cropped, on the run's device.

    ``output`` is the run's answer without ground truth: the ES-WMV iterate when
    early stopping is on, else the last one. ``best`` is the peak-PSNR iterate
    when a reference was given, else ``output``.
    """

    output: Tensor
    last: Tensor
    best: Tensor
    history: list[LogRecord]
    iterations: int
    stop_reason: str
    output_iteration: int
    best_iteration: int | None = None
    best_psnr: float | None = None
    best_kind: str | None = None
    early_stop_iteration: int | None = None
    backtracks: int = 0
    elapsed_s: float = 0.0
    snapshots: list[Path] = field(default_factory=list)


class _Backtracker:
    """Undo DIP's sudden loss spikes: when the PSNR against ``y`` falls by more than
    ``drop_db`` from the last accepted check, go back to that check's weights.

    Checked before the optimiser step, so the weights kept are those that
    produced the checked output. ``rule="rollback"`` also restores Adam's moments
    (a spike fills them with huge gradients) and the output average, skips the
    step, and clears the early-stopping window, so the spike leaves no trace in
    any of them. ``rule="reference"`` is the authors' notebook: parameters only.
    """

    def __init__(self, drop_db: float, rule: str) -> None:
        self.drop_db = drop_db
        self.rule = rule
        self.last_psnr: float | None = None
        self.saved: dict[str, Any] | None = None
        self.count = 0

    def is_drop(self, psnr_degraded: float) -> bool:
        return self.saved is not None and self.last_psnr is not None and (
            not math.isfinite(psnr_degraded) or psnr_degraded < self.last_psnr - self.drop_db)

    def accept(self, psnr_degraded: float, net: nn.Module, optimizer: torch.optim.Optimizer,
               ema_sum: Tensor | None) -> None:
        if not math.isfinite(psnr_degraded):
            return
        self.last_psnr = psnr_degraded
        if self.rule == "reference":
            self.saved = {"params": [p.detach().clone() for p in net.parameters()]}
            return
        self.saved = {
            "net": {k: v.detach().clone() for k, v in net.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "ema_sum": None if ema_sum is None else ema_sum.clone(),
        }

    def restore(self, net: nn.Module, optimizer: torch.optim.Optimizer) -> Tensor | None:
        """Put the saved state back; returns the saved output average (rollback rule)."""
        assert self.saved is not None
        self.count += 1
        if self.rule == "reference":
            with torch.no_grad():
                for param, saved in zip(net.parameters(), self.saved["params"]):
                    param.copy_(saved)
            return None
        net.load_state_dict(self.saved["net"])
        optimizer.load_state_dict(self.saved["optimizer"])
        return None if self.saved["ema_sum"] is None else self.saved["ema_sum"].clone()

    def state_dict(self) -> dict[str, Any]:
        return {"last_psnr": self.last_psnr, "saved": self.saved, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_psnr, self.saved, self.count = state["last_psnr"], state["saved"], state["count"]


class _BestTracker:
    """The highest-PSNR output seen at log points, raw or averaged."""

    def __init__(self) -> None:
        self.psnr: float | None = None
        self.iteration: int | None = None
        self.kind: str | None = None
        self.output: Tensor | None = None

    def offer(self, iteration: int, value: float, kind: str, output: Tensor) -> None:
        if math.isfinite(value) and (self.psnr is None or value > self.psnr):
            self.psnr, self.iteration, self.kind = value, iteration, kind
            self.output = output.detach().clone()

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        vars(self).update(state)


class _Jitter:
    """The code the net sees at each step: ``z + std * n`` with fresh ``n ~ N(0, I)``.

    The draw goes into one reused buffer, scaled in place: allocating the noise anew each step
    cost about 2 ms of a 90 ms step at 256 px on 2 CPU cores.
    """

    def __init__(self, z: Tensor, std: float, generator: torch.Generator) -> None:
        self.z, self.std, self.generator = z, std, generator
        self.noise = torch.empty(z.shape, dtype=z.dtype, device=z.device) if std > 0 else None

    def __call__(self) -> Tensor:
        if self.noise is None:
            return self.z
        return self.z + self.noise.normal_(generator=self.generator).mul_(self.std)


def _validate(net: nn.Module, z: Tensor, y: Tensor, physics: Physics, reference: Tensor | None, crop: tuple[int, int] | None) -> None:
    if z.dim() != 4 or z.shape[0] != 1:
        raise ValueError(f"z must be (1, C, H, W), got shape {tuple(z.shape)}")
    if y.dim() != 4 or y.shape[0] != 1:
        raise ValueError(f"y must be (1, C, H, W), got shape {tuple(y.shape)}")
    expected = physics.input_shape(y.shape)
    if tuple(expected[-2:]) != tuple(z.shape[-2:]):
        raise ValueError(f"z is {tuple(z.shape[-2:])} but the operator needs outputs of {tuple(expected[-2:])}")
    if reference is not None and crop is not None and tuple(reference.shape[-2:]) != tuple(crop):
        raise ValueError(f"reference is {tuple(reference.shape[-2:])} but the cropped output is {tuple(crop)}")


def fit(
    net: nn.Module,
    z: Tensor,
    y: Tensor,
    physics: Physics,
    *,
    config: FitConfig,
    reference: Tensor | None = None,
    crop: tuple[int, int] | None = None,
    callbacks: Sequence[Callback] = (),
    checkpoint: CheckpointConfig | None = None,
    snapshot: SnapshotWriter | None = None,
    generator: torch.Generator | None = None,
    noise_sigma: float | None = None,
) -> FitResult:
    """Fit ``net`` so that ``physics.A(net(z))`` matches ``y``.

    Args:
        net: a freshly initialised network mapping ``z`` to an image in [0, 1].
        z: fixed input code, (1, C_in, H, W), on the run's device.
        y: the measurement, (1, C, h', w'), same device.
        physics: the forward operator ``A``.
        config: loop hyperparameters.
        reference: optional clean image (1, C, h, w) for PSNR/SSIM and the best iterate.
        crop: (h, w) of the valid output region; the rest is padding. Default: all of it.
        callbacks: progress, cancellation and event hooks.
        checkpoint: where and how often to save the resumable state.
        snapshot: called with (iteration, output) every ``config.snapshot_every``; returns the file written.
        generator: random source of the input jitter (on z's device), for reproducibility.
        noise_sigma: the measurement's estimated noise level, for the early-stopping noise gate.

    Returns:
        A :class:`FitResult`.
    """
    _validate(net, z, y, physics, reference, crop)
    h, w = crop if crop is not None else tuple(z.shape[-2:])
    device = z.device
    if generator is None:
        generator = torch.Generator(device=device)
        generator.manual_seed(0)

    # One fused kernel per step instead of a few per parameter tensor (about 5% of a 256 px CPU step).
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, fused=device.type in ("cpu", "cuda"))
    early = (EarlyStopping(config.early_stop, noise_sigma=noise_sigma, pixels=h * w)
             if config.early_stop is not None else None)
    backtracker = (_Backtracker(config.backtrack_db, config.backtrack_rule)
                   if config.backtrack_db is not None else None)
    best = _BestTracker()
    history: list[LogRecord] = []
    snapshots: list[Path] = []
    ema_sum: Tensor | None = None
    avg: Tensor | None = None
    raw: Tensor | None = None
    start, elapsed_before = 0, 0.0

    if checkpoint is not None and checkpoint.resume and checkpoint.path.exists():
        saved = load_checkpoint(checkpoint.path, map_location=device)
        net.load_state_dict(saved["net"])
        optimizer.load_state_dict(saved["optimizer"])
        z = saved["z"].to(device)
        restore_generator(generator, saved["generator"], saved_on=saved.get("device", "another device"),
                          path=checkpoint.path)
        ema_sum, avg, raw = saved["ema_sum"], saved["avg"], saved["raw"]
        history = [LogRecord.from_dict(r) for r in saved["history"]]
        best.load_state_dict(saved["best"])
        if early is not None and saved["early"] is not None:
            early.load_state_dict(saved["early"])
        if backtracker is not None and saved["backtracker"] is not None:
            backtracker.load_state_dict(saved["backtracker"])
        # Relative to the checkpoint's folder: a job resumes on another host, in another folder.
        snapshots = [checkpoint.path.parent / p for p in saved["snapshots"]]
        start, elapsed_before = saved["iteration"], saved["elapsed_s"]

    state = FitState(total=config.iterations, iteration=start, start_iteration=start, elapsed_s=elapsed_before,
                     resumed_history=tuple(history), resumed_snapshots=tuple(snapshots))
    state.best_iteration, state.best_psnr = best.iteration, best.psnr
    state.early_stop_iteration = early.detected_iteration if early is not None else None
    state.last = history[-1] if history else None
    clock = time.monotonic()
    measured = physics.measured_fraction

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - clock

    def selected(raw_out: Tensor, avg_out: Tensor) -> Tensor:
        return avg_out if config.output == "ema" else raw_out

    def save(iteration: int) -> None:
        if checkpoint is None:
            return
        save_checkpoint(checkpoint.path, {
            "iteration": iteration,
            "net": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "z": z,
            "generator": generator.get_state(),
            "ema_sum": ema_sum,
            "avg": avg,
            "raw": raw,
            "history": [r.to_dict() for r in history],
            "best": best.state_dict(),
            "early": early.state_dict() if early is not None else None,
            "backtracker": backtracker.state_dict() if backtracker is not None else None,
            "snapshots": [_relative(p, checkpoint.path.parent) for p in snapshots],
            "elapsed_s": elapsed(),
            "device": device.type,
        })
        for cb in callbacks:
            cb.on_checkpoint(state, checkpoint.path)

    snapshot_interval = config.snapshot_interval
    if config.channels_last:
        net.to(memory_format=torch.channels_last)
        z = z.contiguous(memory_format=torch.channels_last)

    bf16 = resolve_precision(config.precision, device) == "bf16"

    graphed = config.cuda_graph and device.type == "cuda"

    def forward(code: Tensor) -> Tensor:
        # The loss and everything downstream stay in float32, whatever the net computes in.
        # The code is cast once here rather than by each first-level convolution (the same
        # rounding: autocast would cast it to bf16 for each). A captured graph records the
        # weights' casts, so autocast's cache (kept across a capture) must be off there.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=not graphed):
            return net(code.to(torch.bfloat16) if bf16 else code).float()

    def forward_loss(code: Tensor) -> tuple[Tensor, Tensor]:
        out = forward(code)
        return out, torch.mean((physics.A(out) - y) ** 2)

    jitter = _Jitter(z, config.reg_noise_std, generator)
    step = GraphedStep(forward_loss, net, z) if graphed else None

    def backtrack_due(iteration: int) -> bool:
        if config.backtrack_rule == "reference":
            # The notebook checks when its 0-based ``i % show_every`` is non-zero.
            return (iteration - 1) % config.log_every != 0
        return iteration % (config.backtrack_every or config.log_every) == 0

    for cb in callbacks:
        cb.on_fit_start(state)
    net.train()
    iteration = start
    while iteration < config.iterations and state.stop_reason is None:
        iteration += 1
        if step is not None:
            out, loss = step(jitter())
        else:
            out, loss = forward_loss(jitter())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if backtracker is not None and backtrack_due(iteration):
            psnr_deg = _psnr_from_mse(loss.item(), measured)
            if backtracker.is_drop(psnr_deg):
                restored = backtracker.restore(net, optimizer)
                if backtracker.rule == "rollback":
                    ema_sum = restored
                    if early is not None:
                        early.forget_window()
                    state.iteration = iteration
                    for cb in callbacks:
                        cb.on_step(state)
                    continue
            else:
                backtracker.accept(psnr_deg, net, optimizer, ema_sum)
        optimizer.step()

        raw = out.detach()[..., :h, :w]
        ema_sum, avg = _average(config, ema_sum, raw, iteration)
        if early is not None:
            early.update(iteration, avg if early.config.signal == "ema" else raw, selected(raw, avg))

        state.iteration = iteration
        is_log_point = iteration % config.log_every == 0 or iteration == config.iterations
        record = _log(iteration, loss, raw, avg, reference, measured, early, elapsed()) if is_log_point else None

        if record is not None:
            history.append(record)
            _take_log_point(record, raw, avg, selected(raw, avg), state=state, best=best, early=early,
                            measured=measured, cap=config.iterations)
            for cb in callbacks:
                cb.on_log(state, record)
        if snapshot is not None and snapshot_interval and iteration % snapshot_interval == 0:
            path = snapshot(iteration, selected(raw, avg))
            snapshots.append(path)
            for cb in callbacks:
                cb.on_snapshot(state, path)
        for cb in callbacks:
            cb.on_step(state)
        if checkpoint is not None and iteration % checkpoint.every == 0 and state.stop_reason is None:
            save(iteration)

    if raw is None or avg is None:  # stopped before the first step: report the untrained output
        with torch.no_grad():
            raw = avg = forward(z)[..., :h, :w]
    if state.stop_reason == "canceled":
        save(iteration)
    last = selected(raw, avg)
    if config.output == "raw" and config.reg_noise_std > 0:
        # The reference code's answer: the trained net on its fixed code, without jitter.
        with torch.no_grad():
            last = forward(z)[..., :h, :w]
    detected = early.detected_iteration if early is not None else None
    use_candidate = early is not None and early.returns_candidate
    output = early.candidate if use_candidate else last
    state.elapsed_s = elapsed()
    state.early_stop_iteration = detected
    for cb in callbacks:
        cb.on_fit_end(state)
    return FitResult(
        output=output,
        last=last,
        best=best.output if best.output is not None else output,
        history=history,
        iterations=iteration,
        stop_reason=state.stop_reason or "completed",
        output_iteration=detected if detected is not None and output is not last else iteration,
        best_iteration=best.iteration,
        best_psnr=best.psnr,
        best_kind=best.kind,
        early_stop_iteration=detected,
        backtracks=backtracker.count if backtracker is not None else 0,
        elapsed_s=state.elapsed_s,
        snapshots=snapshots,
    )


def _average(config: FitConfig, ema_sum: Tensor | None, raw: Tensor, iteration: int) -> tuple[Tensor | None, Tensor]:
    """Fold ``raw`` into the running output average: (the new running sum, the average)."""
    if config.ema == 0:
        return ema_sum, raw
    if config.ema_start == "first":
        ema_sum = raw.clone() if ema_sum is None else ema_sum.mul_(config.ema).add_(raw, alpha=1 - config.ema)
        return ema_sum, ema_sum
    # Zero-initialised and bias-corrected (as Adam's moments): the reference code seeds
    # the average with the first, random output, which then dominates short runs.
    ema_sum = torch.zeros_like(raw) if ema_sum is None else ema_sum
    ema_sum.mul_(config.ema).add_(raw, alpha=1 - config.ema)
    return ema_sum, ema_sum / (1 - config.ema**iteration)


def _take_log_point(record: LogRecord, raw: Tensor, avg: Tensor, candidate: Tensor, *, state: FitState,
                    best: _BestTracker, early: EarlyStopping | None, measured: float, cap: int) -> None:
    """What a logged point updates: the best iterate, the state callbacks read, and the early
    stop (``candidate`` is the output it would return from here)."""
    iteration = record.iteration
    if record.psnr is not None:  # a reference is known
        best.offer(iteration, record.psnr, "raw", raw)
        if record.psnr_avg is not None:
            best.offer(iteration, record.psnr_avg, "ema", avg)
    state.last, state.elapsed_s = record, record.elapsed_s
    state.best_iteration, state.best_psnr = best.iteration, best.psnr
    if early is not None:
        early.observe_fit(iteration, record.loss / measured, candidate)
        state.early_stop_iteration = early.detected_iteration
        state.expected_end = early.expected_end(cap, record.iteration)
        if early.should_stop(iteration):
            state.request_stop("early_stop")


def _psnr_from_mse(mse: float, measured: float) -> float:
    """PSNR against ``y`` from the loss, which averages over all of ``y`` though only
    ``measured`` of it carries data; NaN for a diverged loss (the backtracker treats
    any non-finite value as a drop)."""
    return -10.0 * math.log10(max(mse / measured, 1e-12)) if math.isfinite(mse) else float("nan")


def _log(
    iteration: int,
    loss: Tensor,
    raw: Tensor,
    avg: Tensor,
    reference: Tensor | None,
    measured: float,
    early: EarlyStopping | None,
    elapsed_s: float,
) -> LogRecord:
    # One host sync for all the numbers of this point.
    values = [loss.detach()]
    if reference is not None:
        values += [psnr(raw, reference), psnr(avg, reference), ssim(raw, reference)]
    if early is not None and early.last_variance is not None:
        values.append(early.last_variance)
    numbers = torch.stack([v.to(torch.float32).reshape(()) for v in values]).tolist()
    loss_value = numbers[0]
    record = dict(iteration=iteration, loss=loss_value, psnr_degraded=_psnr_from_mse(loss_value, measured),
                  elapsed_s=round(elapsed_s, 3))
    if reference is not None:
        record.update(psnr=numbers[1], psnr_avg=numbers[2], ssim=numbers[3])
    if early is not None and early.last_variance is not None:
        record["variance"] = numbers[-1]
    return LogRecord(**record)


def _relative(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` where it lies inside it (else as it is)."""
    return path.relative_to(folder).as_posix() if path.is_relative_to(folder) else str(path)
