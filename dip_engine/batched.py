"""Several DIP jobs trained as one batched model: one forward and backward for all of them.

K jobs whose nets share an architecture, whose inputs share their shapes and which share
one :class:`~dip_engine.config.FitConfig` are stacked: their weights along a new leading
dimension (``torch.func.stack_module_state``), their codes likewise, and ``torch.vmap``
over ``torch.func.functional_call`` runs the K nets as one (each convolution becomes a
grouped one). A small job that leaves a GPU mostly idle then shares it with K - 1 others.

Everything else stays per job and follows :func:`~dip_engine.fit.fit`: the jitter stream,
the output average, rollback backtracking, ES-WMV, the best iterate, the history,
snapshots, callbacks, checkpoints (in ``fit()``'s format, so a solo ``fit()`` resumes
them) and the :class:`~dip_engine.fit.FitResult`. A job that stops leaves the batch and
the others go on, restacked without it.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .callbacks import Callback, FitState
from .checkpoint import load_checkpoint, restore_generator, save_checkpoint
from .config import FitConfig
from .early_stopping import EarlyStopping
from .fit import (CheckpointConfig, FitResult, SnapshotWriter, _average, _Backtracker, _BestTracker, _Jitter, _log,
                  _psnr_from_mse, _take_log_point, _validate)
from .hardware import resolve_precision
from .history import LogRecord
from .physics import Physics

__all__ = ["BatchJob", "fit_batch"]


@dataclass
class BatchJob:
    """One job of a batch: what :func:`~dip_engine.fit.fit` takes for one run besides the config.

    ``net`` is a freshly initialised network of the batch's one architecture; like ``fit()``,
    the batch leaves the trained weights in it when the job ends.
    """

    net: nn.Module
    z: Tensor
    y: Tensor
    physics: Physics
    reference: Tensor | None = None
    crop: tuple[int, int] | None = None
    callbacks: Sequence[Callback] = ()
    checkpoint: CheckpointConfig | None = None
    snapshot: SnapshotWriter | None = None
    generator: torch.Generator | None = None
    noise_sigma: float | None = None


class _Bf16Convolutions(TorchFunctionMode):
    """Runs convolutions on bfloat16 inputs and weights, as ``torch.autocast`` does.

    Autocast does not reach operators under ``torch.vmap`` on CPU (their batching rules run
    below the autocast dispatch key; pytorch/functorch#305), so the batched forward casts for
    itself. For these nets autocast comes to the same: convolutions in bfloat16 and every
    other layer on their bfloat16 outputs. Batch norm's batching rule would promote its output
    to its float32 affine weights, so its output goes back to the input's dtype, as the
    unbatched kernel returns it.
    """

    _CONVOLUTIONS = frozenset({torch.conv1d, torch.conv2d, torch.conv3d, torch.conv_transpose1d,
                               torch.conv_transpose2d, torch.conv_transpose3d})
    _NORMS = frozenset({F.batch_norm, torch.batch_norm})

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in self._CONVOLUTIONS:
            args = tuple(_to_bf16(a) for a in args)
            kwargs = {k: _to_bf16(v) for k, v in kwargs.items()}
        out = func(*args, **kwargs)
        if func in self._NORMS and args and isinstance(out, Tensor) and out.dtype != args[0].dtype:
            out = out.to(args[0].dtype)
        return out


def _to_bf16(value: Any) -> Any:
    return value.to(torch.bfloat16) if isinstance(value, Tensor) and value.is_floating_point() else value


def _channels_last_codes(t: Tensor) -> Tensor:
    """Stacked codes (K, 1, C, H, W) stored as (1, H, W, K, C): vmap folds K into the channels,
    and only with K next to C in memory is the fold a channels-last view."""
    return t.permute(1, 3, 4, 0, 2).contiguous().permute(3, 0, 4, 1, 2)


def _same(t: Tensor) -> Tensor:
    return t


class _BatchedAdam:
    """K independent ``torch.optim.Adam`` (default betas and eps, no weight decay) on the rows of
    one (K, P) tensor that holds every job's weights.

    Adam is elementwise, so one update of the rows is K updates, provided the bias corrections
    follow each job's own step count: a job whose step is skipped (a rollback) falls behind the
    others. The update is ``torch.optim.Adam``'s single-tensor path op for op, so each job gets
    the floats a solo run gets; on one flat tensor it is a handful of kernels, not a handful
    per parameter.
    """

    betas = (0.9, 0.999)
    eps = 1e-8

    def __init__(self, flat: Tensor, lr: float) -> None:
        self.lr = lr
        self.exp_avg = torch.zeros_like(flat)
        self.exp_avg_sq = torch.zeros_like(flat)
        self.steps = torch.zeros(flat.shape[0], dtype=torch.long)

    @torch.no_grad()
    def step(self, flat: Tensor, grad: Tensor, skip: Tensor) -> None:
        """Step the rows of ``flat`` with ``grad``, but those where ``skip`` ((K,) bool) is true."""
        index = None if not bool(skip.any()) else (~skip).nonzero().flatten()
        if index is not None and index.numel() == 0:
            return
        rows = slice(None) if index is None else index
        self.steps[rows] += 1
        beta1, beta2 = self.betas
        # Python floats, as torch's Adam computes its bias corrections, rounded once to float32.
        counts = [float(s) for s in self.steps[rows].tolist()]
        neg_step = torch.tensor([[-(self.lr / (1 - beta1**s))] for s in counts], device=flat.device)
        bc2_sqrt = torch.tensor([[(1 - beta2**s) ** 0.5] for s in counts], device=flat.device)
        m, v, p = self.exp_avg, self.exp_avg_sq, flat
        if index is not None:  # gathered copies: rollbacks are rare, and so are the copies
            index = index.to(flat.device)
            grad, m, v, p = grad[index], m[index], v[index], p[index]
        m.lerp_(grad, 1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
        p.add_((m * neg_step).div_(denom))  # addcdiv's value * t1 / t2, rounded alike
        if index is not None:
            self.exp_avg.index_copy_(0, index, m)
            self.exp_avg_sq.index_copy_(0, index, v)
            flat.index_copy_(0, index, p)

    def keep(self, index: Tensor) -> None:
        self.exp_avg = self.exp_avg.index_select(0, index)
        self.exp_avg_sq = self.exp_avg_sq.index_select(0, index)
        self.steps = self.steps[index.cpu()]


class _Stack:
    """The K nets as one: their weights as the rows of one flat (K, P) tensor, their buffers
    stacked, their Adams, and the vmapped forward.

    Each parameter is a view into the flat tensor (a leaf of its own for autograd), so Adam's
    in-place update of the rows is the update of every parameter. With ``channels_last`` a conv
    weight's slice of a row is stored as (O, kh, kw, I): vmap folds K into the output channels,
    and that fold is then a view with the channels-last strides cuDNN and oneDNN prefer.
    """

    def __init__(self, nets: Sequence[nn.Module], *, lr: float, channels_last: bool, bf16: bool) -> None:
        self.code_layout = _channels_last_codes if channels_last else _same
        self.bf16 = bf16
        params, buffers = torch.func.stack_module_state(list(nets))
        # Per parameter: its columns of the flat tensor, and the order of its dims in memory.
        self.slots: dict[str, tuple[int, int, tuple[int, ...], torch.Size]] = {}
        offset = 0
        for name, param in params.items():
            order = (0, 1, 3, 4, 2) if channels_last and param.dim() == 5 else tuple(range(param.dim()))
            self.slots[name] = (offset, offset + param[0].numel(), order, param.shape)
            offset += param[0].numel()
        self.flat = torch.cat([self._columns(name, p.detach()) for name, p in params.items()], dim=1)
        self.params = self._views(self.flat)
        self.buffers = dict(buffers)
        self.keys = list(nets[0].state_dict())
        # Weights come from the stack: the base is only the architecture, kept off every device.
        self.base = copy.deepcopy(nets[0]).to("meta")
        # DIP's BatchNorm keeps no running statistics (nets._bn: batch statistics in fitting and
        # in evaluation alike), so replacing running-stat updates, which vmap cannot batch,
        # changes nothing it computes.
        torch.func.replace_all_batch_norm_modules_(self.base)
        self.base.train()
        self.adam = _BatchedAdam(self.flat, lr)

    def _columns(self, name: str, t: Tensor) -> Tensor:
        """A stacked (K, ...) parameter-shaped tensor as its (K, n) columns of the flat tensor."""
        return t.permute(self.slots[name][2]).reshape(t.shape[0], -1)

    def _view(self, flat: Tensor, name: str) -> Tensor:
        """The inverse of :meth:`_columns`: a view of ``flat`` shaped as the stacked parameter."""
        start, end, order, shape = self.slots[name]
        stored = flat[:, start:end].view(flat.shape[0], *(shape[d] for d in order[1:]))
        return stored.permute(sorted(range(len(order)), key=order.__getitem__))

    def _views(self, flat: Tensor) -> dict[str, Tensor]:
        return {name: self._view(flat, name).detach().requires_grad_() for name in self.slots}

    def forward(self, codes: Tensor) -> Tensor:
        """All K outputs, (K, 1, C, H, W), in float32 whatever the nets compute in."""
        for param in self.params.values():
            param.grad = None
        with _Bf16Convolutions() if self.bf16 else contextlib.nullcontext():
            return torch.vmap(self._call)(self.params, self.buffers, codes).float()

    def step(self, skip: Tensor) -> None:
        """Each job's Adam step on the gradients of the last backward, but those ``skip`` marks."""
        # Every parameter of these nets gets a gradient; a missing one is a zero.
        grads = [self._columns(name, p.grad if p.grad is not None else torch.zeros_like(p))
                 for name, p in self.params.items()]
        self.adam.step(self.flat, torch.cat(grads, dim=1), skip)

    def _call(self, params: dict[str, Tensor], buffers: dict[str, Tensor], code: Tensor) -> Tensor:
        return torch.func.functional_call(self.base, (params, buffers), (code,))

    @torch.no_grad()
    def forward_one(self, row: int, code: Tensor) -> Tensor:
        with _Bf16Convolutions() if self.bf16 else contextlib.nullcontext():
            params = {n: p[row] for n, p in self.params.items()}
            return self._call(params, {n: b[row] for n, b in self.buffers.items()}, code).float()

    def net_state_dict(self, row: int, *, clone: bool = True) -> dict[str, Tensor]:
        """Job ``row``'s ``net.state_dict()``; cloned unless asked, since a saved slice would save all K."""
        tensors = self.params | self.buffers
        return {k: tensors[k][row].detach().clone() if clone else tensors[k][row].detach() for k in self.keys}

    @torch.no_grad()
    def load_net_state_dict(self, row: int, state_dict: dict[str, Tensor]) -> None:
        tensors = self.params | self.buffers
        for key in self.keys:
            tensors[key][row].copy_(state_dict[key])

    def adam_state_dict(self, row: int, param_groups: list[dict[str, Any]]) -> dict[str, Any]:
        """Job ``row``'s optimiser state as its own ``torch.optim.Adam`` would hold it."""
        step = int(self.adam.steps[row])
        moments = {key: getattr(self.adam, key) for key in ("exp_avg", "exp_avg_sq")}
        state = {} if step == 0 else {  # torch's Adam has no state before its first step
            i: {"step": torch.tensor(float(step))} | {k: self._view(m, name)[row].clone() for k, m in moments.items()}
            for i, name in enumerate(self.slots)}
        return {"state": state, "param_groups": copy.deepcopy(param_groups)}

    @torch.no_grad()
    def load_adam_state_dict(self, row: int, state_dict: dict[str, Any]) -> None:
        state = state_dict["state"]
        for i, name in enumerate(self.slots):
            for key in ("exp_avg", "exp_avg_sq"):
                target = self._view(getattr(self.adam, key), name)[row]
                if i in state:
                    target.copy_(state[i][key])
                else:
                    target.zero_()
        self.adam.steps[row] = int(next(iter(state.values()))["step"]) if state else 0

    def keep(self, rows: Sequence[int]) -> None:
        """Restack with only these jobs, so a job that left costs no more compute."""
        index = torch.tensor(list(rows), device=self.flat.device)
        self.flat = self.flat.index_select(0, index)
        self.params = self._views(self.flat)
        self.buffers = {n: b.index_select(0, index) for n, b in self.buffers.items()}
        self.adam.keep(index)


class _JobNet:
    """Job ``run.row`` of the stack, seen as the net ``_Backtracker`` saves and restores."""

    def __init__(self, stack: _Stack, run: _Run) -> None:
        self.stack, self.run = stack, run

    def state_dict(self) -> dict[str, Tensor]:
        return self.stack.net_state_dict(self.run.row, clone=False)  # _Backtracker clones

    def load_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        self.stack.load_net_state_dict(self.run.row, state_dict)


class _JobAdam:
    """Job ``run.row``'s slice of the batched Adam, seen as the optimiser ``_Backtracker`` saves and restores."""

    def __init__(self, stack: _Stack, run: _Run, param_groups: list[dict[str, Any]]) -> None:
        self.stack, self.run, self.param_groups = stack, run, param_groups

    def state_dict(self) -> dict[str, Any]:
        return self.stack.adam_state_dict(self.run.row, self.param_groups)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stack.load_adam_state_dict(self.run.row, state_dict)


class _Run:
    """One job's side of the loop: what ``fit()`` keeps in its locals, and its steps, for one job."""

    def __init__(self, job: BatchJob, config: FitConfig, row: int) -> None:
        self.job, self.config, self.row = job, config, row
        self.h, self.w = _crop(job)
        self.device = job.z.device
        self.generator = job.generator
        if self.generator is None:
            self.generator = torch.Generator(device=self.device)
            self.generator.manual_seed(0)
        self.z = job.z
        self.early = (EarlyStopping(config.early_stop, noise_sigma=job.noise_sigma, pixels=self.h * self.w)
                      if config.early_stop is not None else None)
        self.backtracker = (_Backtracker(config.backtrack_db, config.backtrack_rule)
                            if config.backtrack_db is not None else None)
        self.best = _BestTracker()
        self.history: list[LogRecord] = []
        self.snapshots: list[Path] = []
        self.ema_sum: Tensor | None = None
        self.avg: Tensor | None = None
        self.raw: Tensor | None = None
        self.iteration, self.elapsed_before = 0, 0.0
        self.measured = job.physics.measured_fraction
        self.result: FitResult | None = None
        self.error: Exception | None = None
        self._saved_optimizer: dict[str, Any] | None = None
        if job.checkpoint is not None and job.checkpoint.resume and job.checkpoint.path.exists():
            self._resume(job.checkpoint.path)
        if config.channels_last:
            self.z = self.z.contiguous(memory_format=torch.channels_last)
        self.jitter = _Jitter(self.z, config.reg_noise_std, self.generator)
        self.state = FitState(total=config.iterations, iteration=self.iteration, start_iteration=self.iteration,
                              elapsed_s=self.elapsed_before, resumed_history=tuple(self.history),
                              resumed_snapshots=tuple(self.snapshots))
        self.state.best_iteration, self.state.best_psnr = self.best.iteration, self.best.psnr
        self.state.early_stop_iteration = self.early.detected_iteration if self.early is not None else None
        self.state.last = self.history[-1] if self.history else None

    def _resume(self, path: Path) -> None:
        saved = load_checkpoint(path, map_location=self.device)
        self.job.net.load_state_dict(saved["net"])  # before stacking; Adam's state goes in once stacked
        self._saved_optimizer = saved["optimizer"]
        self.z = saved["z"].to(self.device)
        restore_generator(self.generator, saved["generator"], saved_on=saved.get("device", "another device"),
                          path=path)
        self.ema_sum, self.avg, self.raw = saved["ema_sum"], saved["avg"], saved["raw"]
        self.history = [LogRecord.from_dict(r) for r in saved["history"]]
        self.best.load_state_dict(saved["best"])
        if self.early is not None and saved["early"] is not None:
            self.early.load_state_dict(saved["early"])
        if self.backtracker is not None and saved["backtracker"] is not None:
            self.backtracker.load_state_dict(saved["backtracker"])
        self.snapshots = [Path(p) for p in saved["snapshots"]]
        self.iteration, self.elapsed_before = saved["iteration"], saved["elapsed_s"]

    def start(self, stack: _Stack, param_groups: list[dict[str, Any]], clock: float) -> None:
        self.stack, self.clock = stack, clock
        self.net_view, self.adam_view = _JobNet(stack, self), _JobAdam(stack, self, param_groups)
        if self._saved_optimizer is not None:
            self.adam_view.load_state_dict(self._saved_optimizer)
            self._saved_optimizer = None
        for cb in self.job.callbacks:
            cb.on_fit_start(self.state)

    @property
    def done(self) -> bool:
        return (self.error is not None or self.iteration >= self.config.iterations
                or self.state.stop_reason is not None)

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.clock

    def selected(self, raw: Tensor, avg: Tensor) -> Tensor:
        return avg if self.config.output == "ema" else raw

    def next_code(self) -> Tensor:
        """Start the next iteration: the code with this job's own jitter, drawn as a solo run draws it."""
        self.iteration += 1
        return self.jitter()

    def rolls_back(self, loss: float) -> bool:
        """The backtracking check (taken before the step): True when the job went back to its
        last accepted state and must skip this step."""
        assert self.backtracker is not None
        psnr_degraded = _psnr_from_mse(loss, self.measured)
        if not self.backtracker.is_drop(psnr_degraded):
            # Duck-typed views of this job's slice: what _Backtracker saves is fit()'s format.
            self.backtracker.accept(psnr_degraded, self.net_view, self.adam_view,  # type: ignore[arg-type]
                                    self.ema_sum)
            return False
        self.ema_sum = self.backtracker.restore(self.net_view, self.adam_view)  # type: ignore[arg-type]
        if self.early is not None:
            self.early.forget_window()
        self.state.iteration = self.iteration
        for cb in self.job.callbacks:
            cb.on_step(self.state)
        return True

    def after_step(self, out: Tensor, loss: Tensor) -> None:
        """The rest of ``fit()``'s iteration, from the output average to the checkpoint."""
        config, iteration, state = self.config, self.iteration, self.state
        raw = out.detach()[..., :self.h, :self.w]
        self.ema_sum, avg = _average(config, self.ema_sum, raw, iteration)
        self.raw, self.avg = raw, avg
        early, best = self.early, self.best
        if early is not None:
            early.update(iteration, avg if early.config.signal == "ema" else raw, self.selected(raw, avg))

        state.iteration = iteration
        is_log_point = iteration % config.log_every == 0 or iteration == config.iterations
        reference = self.job.reference
        record = (_log(iteration, loss, raw, avg, reference, self.measured, early, self.elapsed())
                  if is_log_point else None)
        if record is not None:
            self.history.append(record)
            _take_log_point(record, raw, avg, self.selected(raw, avg), state=state, best=best, early=early,
                            measured=self.measured, cap=config.iterations)
            for cb in self.job.callbacks:
                cb.on_log(state, record)
        interval = config.snapshot_interval
        if self.job.snapshot is not None and interval and iteration % interval == 0:
            path = self.job.snapshot(iteration, self.selected(raw, avg))
            self.snapshots.append(path)
            for cb in self.job.callbacks:
                cb.on_snapshot(state, path)
        for cb in self.job.callbacks:
            cb.on_step(state)
        checkpoint = self.job.checkpoint
        if checkpoint is not None and iteration % checkpoint.every == 0 and state.stop_reason is None:
            self.save()

    def save(self) -> None:
        """Write this job's checkpoint in ``fit()``'s format: a solo ``fit()`` resumes it."""
        checkpoint = self.job.checkpoint
        if checkpoint is None:
            return
        save_checkpoint(checkpoint.path, {
            "iteration": self.iteration,
            "net": self.stack.net_state_dict(self.row),
            "optimizer": self.adam_view.state_dict(),
            "z": self.z,
            "generator": self.generator.get_state(),
            "ema_sum": self.ema_sum,
            "avg": self.avg,
            "raw": self.raw,
            "history": [r.to_dict() for r in self.history],
            "best": self.best.state_dict(),
            "early": self.early.state_dict() if self.early is not None else None,
            "backtracker": self.backtracker.state_dict() if self.backtracker is not None else None,
            "snapshots": [str(p) for p in self.snapshots],
            "elapsed_s": self.elapsed(),
            "device": self.device.type,
        })
        for cb in self.job.callbacks:
            cb.on_checkpoint(self.state, checkpoint.path)

    def finish(self) -> None:
        """End the job as ``fit()`` ends a run, while its slice is still in the stack."""
        config, state, early = self.config, self.state, self.early
        if self.raw is None or self.avg is None:  # stopped before the first step: the untrained output
            self.raw = self.avg = self.stack.forward_one(self.row, self.z)[..., :self.h, :self.w]
        elif self.raw._base is not None:
            # A view of the whole batch's output would keep all K outputs alive.
            same = self.avg is self.raw
            self.raw = self.raw.clone()
            self.avg = self.raw if same else self.avg
        if state.stop_reason == "canceled":
            self.save()
        last = self.selected(self.raw, self.avg)
        if config.output == "raw" and config.reg_noise_std > 0:
            last = self.stack.forward_one(self.row, self.z)[..., :self.h, :self.w]
        detected = early.detected_iteration if early is not None else None
        use_candidate = early is not None and early.returns_candidate
        output = early.candidate if use_candidate else last
        if config.channels_last:
            self.job.net.to(memory_format=torch.channels_last)
        self.job.net.load_state_dict(self.stack.net_state_dict(self.row, clone=False))
        state.elapsed_s = self.elapsed()
        state.early_stop_iteration = detected
        for cb in self.job.callbacks:
            cb.on_fit_end(state)
        best = self.best
        self.result = FitResult(
            output=output,
            last=last,
            best=best.output if best.output is not None else output,
            history=self.history,
            iterations=self.iteration,
            stop_reason=state.stop_reason or "completed",
            output_iteration=detected if detected is not None and output is not last else self.iteration,
            best_iteration=best.iteration,
            best_psnr=best.psnr,
            best_kind=best.kind,
            early_stop_iteration=detected,
            backtracks=self.backtracker.count if self.backtracker is not None else 0,
            elapsed_s=state.elapsed_s,
            snapshots=self.snapshots,
        )


def fit_batch(jobs: Sequence[BatchJob], *, config: FitConfig,
              isolate: tuple[type[Exception], ...] = ()) -> list[FitResult | Exception]:
    """Fit K jobs at once, each as :func:`~dip_engine.fit.fit` would fit it alone.

    One vmapped forward and backward serves all jobs each iteration; each job has its own
    Adam (its own step count, so a rollback skips only its step), jitter stream, output
    average, backtracking, early stopping, history, snapshots, callbacks and checkpoint. A job
    that stops (early stopping, a callback's ``request_stop``, a resumed checkpoint already at
    the cap) leaves the batch and the rest are restacked without it. A job's checkpoint is in
    ``fit()``'s format: a solo ``fit()`` can resume it, and so can a batch.

    Args:
        jobs: the runs, with nets of one architecture and inputs of one shape, on one device.
        config: the loop hyperparameters, shared; ``backtrack_rule`` must be ``"rollback"``.
        isolate: exception types that end only the job whose callbacks, snapshot writer or
            checkpoint raised them (a worker's lost lease: that job must write nothing more,
            and the others go on). The job leaves the batch unfinished and its entry in the
            result is the exception. Any other exception ends the whole batch.

    Returns:
        One :class:`~dip_engine.fit.FitResult` per job, in order, or the isolated exception
        that ended the job.

    Raises:
        ValueError: when the jobs cannot share a batch (shapes, devices, architectures), share
            a net, generator or checkpoint path, or the config asks for the reference
            backtracking rule; the message names the job and the value.
    """
    _check_batch(jobs, config)
    runs = [_Run(job, config, row) for row, job in enumerate(jobs)]
    param_groups = torch.optim.Adam(jobs[0].net.parameters(), lr=config.lr).state_dict()["param_groups"]
    bf16 = resolve_precision(config.precision, jobs[0].z.device) == "bf16"
    stack = _Stack([job.net for job in jobs], lr=config.lr, channels_last=config.channels_last, bf16=bf16)
    clock = time.monotonic()
    guard = _Guard(isolate)
    for run in runs:
        guard(run, run.start, stack, param_groups, clock)
    every = config.backtrack_every or config.log_every
    active = _retire(stack, runs, guard)
    while active:
        codes = stack.code_layout(torch.stack([run.next_code() for run in active]))
        out = stack.forward(codes)
        losses = [torch.mean((run.job.physics.A(out[i]) - run.job.y) ** 2) for i, run in enumerate(active)]
        # Job k's weights get the gradient of its own loss only: the sum's derivative is 1 for each.
        torch.stack(losses).sum().backward()
        skip = torch.zeros(len(active), dtype=torch.bool)
        due = [i for i, run in enumerate(active) if run.backtracker is not None and run.iteration % every == 0]
        if due:
            values = torch.stack([losses[i].detach() for i in due]).tolist()  # one host sync for all
            for i, value in zip(due, values):
                skip[i] = bool(guard(active[i], active[i].rolls_back, value))
        stack.step(skip)
        for i, run in enumerate(active):
            if not skip[i]:
                guard(run, run.after_step, out[i], losses[i])
        active = _retire(stack, active, guard)
    return [run.error if run.error is not None else run.result for run in runs]  # type: ignore[misc]


class _Guard:
    """Calls one job's step; an exception of an ``isolate`` type ends that job alone, unfinished."""

    def __init__(self, isolate: tuple[type[Exception], ...]) -> None:
        self.isolate = isolate

    def __call__(self, run: _Run, step: Any, *args: Any) -> Any:
        if run.error is not None:
            return None
        try:
            return step(*args)
        except self.isolate as error:
            run.error = error
            return None


def _retire(stack: _Stack, active: list[_Run], guard: _Guard) -> list[_Run]:
    """Finish the jobs that are done and restack the others without them."""
    staying = [run for run in active if not run.done]
    if len(staying) == len(active):
        return active
    for run in active:
        if run.done:
            guard(run, run.finish)
    if staying:
        stack.keep([run.row for run in staying])
        for row, run in enumerate(staying):
            run.row = row
    return staying


def _architecture(net: nn.Module) -> tuple[Any, ...]:
    # The repr carries what the parameters do not: kernel sizes, strides, padding and modes.
    return (type(net), repr(net), [(n, tuple(p.shape), p.dtype, p.device) for n, p in net.named_parameters()],
            [(n, tuple(b.shape), b.dtype) for n, b in net.named_buffers()])


def _crop(job: BatchJob) -> tuple[int, ...]:
    return tuple(job.crop if job.crop is not None else job.z.shape[-2:])


def _check_batch(jobs: Sequence[BatchJob], config: FitConfig) -> None:
    if not jobs:
        raise ValueError("fit_batch needs at least one job, got none")
    if config.backtrack_rule != "rollback":
        raise ValueError(f"fit_batch supports backtrack_rule='rollback' only, got {config.backtrack_rule!r}; "
                         "run the reference rule with fit(), one job at a time")
    first = jobs[0]
    for i, job in enumerate(jobs):
        try:
            _validate(job.net, job.z, job.y, job.physics, job.reference, job.crop)
        except ValueError as error:
            raise ValueError(f"job {i}: {error}") from None
        for what, mine, theirs in (("z shape", tuple(job.z.shape), tuple(first.z.shape)),
                                   ("y shape", tuple(job.y.shape), tuple(first.y.shape)),
                                   ("crop", _crop(job), _crop(first)),
                                   ("z dtype", job.z.dtype, first.z.dtype),
                                   ("z device", job.z.device, first.z.device),
                                   ("y device", job.y.device, first.z.device),
                                   ("net device", next(job.net.parameters()).device, first.z.device)):
            if mine != theirs:
                raise ValueError(f"job {i} has {what} {mine} but job 0 has {theirs}; "
                                 "a batch shares one shape and one device")
        if _architecture(job.net) != _architecture(first.net):
            raise ValueError(f"job {i}'s net is not job 0's architecture ({type(job.net).__name__} of "
                             f"{sum(p.numel() for p in job.net.parameters())} parameters against "
                             f"{type(first.net).__name__} of {sum(p.numel() for p in first.net.parameters())}, or "
                             "another layer setting); a batch stacks nets of one architecture")
    for what, values in (("net", [id(job.net) for job in jobs]),
                         ("generator", [id(job.generator) for job in jobs if job.generator is not None]),
                         ("checkpoint path", [Path(job.checkpoint.path).resolve() for job in jobs
                                              if job.checkpoint is not None])):
        if len(set(values)) != len(values):
            raise ValueError(f"two jobs share one {what}; give each job its own")
