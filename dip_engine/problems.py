"""Task name -> everything that differs between tasks (torch-free to import).

``PROBLEMS`` holds one :class:`Problem` per task: its forward operator, how
its measurement is built from the uploaded files, the request fields and
extra uploads only it accepts, its own checks, its output file name, and its
presets. Adding a task is one entry here, its name in ``spec.TaskName`` and
one line in the tests' operator list; the API, the CLI and the worker read
the table. The operators import torch only when built, so the API can
validate requests with this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from . import degradations
from .config import EarlyStopConfig, FitConfig, NetConfig, RunConfig
from .errors import InputError
from .io import LoadedImage, load_image, load_kernel, load_mask, resize_image
from .presets import (DENOISE_CAP, DENOISE_STOP, FAST_NET, FAST_STOP, HOLES_NET, HOURGLASS, NOISE_FREE_CAP, PAPER_STOP,
                      SNAIL_NET, SizeCap, fast_fit, paper_fit)
from .seeding import numpy_rng
from .spec import PresetName, RestoreSpec, TaskName

if TYPE_CHECKING:
    import torch

    from .physics import Physics

__all__ = ["Measurement", "OperatorData", "PROBLEMS", "PresetContext", "Problem", "TaskFiles", "build_measurement",
           "get_problem", "make_physics"]


@dataclass
class Measurement:
    """A task's data, as (H, W, C) float32 arrays in [0, 1].

    Attributes:
        y: what the network must explain through ``A``.
        output_size: (height, width) of the restoration.
        mask: (H, W) bool, True = known (inpainting only).
        kernel: (h, w) float32 blur kernel summing to 1 (deblurring only).
        reference: clean image at output size, when known.
        alpha: alpha channel at output size, passed through untouched.
        degraded: the degraded input as a user would look at it (for degraded.png).
        baseline: the classical answer at output size that the result is compared
            with (``psnr_input``): the degraded input itself, or its bicubic
            upsampling for super-resolution.
    """

    y: np.ndarray
    output_size: tuple[int, int]
    mask: np.ndarray | None = None
    kernel: np.ndarray | None = None
    reference: np.ndarray | None = None
    alpha: np.ndarray | None = None
    degraded: np.ndarray | None = None
    baseline: np.ndarray | None = None

    @property
    def channels(self) -> int:
        return self.y.shape[-1]

    @property
    def known(self) -> np.ndarray:
        """(H, W) bool: the measured pixels (all of them but inpainting's holes)."""
        return self.mask if self.mask is not None else np.ones(self.y.shape[:2], dtype=bool)

    def without(self, held: np.ndarray) -> Measurement:
        """The same measurement with the ``held`` pixels (H, W bool) made unknown: what the net fits
        when they are kept for validation."""
        known = self.known & ~held
        return replace(self, y=(self.y * known[..., None]).astype(self.y.dtype), mask=known)

    @property
    def scattered_mask(self) -> bool:
        """True for random-pixel masks (most holes touch a known pixel), False for text/blobs."""
        if self.mask is None:
            return False
        holes = ~self.mask
        if not holes.any():
            return False
        padded = np.pad(self.mask, 1, mode="edge")
        neighbour_known = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
        return float(neighbour_known[holes].mean()) >= 0.8


@dataclass(frozen=True)
class TaskFiles:
    """The optional uploads besides the image."""

    mask: Path | None = None
    kernel: Path | None = None

    def present(self) -> frozenset[str]:
        return frozenset(name for name in ("mask", "kernel") if getattr(self, name) is not None)


@dataclass(frozen=True)
class OperatorData:
    """What an operator is built from, already padded like ``y`` and as tensors."""

    downsample_kernel: str = "lanczos2"
    mask: torch.Tensor | None = None
    kernel: torch.Tensor | None = None


@dataclass(frozen=True)
class PresetContext:
    """What a preset may look at besides the request, once the inputs are read.

    Attributes:
        scattered: the inpainting mask is random missing pixels (not text or holes).
        pixels: the output's pixel count; ``None`` before the image is read.
    """

    scattered: bool = False
    pixels: int | None = None


PresetFn = Callable[[RestoreSpec, PresetContext], RunConfig]
"""(request, what the inputs showed) -> configuration."""


def _no_check(spec: RestoreSpec, uploads: frozenset[str]) -> None:
    pass


def _same_size(spec: RestoreSpec, width: int, height: int) -> tuple[int, int]:
    return width, height


@dataclass(frozen=True)
class Problem:
    """One restoration task.

    Attributes:
        name: the task name.
        description: one line for help texts.
        output: the result's file name; ``{scale}`` is filled in.
        operator: builds the forward operator ``A`` (imports torch).
        measure: builds the measurement from the decoded image and the uploads.
        presets: preset name -> configuration.
        fields: request fields that only this task accepts.
        uploads: extra files it accepts besides the image (``mask``, ``kernel``).
        check: refuses inconsistent requests, given the names of the uploads.
        output_size: (width, height) of the result for an input of that size.
        exact_where_measured: the measurement is the image itself on the pixels it covers
            (inpainting's known pixels): a noise-free run's outputs keep those pixels as measured.
        assumed_noise_sigma: the measurement's noise level (0-1 scale) when the request gives
            none; ``None``: estimate it from the measurement.
        classical_answer: ``(y, known, noise_sigma) -> image``, the classical answer made from the
            ``known`` pixels of ``y`` only (inpainting: biharmonic; denoising: NL-means), which a run
            with ``RunConfig.holdout`` weighs the net's answer against (``dip_engine.blend``);
            ``None``: the task has none.
    """

    name: TaskName
    description: str
    output: str
    operator: Callable[[RestoreSpec, OperatorData], Physics]
    measure: Callable[[RestoreSpec, LoadedImage, TaskFiles], Measurement]
    presets: Mapping[str, PresetFn]
    fields: frozenset[str] = frozenset()
    uploads: frozenset[str] = frozenset()
    check: Callable[[RestoreSpec, frozenset[str]], None] = _no_check
    output_size: Callable[[RestoreSpec, int, int], tuple[int, int]] = _same_size
    exact_where_measured: bool = False
    assumed_noise_sigma: float | None = None
    classical_answer: Callable[[np.ndarray, np.ndarray, float], np.ndarray] | None = None

    def check_uploads(self, spec: RestoreSpec, uploads: frozenset[str]) -> None:
        """Refuse extra files this task does not take, then the task's own checks."""
        for name in sorted(uploads - self.uploads):
            owners = ", ".join(p.name for p in PROBLEMS.values() if name in p.uploads)
            raise InputError(f"{name}_not_allowed", f"a {name} is not used by {spec.task}; it is for {owners}")
        self.check(spec, uploads)

    def result_name(self, spec: RestoreSpec) -> str:
        return self.output.format(scale=spec.scale)

    def curves_name(self, spec: RestoreSpec) -> str:
        return self.result_name(spec).replace(".png", "_curves.png")


# -- denoising --------------------------------------------------------------------------


def _denoise_operator(spec: RestoreSpec, data: OperatorData) -> Physics:
    from .physics import Denoising, Inpainting

    # A mask here marks the pixels held out of the fit (RunConfig.holdout): the net fits the others.
    return Denoising() if data.mask is None else Inpainting(data.mask)


def _denoise_measure(spec: RestoreSpec, loaded: LoadedImage, files: TaskFiles) -> Measurement:
    pixels = loaded.pixels
    y, reference = pixels, None
    if spec.add_noise_sigma:
        y, reference = degradations.add_gaussian_noise(pixels, spec.add_noise_sigma, rng=numpy_rng(spec.seed, "noise")), pixels
    return Measurement(y=y, output_size=pixels.shape[:2], reference=reference, alpha=loaded.alpha, degraded=y, baseline=y)


def _nl_means(y: np.ndarray, known: np.ndarray, noise_sigma: float) -> np.ndarray:
    """Non-local means at the textbook setting for the noise level (h = 0.8 sigma, 5x5 patches,
    13x13 search, slow mode: the baseline of docs/benchmarks.md). Pixels not ``known`` are first
    filled with the mean of their known 3x3 neighbours, so that the answer there owes nothing to
    their measured values (what scoring on held-out pixels needs)."""
    from scipy.ndimage import uniform_filter
    from skimage.restoration import denoise_nl_means

    image = y.astype(np.float64)
    if not known.all():
        weight = uniform_filter(known.astype(np.float64), size=3, mode="mirror")[..., None]
        local = uniform_filter(image * known[..., None], size=(3, 3, 1), mode="mirror") / np.maximum(weight, 1e-12)
        image = np.where(known[..., None], image, local)
    sigma = max(noise_sigma, 1e-6)
    colour = image.shape[-1] == 3
    out = denoise_nl_means(image if colour else image[..., 0], h=0.8 * sigma, sigma=sigma, fast_mode=False,
                           patch_size=5, patch_distance=6, channel_axis=-1 if colour else None)
    return np.clip(out.reshape(y.shape), 0.0, 1.0).astype(np.float32)


def _denoising_loop(*, fast_net: NetConfig, full_net: NetConfig, iterations: int, fast_iterations: int | SizeCap,
                    fast_ema: float = 0.995, fast_stop: EarlyStopConfig = FAST_STOP,
                    fast_holdout: float = 0.0) -> Mapping[str, PresetFn]:
    """The presets of the denoising notebook's loop (jitter 1/30, averaging, backtracking) on
    given nets: denoising, JPEG artefacts and deblurring differ only in these arguments. The fast
    preset's cap is fixed, or grows with the image."""
    def fast_cap(context: PresetContext) -> int:
        return fast_iterations if isinstance(fast_iterations, int) else fast_iterations.at(context.pixels)

    return {
        "fast": lambda spec, context: RunConfig(fast_net, fast_fit(iterations=fast_cap(context), reg_noise_std=1 / 30,
                                                                   ema=fast_ema, early_stop=fast_stop),
                                                holdout=fast_holdout),
        "quality": lambda spec, _: RunConfig(full_net, FitConfig(iterations=iterations, reg_noise_std=1 / 30,
                                                                 early_stop=PAPER_STOP)),
        "paper": lambda spec, _: RunConfig(full_net, paper_fit(iterations=iterations, reg_noise_std=1 / 30,
                                                               averaged=True, backtracking=True)),
    }


# A longer average (0.995) measured +0.09 dB at the early-stop iterate on 96 px crops (docs/benchmarks.md).
# 3% of the pixels are held out of the fit to weigh the net's answer against NL-means (dip_engine.blend):
# +0.78 dB over NL-means on the nine 256 px crops, 9/9, against +0.42 and 8/9 for the net alone
# (docs/benchmarks.md, "Denoising: the net weighed against NL-means").
DENOISE_HOLDOUT = 0.03
_DENOISE_PRESETS = _denoising_loop(fast_net=FAST_NET, full_net=HOURGLASS, iterations=3000, fast_iterations=DENOISE_CAP,
                                   fast_stop=DENOISE_STOP, fast_holdout=DENOISE_HOLDOUT)


# -- super-resolution -----------------------------------------------------------------


def _superres_operator(spec: RestoreSpec, data: OperatorData) -> Physics:
    from .physics import Downsampling

    return Downsampling(spec.scale, kernel=data.downsample_kernel)  # type: ignore[arg-type]


def _superres_size(spec: RestoreSpec, width: int, height: int) -> tuple[int, int]:
    return (width, height) if spec.from_hr else (width * spec.scale, height * spec.scale)


def _superres_measure(spec: RestoreSpec, loaded: LoadedImage, files: TaskFiles) -> Measurement:
    pixels = loaded.pixels
    height, width = pixels.shape[:2]
    if spec.from_hr:
        if height % spec.scale or width % spec.scale:
            raise InputError("invalid_parameter", f"from_hr needs a size divisible by {spec.scale}, got {width}x{height}")
        # The paper's protocol: the low-resolution input is a Lanczos resize of the HR image.
        y = np.clip(resize_image(pixels, size=(width // spec.scale, height // spec.scale), method="lanczos"), 0, 1)
        return Measurement(y=y, output_size=(height, width), reference=pixels, alpha=loaded.alpha, degraded=y,
                           baseline=resize_image(y, size=(width, height), method="bicubic"))
    size = (height * spec.scale, width * spec.scale)
    alpha = None
    if loaded.alpha is not None:
        alpha = np.clip(resize_image(loaded.alpha[..., None], size=(size[1], size[0]), method="bicubic")[..., 0], 0, 1)
    return Measurement(y=pixels, output_size=size, alpha=alpha, degraded=pixels,
                       baseline=resize_image(pixels, size=(size[1], size[0]), method="bicubic"))


def _superres_paper(spec: RestoreSpec, _: PresetContext) -> RunConfig:
    iterations, noise = (4000, 0.05) if spec.scale >= 8 else (2000, 0.03)
    return RunConfig(HOURGLASS, paper_fit(iterations=iterations, reg_noise_std=noise))


def _superres_quality(spec: RestoreSpec, _: PresetContext) -> RunConfig:
    iterations, noise = (4000, 0.05) if spec.scale >= 8 else (2000, 0.03)
    return RunConfig(HOURGLASS, FitConfig(iterations=iterations, reg_noise_std=noise, early_stop=PAPER_STOP))


def _noise_free_fast(spec: RestoreSpec, context: PresetContext) -> RunConfig:
    """The fast preset of the measurements taken as exact (a clean low-resolution image, scattered
    known pixels): run to a cap that grows with the image, Adam at 0.005.

    lr 0.005: on 256 px Set14 crops the 5x32 net's averaged output rose faster than at 0.01 (face
    +0.12, foreman +0.11, lenna +0.03 dB; coastguard -0.04), and 0.02 was lower still; for scattered
    pixels 0.005 beat 0.01 by 0.08 dB on 11 images at 256 px and 0.20 at 96 px (docs/benchmarks.md,
    "Super-resolution" and "Inpainting")."""
    return RunConfig(FAST_NET, fast_fit(iterations=NOISE_FREE_CAP.at(context.pixels), reg_noise_std=0.03, lr=0.005))


_SUPERRES_PRESETS: Mapping[str, PresetFn] = {
    "fast": _noise_free_fast,
    "quality": _superres_quality,
    "paper": _superres_paper,
}


# -- inpainting ---------------------------------------------------------------------------


def _inpaint_operator(spec: RestoreSpec, data: OperatorData) -> Physics:
    from .physics import Inpainting

    if data.mask is None:
        raise ValueError("inpainting needs a mask")
    return Inpainting(data.mask)


def _inpaint_check(spec: RestoreSpec, uploads: frozenset[str]) -> None:
    if "mask" in uploads and spec.drop_fraction is not None:
        raise InputError("invalid_parameter",
                         f"give a mask or a drop_fraction, not both (drop_fraction={spec.drop_fraction!r})")
    if "mask" not in uploads and spec.drop_fraction is None:
        raise InputError("mask_required", "inpaint needs a mask or a drop_fraction")


def _inpaint_measure(spec: RestoreSpec, loaded: LoadedImage, files: TaskFiles) -> Measurement:
    pixels = loaded.pixels
    height, width = pixels.shape[:2]
    reference = None
    if files.mask is not None:
        known = load_mask(files.mask, size=(width, height))
    else:
        known = degradations.bernoulli_mask(height, width, spec.drop_fraction, rng=numpy_rng(spec.seed, "mask"))  # type: ignore[arg-type]
        reference = pixels
    y = (pixels * known[..., None]).astype(np.float32)
    return Measurement(y=y, output_size=(height, width), mask=known, reference=reference, alpha=loaded.alpha,
                       degraded=y, baseline=y)


def _biharmonic_fill(y: np.ndarray, known: np.ndarray, noise_sigma: float) -> np.ndarray:
    from skimage.restoration import inpaint_biharmonic

    return np.clip(inpaint_biharmonic(y.astype(np.float64), ~known, channel_axis=-1), 0.0, 1.0).astype(np.float32)


# Scattered missing pixels: 3% of the known ones weigh the net's fill against biharmonic's, from
# 256 px a side. On fine periodic texture biharmonic is strong (fingerprint at 256 px: the net alone
# -0.85 dB below it, the blend +0.25 above), and on the 11 images at 256 px the blend is +0.22 dB over
# the net alone; on 96 px crops, fitting 3% fewer pixels cost more than the blend gave (-0.19 dB)
# (docs/benchmarks.md, "Inpainting: the net's fill weighed against biharmonic").
INPAINT_HOLDOUT = 0.03
INPAINT_HOLDOUT_FROM_SIDE = 256


def _inpaint_fast(spec: RestoreSpec, context: PresetContext) -> RunConfig:
    if context.scattered:
        large = context.pixels is None or context.pixels >= INPAINT_HOLDOUT_FROM_SIDE**2
        return replace(_noise_free_fast(spec, context), holdout=INPAINT_HOLDOUT if large else 0.0)
    fit = fast_fit(iterations=3000, reg_noise_std=0.03)
    return RunConfig(replace(FAST_NET, skip_channels=64, upsample_mode="nearest"), fit)


def _inpaint_quality(spec: RestoreSpec, context: PresetContext) -> RunConfig:
    if context.scattered:
        # The paper ran 11000 iterations at lr 0.001 for 50% missing pixels (the paper preset);
        # at lr 0.01 the fit peaks within ~2000 iterations on our crops (docs/benchmarks.md).
        return RunConfig(HOURGLASS, FitConfig(iterations=4000, lr=0.01, reg_noise_std=0.03, early_stop=PAPER_STOP))
    return RunConfig(HOLES_NET, FitConfig(iterations=6000, reg_noise_std=0.03, early_stop=PAPER_STOP))


def _inpaint_paper(spec: RestoreSpec, context: PresetContext) -> RunConfig:
    if context.scattered:  # restoration.ipynb, barbara: 50% of pixels missing
        return RunConfig(HOURGLASS, paper_fit(iterations=11000, lr=0.001, reg_noise_std=0.03))
    # inpainting.ipynb, kate.png: text over the image
    return RunConfig(HOLES_NET, paper_fit(iterations=6001, reg_noise_std=0.03))


_INPAINT_PRESETS: Mapping[str, PresetFn] = {"fast": _inpaint_fast, "quality": _inpaint_quality, "paper": _inpaint_paper}


# -- JPEG artefact removal -----------------------------------------------------------------


def _dejpeg_measure(spec: RestoreSpec, loaded: LoadedImage, files: TaskFiles) -> Measurement:
    pixels = loaded.pixels
    y, reference = pixels, None
    if spec.jpeg_quality is not None:
        y, reference = degradations.jpeg_roundtrip(pixels, spec.jpeg_quality), pixels
    return Measurement(y=y, output_size=pixels.shape[:2], reference=reference, alpha=loaded.alpha, degraded=y, baseline=y)


# denoising.ipynb with snail.jpg: the same loop as denoising, on the snail net, 2400 iterations.
_DEJPEG_PRESETS = _denoising_loop(fast_net=SNAIL_NET, full_net=SNAIL_NET, iterations=2400, fast_iterations=2400)


# -- deblurring ----------------------------------------------------------------------------------


def _deblur_operator(spec: RestoreSpec, data: OperatorData) -> Physics:
    from .physics import Blur

    if data.kernel is None:
        raise ValueError("deblurring needs a kernel")
    return Blur(data.kernel)


def _deblur_check(spec: RestoreSpec, uploads: frozenset[str]) -> None:
    if ("kernel" in uploads) == (spec.blur_sigma is not None):
        raise InputError("kernel_required" if "kernel" not in uploads else "invalid_parameter",
                         "deblur needs exactly one of a kernel image or blur_sigma"
                         + (f" (got both; blur_sigma={spec.blur_sigma!r})" if "kernel" in uploads else ""))
    if spec.add_noise_sigma is not None and not spec.from_sharp:
        raise InputError("invalid_parameter", "add_noise_sigma for deblur needs from_sharp (it is added after the blur)")


def _deblur_measure(spec: RestoreSpec, loaded: LoadedImage, files: TaskFiles) -> Measurement:
    pixels = loaded.pixels
    height, width = pixels.shape[:2]
    if files.kernel is not None:
        kernel = load_kernel(files.kernel, max_size=(width, height))
    else:
        kernel = degradations.gaussian_kernel(spec.blur_sigma)  # type: ignore[arg-type]
        if kernel.shape[0] > min(height, width):
            raise InputError("kernel_too_large", f"blur_sigma={spec.blur_sigma} needs a {kernel.shape[0]} px kernel, "
                             f"larger than the {width}x{height} px image")
    y, reference = pixels, None
    if spec.from_sharp:
        y, reference = degradations.convolve(pixels, kernel), pixels
        if spec.add_noise_sigma:
            y = degradations.add_gaussian_noise(y, spec.add_noise_sigma, rng=numpy_rng(spec.seed, "noise"))
    return Measurement(y=y, output_size=(height, width), kernel=kernel, reference=reference, alpha=loaded.alpha,
                       degraded=y, baseline=y)


# Not in the paper: its denoising protocol, with the blur in the loss.
_DEBLUR_PRESETS = _denoising_loop(fast_net=FAST_NET, full_net=HOURGLASS, iterations=3000, fast_iterations=3000,
                                  fast_ema=0.99)


# -- the table --------------------------------------------------------------------------------

PROBLEMS: Mapping[str, Problem] = MappingProxyType({
    "denoise": Problem(
        name="denoise", description="remove Gaussian-like noise", output="dip_denoised.png",
        operator=_denoise_operator, measure=_denoise_measure, presets=_DENOISE_PRESETS,
        fields=frozenset({"add_noise_sigma"}), classical_answer=_nl_means),
    "superres": Problem(
        name="superres", description="upscale by 2, 4 or 8", output="dip_superres_x{scale}.png",
        operator=_superres_operator, measure=_superres_measure, presets=_SUPERRES_PRESETS,
        fields=frozenset({"scale", "from_hr"}), output_size=_superres_size,
        # A low-resolution image is taken as exact: the wavelet estimate reads its aliased texture as
        # noise (3-8.5/255 on clean Set14 crops), which opened the noise gate and stopped runs that were
        # still improving (docs/benchmarks.md, "Super-resolution"). Noisy inputs give noise_sigma.
        assumed_noise_sigma=0.0),
    "inpaint": Problem(
        name="inpaint", description="fill the pixels a mask marks as missing", output="dip_inpainted.png",
        operator=_inpaint_operator, measure=_inpaint_measure, presets=_INPAINT_PRESETS,
        fields=frozenset({"drop_fraction"}), uploads=frozenset({"mask"}), check=_inpaint_check,
        # The known pixels are taken as exact, as a low-resolution image is: the wavelet estimate read
        # fine texture as noise above 5/255 (boat, fingerprint, hill), so their known pixels were not
        # kept and the gate stopped them early (docs/benchmarks.md, "Inpainting"). Noisy photos give noise_sigma.
        exact_where_measured=True, assumed_noise_sigma=0.0, classical_answer=_biharmonic_fill),
    "dejpeg": Problem(
        name="dejpeg", description="remove JPEG compression artefacts", output="dip_dejpeg.png",
        operator=_denoise_operator, measure=_dejpeg_measure, presets=_DEJPEG_PRESETS,
        fields=frozenset({"jpeg_quality"})),
    "deblur": Problem(
        name="deblur", description="undo a known blur (Gaussian sigma or a kernel image)", output="dip_deblurred.png",
        operator=_deblur_operator, measure=_deblur_measure, presets=_DEBLUR_PRESETS,
        fields=frozenset({"blur_sigma", "from_sharp", "add_noise_sigma"}), uploads=frozenset({"kernel"}),
        check=_deblur_check),
})

TASK_FIELDS: frozenset[str] = frozenset().union(*(p.fields for p in PROBLEMS.values()))
"""Request fields that belong to some tasks only."""
UPLOADS: frozenset[str] = frozenset().union(*(p.uploads for p in PROBLEMS.values()))
"""Extra uploads that some tasks accept."""


def get_problem(task: str) -> Problem:
    """The table entry of ``task``.

    Raises:
        InputError: ``invalid_parameter`` for an unknown task (a ``ValueError``).
    """
    try:
        return PROBLEMS[task]
    except (KeyError, TypeError):
        raise InputError("invalid_parameter", f"task must be one of {', '.join(PROBLEMS)}, got {task!r}") from None


def make_physics(task: str, *, scale: int = 4, kernel: str = "lanczos2", mask: torch.Tensor | None = None,
                 blur: torch.Tensor | None = None) -> Physics:
    """Build the forward operator of ``task``."""
    return get_problem(task).operator(RestoreSpec(task=task, scale=scale),  # type: ignore[arg-type]
                                      OperatorData(downsample_kernel=kernel, mask=mask, kernel=blur))


def _match_channels(image: np.ndarray, channels: int) -> np.ndarray:
    if image.shape[-1] == channels:
        return image
    if channels == 1:
        return image.mean(axis=-1, keepdims=True)
    return np.repeat(image, channels, axis=-1)


def _reference(path: Path, size: tuple[int, int], channels: int, max_pixels: int | None) -> np.ndarray:
    ref = load_image(path, max_pixels=max_pixels)
    if ref.pixels.shape[:2] != tuple(size):
        raise InputError(
            "reference_size_mismatch",
            f"reference is {ref.pixels.shape[1]}x{ref.pixels.shape[0]} px but the output is {size[1]}x{size[0]} px",
        )
    return _match_channels(ref.pixels, channels)


def build_measurement(
    spec: RestoreSpec,
    image: Path,
    *,
    mask: Path | None = None,
    kernel: Path | None = None,
    reference: Path | None = None,
    max_pixels: int | None = None,
) -> Measurement:
    """Load the inputs of ``spec`` and build its measurement.

    Synthetic degradations (noise, downsampling, dropped pixels, blur, JPEG)
    are seeded by streams of ``spec.seed`` of their own (:mod:`dip_engine.seeding`)
    and make the clean input the reference.
    """
    problem = get_problem(spec.task)
    files = TaskFiles(mask=mask, kernel=kernel)
    problem.check_uploads(spec, files.present())
    loaded = load_image(image, max_pixels=max_pixels)
    measurement = problem.measure(spec, loaded, files)
    if reference is not None and measurement.reference is None:
        measurement.reference = _reference(reference, measurement.output_size, measurement.channels, max_pixels)
    elif reference is not None:
        raise InputError("invalid_parameter", "a reference is not needed: the synthetic degradation already scores "
                         "against the clean input")
    return measurement


# -- a request's configuration: its preset, from the table, with its overrides ---------------------


def preset_config(preset: PresetName, task: TaskName, *, scale: int = 4, scattered: bool = False,
                  pixels: int | None = None) -> RunConfig:
    """The preset's configuration for a task.

    ``scattered`` selects the random-missing-pixels variant of inpainting
    (as opposed to text or hole masks); ``pixels``, the output's pixel count,
    sizes the caps that grow with the image (the largest when ``None``).

    Raises:
        ValueError: an unknown preset or task.
    """
    problem = get_problem(task)
    if preset not in problem.presets:
        raise ValueError(f"preset must be one of {sorted(problem.presets)}, got {preset!r}")
    return problem.presets[preset](RestoreSpec(task=task, scale=scale, preset=preset),
                                   PresetContext(scattered=scattered, pixels=pixels))


def resolve(spec: RestoreSpec, *, scattered: bool = False, pixels: int | None = None) -> RunConfig:
    """The preset's configuration with the request's overrides applied."""
    run = preset_config(spec.preset, spec.task, scale=spec.scale, scattered=scattered, pixels=pixels)
    fit = run.fit
    changes: dict[str, object] = {}
    if spec.iterations is not None:
        changes["iterations"] = spec.iterations
    if spec.log_every is not None:
        changes["log_every"] = spec.log_every
    elif spec.iterations is not None:
        changes["log_every"] = max(1, min(fit.log_every, spec.iterations // 20 or 1))
    if spec.snapshot_every is not None:
        changes["snapshot_every"] = spec.snapshot_every
    if spec.early_stop == "off":
        changes["early_stop"] = None
    elif spec.early_stop == "auto" and fit.early_stop is None:
        changes["early_stop"] = PAPER_STOP
    return replace(run, fit=replace(fit, **changes))


def default_iterations(spec: RestoreSpec) -> int:
    """The most iterations a request can run: its cap at the largest size (the image may not
    have been read yet)."""
    if spec.iterations is not None:
        return spec.iterations
    variants = (True,) if spec.drop_fraction is not None else (False, True)  # an uploaded mask may be either
    return max(preset_config(spec.preset, spec.task, scale=spec.scale, scattered=scattered).fit.iterations
               for scattered in variants)
