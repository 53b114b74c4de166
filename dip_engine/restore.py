"""One restoration run from files to files: what the CLI and the worker call.

``restore`` loads the inputs, builds the task's measurement and operator,
fits the network and writes the named outputs (restoration, best iterate,
last iterate, curves, metrics.json, snapshots) into ``out_dir``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import __version__
from .callbacks import Callback
from .config import NetConfig, RunConfig
from .errors import InputError
from .batched import BatchJob, fit_batch
from .blend import classical_answers, hold_out
from .fit import CheckpointConfig, FitResult, fit
from .hardware import resolve_precision
from .io import pad_to_multiple, save_image
from .metrics import psnr, psnr_y, ssim
from .nets import build_from_config
from .noise import NOISE_FREE_SIGMA, estimate_noise_sigma
from .plots import plot_curves
from .presets import apply_overrides
from .problems import Measurement, OperatorData, build_measurement, get_problem, resolve
from .seeding import numpy_rng, stream_seed, torch_generator
from .spec import RestoreSpec
from .validation import validate_spec

CHECKPOINT_NAME = "checkpoint.pt"
# The super-resolution protocol scores luma with this border removed (the authors' evaluation script).
SR_SHAVE = 4
build_net = build_from_config


@dataclass(frozen=True)
class RestoreInputs:
    """Paths of a run's input files."""

    image: Path
    mask: Path | None = None
    kernel: Path | None = None
    reference: Path | None = None


@dataclass
class RestoreResult:
    """Summary of a finished (or canceled) run and the files it wrote."""

    stop_reason: str
    iterations: int
    best_iteration: int | None
    early_stop_iteration: int | None
    psnr_best: float | None
    psnr_output: float | None
    files: dict[str, Path]
    snapshots: list[Path] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def configure_determinism(enabled: bool) -> None:
    """Make seeded CUDA runs repeatable (or fast again).

    On: cuDNN picks deterministic convolution algorithms and no autotuning, and
    PyTorch's deterministic mode is on (the nets then use their atomic-free
    padding and upsampling). Off: cuDNN autotunes, since a run keeps one image size.
    """
    if enabled:
        # cuBLAS needs a fixed workspace to be deterministic; it reads this when it starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled
    torch.use_deterministic_algorithms(enabled, warn_only=True)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA device is available")
    return torch.device(name)


def make_input(config: NetConfig, height: int, width: int, *, generator: torch.Generator) -> Tensor:
    """The fixed code ``z``: uniform noise in [0, input_scale), or a 2-channel meshgrid."""
    if config.input == "meshgrid":
        ys, xs = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
        return torch.stack([xs, ys])[None]
    return torch.rand((1, config.input_channels, height, width), generator=generator) * config.input_scale


def _to_tensor(array: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None].to(device)


def _to_array(tensor: Tensor) -> np.ndarray:
    return tensor.detach()[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def _fingerprint(spec: RestoreSpec, run: RunConfig) -> str:
    # The device is left out: a checkpoint resumes on any device (see checkpoint.restore_generator).
    return json.dumps({"spec": asdict(replace(spec, device="any")), "run": asdict(run)}, sort_keys=True,
                      default=str)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class RestoreLimits:
    """What a service allows one run: the same for every run it starts."""

    checkpoint_every: int | None = None
    resume: bool = True
    max_pixels: int | None = None
    max_iterations: int = 20_000
    max_snapshots: int | None = None


@dataclass(frozen=True)
class RestoreRequest:
    """One run of :func:`restore_batch`: what :func:`restore` takes for it."""

    spec: RestoreSpec
    inputs: RestoreInputs
    out_dir: Path
    callbacks: Sequence[Callback] = ()
    overrides: dict[str, object] | None = None


@dataclass
class _Prepared:
    """A run with its inputs loaded and its net built, ready to fit."""

    spec: RestoreSpec
    run: RunConfig
    measurement: Measurement
    reference: Tensor | None
    device: torch.device
    out_dir: Path
    job: BatchJob
    setup: dict[str, Any]
    held: np.ndarray | None = None

    def batch_key(self) -> tuple[Any, ...] | None:
        """Runs with equal keys can share one batched model; ``None``: this one runs alone."""
        if self.run.fit.backtrack_rule != "rollback":
            return None
        return (repr(self.run.net), repr(self.run.fit), str(self.device), tuple(self.job.z.shape),
                tuple(self.job.y.shape), self.job.crop, type(self.job.physics).__name__)


def restore(
    spec: RestoreSpec,
    inputs: RestoreInputs,
    out_dir: Path,
    *,
    callbacks: Sequence[Callback] = (),
    checkpoint_every: int | None = None,
    resume: bool = True,
    max_pixels: int | None = None,
    max_iterations: int = 20_000,
    max_snapshots: int | None = None,
    overrides: dict[str, object] | None = None,
) -> RestoreResult:
    """Run Deep Image Prior on one input and write its outputs to ``out_dir``.

    Args:
        spec: what to do.
        inputs: the image and, when needed, mask and reference files.
        out_dir: where outputs go (created).
        callbacks: progress/cancellation hooks; ``state.request_stop("canceled")`` ends
            the run early and still writes its outputs.
        checkpoint_every: save a resumable checkpoint every N iterations (``None``: never).
        resume: continue from ``out_dir/checkpoint.pt`` when it exists and matches this request.
        max_pixels: refuse larger images.
        max_iterations: refuse a larger ``spec.iterations``.
        max_snapshots: keep at most this many snapshots (default: the preset's cap).
        overrides: any preset field by dotted path (``{"fit.lr": 0.005}``), applied last.

    Raises:
        dip_engine.errors.InputError: unreadable inputs or inconsistent options.
    """
    limits = RestoreLimits(checkpoint_every=checkpoint_every, resume=resume, max_pixels=max_pixels,
                           max_iterations=max_iterations, max_snapshots=max_snapshots)
    prepared = _prepare(RestoreRequest(spec, inputs, Path(out_dir), callbacks, overrides), limits)
    started = time.monotonic()
    fitted = fit(**_fit_arguments(prepared.job), config=prepared.run.fit)
    return _finish(prepared, fitted, time.monotonic() - started)


def restore_batch(
    requests: Sequence[RestoreRequest],
    limits: RestoreLimits = RestoreLimits(),
    *,
    isolate: tuple[type[Exception], ...] = (),
) -> list[RestoreResult | Exception]:
    """Run several restorations, training those that can share a model as one batch.

    Runs whose nets, loop settings, shapes and device agree are fitted together by
    :func:`~dip_engine.batched.fit_batch` (one forward and backward for all of them); the
    others one by one with :func:`~dip_engine.fit.fit`. Each writes the same outputs as
    :func:`restore` would.

    Args:
        requests: the runs.
        limits: what the service allows each run.
        isolate: exception types that end one run alone (see :func:`~dip_engine.batched.fit_batch`).
            :class:`~dip_engine.errors.InputError` always does: a bad input fails its own run.

    Returns:
        One entry per request, in order: its result, or the exception that ended it (then
        nothing more was written for it).
    """
    outcomes: list[RestoreResult | Exception | None] = [None] * len(requests)
    groups: dict[Any, list[tuple[int, _Prepared]]] = {}
    for i, request in enumerate(requests):
        try:
            prepared = _prepare(request, limits)
        except (InputError, *isolate) as error:
            outcomes[i] = error
            continue
        key = prepared.batch_key()
        groups.setdefault(key if key is not None else ("alone", i), []).append((i, prepared))
    for members in groups.values():
        started = time.monotonic()
        if len(members) == 1:
            try:
                fitted: list[FitResult | Exception] = [fit(**_fit_arguments(members[0][1].job),
                                                           config=members[0][1].run.fit)]
            except isolate as error:
                fitted = [error]
        else:
            fitted = fit_batch([prepared.job for _, prepared in members], config=members[0][1].run.fit,
                               isolate=isolate)
        wall_s = time.monotonic() - started
        for (i, prepared), outcome in zip(members, fitted):
            if isinstance(outcome, Exception):
                outcomes[i] = outcome
                continue
            prepared.setup["batch_size"] = len(members)
            outcomes[i] = _finish(prepared, outcome, wall_s)
    return [outcome for outcome in outcomes if outcome is not None]


def _fit_arguments(job: BatchJob) -> dict[str, Any]:
    # A BatchJob's fields are fit()'s arguments besides the config, by name.
    return {f.name: getattr(job, f.name) for f in fields(job)}


def _prepare(request: RestoreRequest, limits: RestoreLimits) -> _Prepared:
    spec = request.spec
    validate_spec(spec, max_iterations=limits.max_iterations)
    inputs = request.inputs
    measurement = build_measurement(
        spec, inputs.image, mask=inputs.mask, kernel=inputs.kernel, reference=inputs.reference,
        max_pixels=limits.max_pixels,
    )
    height, width = measurement.output_size
    run = resolve(spec, scattered=measurement.scattered_mask or spec.drop_fraction is not None,
                  pixels=height * width)
    if limits.max_snapshots is not None:
        run = replace(run, fit=replace(run.fit, max_snapshots=limits.max_snapshots))
    if request.overrides:
        try:
            run = apply_overrides(run, request.overrides)
        except (ValueError, TypeError) as exc:
            raise InputError("invalid_parameter", str(exc)) from None
    device = pick_device(spec.device)
    if device.type == "cuda":
        configure_determinism(spec.deterministic)
    out_dir = Path(request.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    checkpoint = None
    if limits.checkpoint_every:
        checkpoint = CheckpointConfig(out_dir / CHECKPOINT_NAME, every=limits.checkpoint_every, resume=limits.resume)
        marker = out_dir / "checkpoint.json"
        fingerprint = _fingerprint(spec, run)
        if checkpoint.path.exists() and (not limits.resume or not marker.exists() or marker.read_text() != fingerprint):
            checkpoint.path.unlink()
        marker.write_text(fingerprint)

    reference = _to_tensor(measurement.reference, device) if measurement.reference is not None else None
    noise = _noise_level(spec, measurement)
    held = _held_out(spec, run, measurement, noise_sigma=noise[0])
    fitted_on = measurement if held is None else measurement.without(held)
    job, setup = _build(spec, run, fitted_on, reference, device, out_dir, request.callbacks, checkpoint, noise)
    return _Prepared(spec, run, measurement, reference, device, out_dir, job, setup, held)


def _noise_level(spec: RestoreSpec, measurement: Measurement) -> tuple[float, str]:
    """The user's noise level when given, else the task's assumption, else the wavelet estimate
    (0-1 scale), and which it is: what the early-stopping gate waits for."""
    assumed = get_problem(spec.task).assumed_noise_sigma
    if spec.noise_sigma is not None:
        return spec.noise_sigma / 255.0, "given"
    if assumed is not None:
        return assumed, "assumed"
    return estimate_noise_sigma(measurement.y, known=measurement.mask), "estimated"


def _keeps_measured(spec: RestoreSpec, measurement: Measurement, noise_sigma: float) -> bool:
    """Whether the outputs take the measured values: the task's measurement is the image itself on
    the pixels it covers (inpainting's known pixels), and it is noise-free."""
    return (get_problem(spec.task).exact_where_measured and measurement.mask is not None
            and noise_sigma <= NOISE_FREE_SIGMA)


def _held_out(spec: RestoreSpec, run: RunConfig, measurement: Measurement, *, noise_sigma: float) -> np.ndarray | None:
    """The measured pixels kept from the net to weigh its answer against the task's classical one.
    They validate where their values are independent of both answers: exact (inpainting's known
    pixels, kept as measured) or with noise of their own (denoising's white noise). Noisy known
    pixels of inpainting are not held out: the answer would not keep them."""
    problem = get_problem(spec.task)
    if not (run.holdout and problem.classical_answer):
        return None
    if problem.exact_where_measured and not _keeps_measured(spec, measurement, noise_sigma):
        return None
    held = hold_out(measurement.known, run.holdout, numpy_rng(spec.seed, "holdout"))
    return held if held.any() else None


def _finish(prepared: _Prepared, fitted: FitResult, wall_s: float) -> RestoreResult:
    """Write the outputs of a fitted run, and drop its checkpoint unless it was canceled."""
    prepared.setup["wall_s"] = wall_s
    fitted = _answer(prepared, fitted)
    result = _write_outputs(prepared.spec, prepared.run, prepared.measurement, prepared.reference, fitted,
                            prepared.setup, prepared.out_dir, prepared.device)
    checkpoint = prepared.job.checkpoint
    if checkpoint is not None and result.stop_reason != "canceled":
        checkpoint.path.unlink(missing_ok=True)
        (prepared.out_dir / "checkpoint.json").unlink(missing_ok=True)
    return result


def _answer(prepared: _Prepared, fitted: FitResult) -> FitResult:
    """The outputs as written. A run that held pixels out answers with its blend of the net and
    the classical answer; where the measurement is exact (inpainting's known pixels, no noise),
    the outputs take the measured values: the net only approximates them, and they are the truth."""
    measurement = prepared.measurement
    keep = _keeps_measured(prepared.spec, measurement, prepared.setup["noise_sigma_estimate"])
    prepared.setup["kept_measured"] = keep
    blend = _blend(prepared) if prepared.held is not None else None
    if blend is None and not keep:
        return fitted
    known = torch.from_numpy(np.ascontiguousarray(measurement.known))[None, None].to(prepared.device)
    y = _to_tensor(measurement.y, prepared.device)

    def answer(output: Tensor) -> Tensor:
        if blend is not None:
            output = _to_tensor(blend(_to_array(output)), prepared.device).to(output.dtype)
        return torch.where(known, y, output) if keep else output

    output = answer(fitted.output)  # first: its blend is the one setup reports
    best = answer(fitted.best)
    # The best iterate is scored as it is written, so the detection gap compares like with like.
    best_psnr = fitted.best_psnr if prepared.reference is None else _psnr(best, prepared.reference)
    return replace(fitted, output=output, best=best, last=answer(fitted.last), best_psnr=best_psnr)


def _blend(prepared: _Prepared) -> Callable[[np.ndarray], np.ndarray]:
    """The net's output -> its blend with the classical answer, the weight chosen on the held-out
    pixels for each output (``dip_engine.blend``); the output's choice goes into ``setup``."""
    measurement, held = prepared.measurement, prepared.held
    assert held is not None
    classical = get_problem(prepared.spec.task).classical_answer
    assert classical is not None
    answers = classical_answers(classical, measurement.y, measurement.known, held,
                                prepared.setup["noise_sigma_estimate"], numpy_rng(prepared.spec.seed, "divergence"))

    def blend(output: np.ndarray) -> np.ndarray:
        chosen = answers.weigh(output, measurement.y, held)
        prepared.setup.setdefault("blend", {"holdout": prepared.run.holdout} | asdict(chosen))
        return answers.blend(output, chosen)

    return blend


def _build(
    spec: RestoreSpec,
    run: RunConfig,
    measurement: Measurement,
    reference: Tensor | None,
    device: torch.device,
    out_dir: Path,
    callbacks: Sequence[Callback],
    checkpoint: CheckpointConfig | None,
    noise: tuple[float, str],
) -> tuple[BatchJob, dict[str, Any]]:
    height, width = measurement.output_size
    factor = height // measurement.y.shape[0]
    multiple = run.net.size_multiple // math.gcd(run.net.size_multiple, factor)
    # BatchNorm needs more than one value per channel: keep the deepest level at least 2x2.
    minimum = -(-2 * run.net.size_multiple // factor)
    y = pad_to_multiple(measurement.y, multiple, minimum=minimum)
    mask = None
    if measurement.mask is not None:
        mask = torch.from_numpy(pad_to_multiple(measurement.mask, multiple, minimum=minimum).copy())
    kernel = None if measurement.kernel is None else torch.from_numpy(measurement.kernel)
    physics = get_problem(spec.task).operator(
        spec, OperatorData(downsample_kernel=run.downsample_kernel, mask=mask, kernel=kernel)).to(device)

    # Each random use has a stream of its own (dip_engine.seeding): none of them shares
    # numbers with the synthetic degradation the network is asked to undo.
    z = make_input(run.net, y.shape[0] * factor, y.shape[1] * factor,
                   generator=torch_generator(spec.seed, "input")).to(device)
    # Initialise the weights without touching the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(spec.seed, "weights"))
        net = build_net(run.net, out_channels=measurement.channels).to(device)
    jitter = torch_generator(spec.seed, "jitter", device=device)

    def snapshot(iteration: int, output: Tensor) -> Path:
        return save_image(out_dir / "snapshots" / f"iter_{iteration:05d}.png", _to_array(output), alpha=measurement.alpha)

    noise_sigma, source = noise
    job = BatchJob(net=net, z=z, y=_to_tensor(y, device), physics=physics, reference=reference,
                   crop=(height, width), callbacks=callbacks, checkpoint=checkpoint, snapshot=snapshot,
                   generator=jitter, noise_sigma=noise_sigma)
    setup = {
        "noise_sigma_estimate": noise_sigma,
        "noise_sigma_source": source,
        "device": str(device),
        "precision": resolve_precision(run.fit.precision, device),
        "parameters": sum(p.numel() for p in net.parameters()),
        "batch_size": 1,
        "padded_measurement": list(y.shape[:2]),
    }
    return job, setup


def _psnr(x: Tensor, reference: Tensor | None) -> float | None:
    return None if reference is None else float(psnr(x, reference))


def _write_outputs(
    spec: RestoreSpec,
    run: RunConfig,
    measurement: Measurement,
    reference: Tensor | None,
    fitted: FitResult,
    setup: dict[str, Any],
    out_dir: Path,
    device: torch.device,
) -> RestoreResult:
    alpha = measurement.alpha
    problem = get_problem(spec.task)
    files = {
        "result": save_image(out_dir / problem.result_name(spec), _to_array(fitted.output), alpha=alpha),
        "best": save_image(out_dir / "best.png", _to_array(fitted.best), alpha=alpha),
        "last": save_image(out_dir / "last.png", _to_array(fitted.last), alpha=alpha),
    }
    if measurement.reference is not None and measurement.degraded is not None:
        files["degraded"] = save_image(out_dir / "degraded.png", measurement.degraded)
    files["curves"] = plot_curves(
        fitted.history, out_dir / problem.curves_name(spec),
        title=f"DIP {spec.task}" + (f" x{spec.scale}" if spec.task == "superres" else ""),
        best_iteration=fitted.best_iteration, early_stop_iteration=fitted.early_stop_iteration,
    )
    psnr_output = _psnr(fitted.output, reference)
    psnr_last = _psnr(fitted.last, reference)
    # The classical answer the result is compared with: the input itself, or bicubic for SR.
    baseline = None if measurement.baseline is None else _to_tensor(measurement.baseline, device)
    psnr_input = _psnr(baseline, reference) if baseline is not None else None
    psnr_y_output = psnr_y_input = None
    if reference is not None and spec.task == "superres":
        psnr_y_output = float(psnr_y(fitted.output, reference, shave=SR_SHAVE))
        psnr_y_input = None if baseline is None else float(psnr_y(baseline, reference, shave=SR_SHAVE))
    run_s = fitted.elapsed_s
    summary = {
        "task": spec.task,
        "stop_reason": fitted.stop_reason,
        "iterations": fitted.iterations,
        "iteration_cap": run.fit.iterations,
        "output_iteration": fitted.output_iteration,
        "best_iteration": fitted.best_iteration,
        "best_kind": fitted.best_kind,
        "early_stop_iteration": fitted.early_stop_iteration,
        "psnr_input": psnr_input,
        "psnr_best": fitted.best_psnr,
        "psnr_output": psnr_output,
        "psnr_last": psnr_last,
        "psnr_y_input": psnr_y_input,
        "psnr_y_output": psnr_y_output,
        "ssim_output": None if reference is None else float(ssim(fitted.output, reference)),
        "detection_gap_db": None if fitted.best_psnr is None or psnr_output is None else fitted.best_psnr - psnr_output,
        "backtracks": fitted.backtracks,
        "noise_sigma_estimate": setup["noise_sigma_estimate"],
        "noise_sigma_source": setup["noise_sigma_source"],
        "elapsed_s": round(run_s, 3),
        "iterations_per_second": round(fitted.iterations / run_s, 3) if run_s > 0 else None,
    }
    metrics = {
        "summary": summary,
        "spec": asdict(spec),
        "config": asdict(run),
        "output_size": list(measurement.output_size),
        "files": {k: v.name for k, v in files.items()} | {"metrics": "metrics.json"},
        "snapshots": [p.name for p in fitted.snapshots],
        "setup": setup,
        "versions": {"dip_engine": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "history": [r.to_dict() for r in fitted.history],
    }
    files["metrics"] = out_dir / "metrics.json"
    _write_json(files["metrics"], metrics)
    return RestoreResult(
        stop_reason=fitted.stop_reason,
        iterations=fitted.iterations,
        best_iteration=fitted.best_iteration,
        early_stop_iteration=fitted.early_stop_iteration,
        psnr_best=fitted.best_psnr,
        psnr_output=psnr_output,
        files=files,
        snapshots=fitted.snapshots,
        metrics=metrics,
    )
