"""Checks on a restoration request before any work is done.

The API runs them at upload time (so a bad job is refused with a 4xx rather
than failing in the worker) and the CLI before loading PyTorch models. Every
failure is an :class:`~dip_engine.errors.InputError` whose message shows the
bad value. Torch-free.
"""

from __future__ import annotations

import math

from dip_engine.errors import InputError
from dip_engine.io import ImageInfo
from dip_engine.problems import PROBLEMS, TASK_FIELDS, get_problem
from dip_engine.spec import PRESETS, SCALES, RestoreSpec

_EARLY_STOP_MODES = (None, "auto", "off")
_DEVICES = ("auto", "cpu", "cuda")
_MAX_SEED = 2**32 - 1  # the widest range every seeded generator (numpy, torch) accepts
_DEFAULTS = RestoreSpec(task="denoise")
# What one job may ask to keep: history points go into Redis and every GET of the history,
# snapshots onto the disk and into the files list.
MAX_HISTORY_POINTS = 5000
MAX_SNAPSHOT_REQUESTS = 200


def validate_spec(spec: RestoreSpec, *, max_iterations: int = 20000) -> None:
    """Check each field of ``spec`` and the fields that belong to some tasks only.

    Args:
        spec: The request.
        max_iterations: Upper bound for ``spec.iterations``.

    Raises:
        InputError: ``invalid_parameter`` naming the field and its value.
    """
    if not _is_int(max_iterations) or max_iterations < 1:
        raise ValueError(f"max_iterations must be a positive int, got {max_iterations!r}")

    problem = get_problem(spec.task)
    _require(_is_int(spec.scale) and spec.scale in SCALES,
             f"scale must be one of {_choices(SCALES)}, got {spec.scale!r}")
    _require(spec.preset in PRESETS, f"preset must be one of {_choices(PRESETS)}, got {spec.preset!r}")
    _require(spec.early_stop in _EARLY_STOP_MODES,
             f"early_stop must be auto, off or unset, got {spec.early_stop!r}")
    _require(spec.device in _DEVICES, f"device must be one of {_choices(_DEVICES)}, got {spec.device!r}")
    _require(spec.iterations is None or (_is_int(spec.iterations) and 1 <= spec.iterations <= max_iterations),
             f"iterations must be in 1..{max_iterations}, got {spec.iterations!r}")
    for name in ("log_every", "snapshot_every"):
        value = getattr(spec, name)
        _require(value is None or (_is_int(value) and value >= 1), f"{name} must be >= 1, got {value!r}")
    _require(_is_int(spec.seed) and 0 <= spec.seed <= _MAX_SEED,
             f"seed must be an int in 0..{_MAX_SEED}, got {spec.seed!r}")
    for name in ("from_hr", "from_sharp", "deterministic"):
        _require(isinstance(getattr(spec, name), bool), f"{name} must be true or false, got {getattr(spec, name)!r}")

    sigma = spec.add_noise_sigma
    _require(sigma is None or (_is_real(sigma) and 0 < sigma <= 255),
             f"add_noise_sigma must be in (0, 255] (0-255 scale), got {sigma!r}")
    known = spec.noise_sigma
    _require(known is None or (_is_real(known) and 0 <= known <= 255),
             f"noise_sigma must be in [0, 255] (0-255 scale), got {known!r}")
    fraction = spec.drop_fraction
    _require(fraction is None or (_is_real(fraction) and 0 < fraction < 1),
             f"drop_fraction must be in (0, 1), got {fraction!r}")
    blur = spec.blur_sigma
    _require(blur is None or (_is_real(blur) and 0 < blur <= 20), f"blur_sigma must be in (0, 20] px, got {blur!r}")
    quality = spec.jpeg_quality
    _require(quality is None or (_is_int(quality) and 1 <= quality <= 95),
             f"jpeg_quality must be an int in 1..95, got {quality!r}")

    if spec.preset in PRESETS and _is_int(spec.scale) and spec.scale in SCALES:
        from dip_engine.problems import default_iterations

        iterations = default_iterations(spec)
        for name, cap in (("log_every", MAX_HISTORY_POINTS), ("snapshot_every", MAX_SNAPSHOT_REQUESTS)):
            every = getattr(spec, name)
            if every is not None and iterations // every > cap:
                what = "history points" if name == "log_every" else "snapshots"
                raise InputError("invalid_parameter",
                                 f"{name}={every} asks for {iterations // every} {what} over {iterations} "
                                 f"iterations; at most {cap} per job ({name} >= {-(-iterations // cap)})")

    for name in sorted(TASK_FIELDS - problem.fields):
        if getattr(spec, name) != getattr(_DEFAULTS, name):
            owners = ", ".join(p.name for p in PROBLEMS.values() if name in p.fields)
            raise InputError("invalid_parameter", f"{name} is only for {owners}, not {spec.task}")


def check_inputs(
    spec: RestoreSpec,
    image: ImageInfo,
    *,
    mask: ImageInfo | None = None,
    kernel: ImageInfo | None = None,
    reference: ImageInfo | None = None,
    max_output_pixels: int | None = None,
    min_size: int = 16,
) -> tuple[int, int]:
    """Check the uploaded images against a request already passed by :func:`validate_spec`.

    With ``spec.from_hr`` the input is the high-resolution image: its sides
    must divide by ``scale``, and the low-resolution image made from it must
    still be at least ``min_size`` px per side (the same minimum as any input).

    Args:
        spec: The request.
        image: The input image.
        mask: The inpainting mask, if one was uploaded.
        kernel: The blur kernel, if one was uploaded.
        reference: The clean image to score against, if one was uploaded.
        max_output_pixels: Refuse outputs with more pixels than this.
        min_size: Smallest side accepted for the (low-resolution) input.

    Returns:
        The output ``(width, height)``.

    Raises:
        InputError: ``image_too_small``, ``mask_not_allowed``, ``mask_required``,
            ``mask_size_mismatch``, ``kernel_not_allowed``, ``kernel_required``,
            ``kernel_too_large``, ``reference_size_mismatch``, ``image_too_large``
            or ``invalid_parameter``.
    """
    problem = get_problem(spec.task)
    _check_min_side("image", image.width, image.height, min_size)
    uploads = frozenset(name for name, info in (("mask", mask), ("kernel", kernel)) if info is not None)
    problem.check_uploads(spec, uploads)
    if mask is not None and (mask.width, mask.height) != (image.width, image.height):
        raise InputError(
            "mask_size_mismatch",
            f"mask is {mask.width}x{mask.height} px but the image is {image.width}x{image.height} px",
        )
    if kernel is not None and (kernel.width > image.width or kernel.height > image.height):
        raise InputError("kernel_too_large", f"kernel is {kernel.width}x{kernel.height} px, larger than the "
                         f"{image.width}x{image.height} px image")

    width, height = image.width, image.height
    if spec.from_hr:
        _require(width % spec.scale == 0 and height % spec.scale == 0,
                 f"with from_hr the image sides must divide by the scale {spec.scale}, got {width}x{height} px")
        _check_min_side(f"the x{spec.scale} low-resolution image made from_hr",
                        width // spec.scale, height // spec.scale, min_size)
    output = problem.output_size(spec, width, height)

    if reference is not None and (reference.width, reference.height) != output:
        raise InputError(
            "reference_size_mismatch",
            f"reference is {reference.width}x{reference.height} px but the output is "
            f"{output[0]}x{output[1]} px",
        )
    if max_output_pixels is not None and output[0] * output[1] > max_output_pixels:
        raise InputError(
            "image_too_large",
            f"output would be {output[0]}x{output[1]} px ({output[0] * output[1]} pixels); "
            f"the maximum is {max_output_pixels} pixels",
        )
    return output


def _check_min_side(what: str, width: int, height: int, min_size: int) -> None:
    if width < min_size or height < min_size:
        raise InputError("image_too_small",
                         f"{what} is {width}x{height} px; the minimum is {min_size} px per side")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InputError("invalid_parameter", message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _choices(values: tuple[object, ...]) -> str:
    return ", ".join(str(v) for v in values)
