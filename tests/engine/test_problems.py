"""Tests of dip_engine.problems: task -> operator, and the measurement built from the inputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dip_engine.errors import InputError
from dip_engine.physics import Denoising, Downsampling, Inpainting
from dip_engine.problems import Measurement, build_measurement, make_physics
from dip_engine.spec import RestoreSpec

ImageMaker = Callable[..., np.ndarray]


@pytest.fixture
def clean(tmp_path: Path, make_image: ImageMaker) -> Path:
    path = tmp_path / "clean.png"
    Image.fromarray(make_image(64, 48)).save(path)
    return path


def _mask_file(path: Path, known: np.ndarray) -> Path:
    Image.fromarray(np.where(known, 255, 0).astype(np.uint8)).save(path)
    return path


def test_make_physics_builds_each_task_operator() -> None:
    assert isinstance(make_physics("denoise"), Denoising)
    down = make_physics("superres", scale=8, kernel="bilinear")
    assert isinstance(down, Downsampling) and down.factor == 8 and down.kernel_name == "bilinear"
    assert isinstance(make_physics("inpaint", mask=torch.ones(4, 4, dtype=torch.bool)), Inpainting)
    with pytest.raises(ValueError, match="'colorize'"):
        make_physics("colorize")


def test_denoise_with_added_noise_is_seeded_and_makes_the_input_the_reference(clean: Path) -> None:
    spec = RestoreSpec(task="denoise", add_noise_sigma=25.0, seed=1)
    a, b = build_measurement(spec, clean), build_measurement(spec, clean)
    other = build_measurement(RestoreSpec(task="denoise", add_noise_sigma=25.0, seed=2), clean)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.y, other.y)
    assert a.y.shape == (48, 64, 3) and a.output_size == (48, 64)
    assert a.reference is not None and a.y.min() >= 0 and a.y.max() <= 1
    # Sigma 25 on the 0-255 scale, a little less where clipping bites.
    assert 0.08 < float(np.std(a.y - a.reference)) < 25 / 255 + 0.005


def test_denoise_without_noise_has_no_reference(clean: Path) -> None:
    m = build_measurement(RestoreSpec(task="denoise"), clean)
    assert m.reference is None and m.mask is None and m.degraded is m.y


def test_superres_from_hr_downsamples_and_keeps_the_hr_reference(clean: Path) -> None:
    m = build_measurement(RestoreSpec(task="superres", scale=4, from_hr=True), clean)
    assert m.y.shape == (12, 16, 3) and m.output_size == (48, 64) and m.reference.shape == (48, 64, 3)


def test_superres_from_lr_multiplies_the_size(clean: Path) -> None:
    m = build_measurement(RestoreSpec(task="superres", scale=2), clean)
    assert m.y.shape == (48, 64, 3) and m.output_size == (96, 128) and m.reference is None


def test_inpaint_with_a_mask_file_zeroes_the_holes(clean: Path, tmp_path: Path) -> None:
    known = np.ones((48, 64), bool)
    known[10:20, 30:50] = False
    m = build_measurement(RestoreSpec(task="inpaint"), clean, mask=_mask_file(tmp_path / "m.png", known))
    np.testing.assert_array_equal(m.mask, known)
    assert np.all(m.y[~known] == 0) and np.all(m.y[known].sum(axis=-1) > 0)
    assert m.reference is None and not m.scattered_mask


def test_inpaint_with_a_drop_fraction_is_seeded_and_scattered(clean: Path) -> None:
    spec = RestoreSpec(task="inpaint", drop_fraction=0.5, seed=3)
    a, b = build_measurement(spec, clean), build_measurement(spec, clean)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.mask.dtype == bool and 1 - a.mask.mean() == pytest.approx(0.5, abs=0.05)
    assert a.reference is not None and a.scattered_mask


@pytest.mark.parametrize(
    ("spec", "mask", "code"),
    [
        (RestoreSpec(task="denoise"), True, "mask_not_allowed"),
        (RestoreSpec(task="superres"), True, "mask_not_allowed"),
        (RestoreSpec(task="inpaint"), False, "mask_required"),
        (RestoreSpec(task="inpaint", drop_fraction=0.5), True, "invalid_parameter"),
    ],
    ids=["mask-for-denoise", "mask-for-superres", "no-mask", "mask-and-drop-fraction"],
)
def test_mask_errors(spec: RestoreSpec, mask: bool, code: str, clean: Path, tmp_path: Path) -> None:
    mask_path = _mask_file(tmp_path / "m.png", np.ones((48, 64), bool)) if mask else None
    with pytest.raises(InputError) as excinfo:
        build_measurement(spec, clean, mask=mask_path)
    assert excinfo.value.code == code


def test_reference_of_the_wrong_size_is_refused(clean: Path, tmp_path: Path, make_image: ImageMaker) -> None:
    small = tmp_path / "small.png"
    Image.fromarray(make_image(32, 24)).save(small)
    with pytest.raises(InputError, match="32x24 px but the output is 64x48 px") as excinfo:
        build_measurement(RestoreSpec(task="denoise"), clean, reference=small)
    assert excinfo.value.code == "reference_size_mismatch"


# -- Measurement.scattered_mask ----------------------------------------------------------------------


def _measurement(mask: np.ndarray | None) -> Measurement:
    return Measurement(y=np.zeros((64, 64, 3), np.float32), output_size=(64, 64), mask=mask)


def test_scattered_mask_tells_random_pixels_from_blobs() -> None:
    rng = np.random.default_rng(0)
    assert _measurement(rng.random((64, 64)) >= 0.5).scattered_mask  # 50% random pixels
    assert _measurement(rng.random((64, 64)) >= 0.2).scattered_mask
    blob = np.ones((64, 64), bool)
    blob[16:48, 16:48] = False
    assert not _measurement(blob).scattered_mask
    text = np.ones((64, 64), bool)
    text[10:13, :] = text[30:33, :] = False  # three-pixel strokes: most holes see no known pixel
    assert not _measurement(text).scattered_mask
    assert not _measurement(np.ones((64, 64), bool)).scattered_mask  # nothing missing
    assert not _measurement(None).scattered_mask


# -- the table -----------------------------------------------------------------------------------


def test_the_table_has_every_task_and_every_preset() -> None:
    from dip_engine.problems import PROBLEMS
    from dip_engine.spec import PRESETS, TASKS

    assert tuple(PROBLEMS) == TASKS
    for name, problem in PROBLEMS.items():
        assert problem.name == name and set(problem.presets) == set(PRESETS)
        assert problem.result_name(RestoreSpec(task=name)).startswith("dip_")  # type: ignore[arg-type]
    assert PROBLEMS["dejpeg"].result_name(RestoreSpec(task="dejpeg")) == "dip_dejpeg.png"
    assert PROBLEMS["deblur"].result_name(RestoreSpec(task="deblur")) == "dip_deblurred.png"
    assert PROBLEMS["superres"].curves_name(RestoreSpec(task="superres", scale=8)) == "dip_superres_x8_curves.png"


def test_an_unknown_task_is_an_error_everywhere() -> None:
    from dip_engine.problems import preset_config
    from dip_engine.problems import get_problem

    for call in (lambda: get_problem("colorize"), lambda: preset_config("fast", "colorize"),  # type: ignore[arg-type]
                 lambda: make_physics("colorize")):
        with pytest.raises(InputError, match="task must be one of denoise, superres, inpaint, dejpeg, deblur"):
            call()


def test_dejpeg_compresses_a_clean_input_when_asked(clean: Path) -> None:
    plain = build_measurement(RestoreSpec(task="dejpeg"), clean)
    assert plain.reference is None and np.array_equal(plain.y, plain.baseline)
    synthetic = build_measurement(RestoreSpec(task="dejpeg", jpeg_quality=10), clean)
    assert synthetic.reference is not None and np.abs(synthetic.y - synthetic.reference).mean() > 0.005


def test_deblur_from_a_gaussian_or_a_kernel_image(clean: Path, tmp_path: Path) -> None:
    gaussian = build_measurement(RestoreSpec(task="deblur", blur_sigma=1.6), clean)
    assert gaussian.kernel is not None and gaussian.kernel.shape == (11, 11) and gaussian.reference is None
    kernel = np.zeros((3, 5), np.uint8)
    kernel[1] = 255
    path = tmp_path / "kernel.png"
    Image.fromarray(kernel).save(path)
    uploaded = build_measurement(RestoreSpec(task="deblur"), clean, kernel=path)
    assert np.allclose(uploaded.kernel, np.where(kernel > 0, 0.2, 0.0))
    sharp = build_measurement(RestoreSpec(task="deblur", blur_sigma=1.6, from_sharp=True, add_noise_sigma=2.55), clean)
    assert sharp.reference is not None
    from dip_engine.degradations import convolve

    residual = sharp.y - convolve(sharp.reference, sharp.kernel)
    assert float(residual.std()) == pytest.approx(2.55 / 255, rel=0.15)  # the 1% noise added after the blur


@pytest.mark.parametrize(("spec", "files", "code"), [
    (RestoreSpec(task="deblur"), {}, "kernel_required"),
    (RestoreSpec(task="deblur", blur_sigma=1.0), {"kernel"}, "invalid_parameter"),
    (RestoreSpec(task="deblur", blur_sigma=1.0, add_noise_sigma=5.0), {}, "invalid_parameter"),
    (RestoreSpec(task="denoise"), {"kernel"}, "kernel_not_allowed"),
    (RestoreSpec(task="dejpeg"), {"mask"}, "mask_not_allowed"),
])
def test_inconsistent_uploads_are_refused(spec: RestoreSpec, files: set[str], code: str, clean: Path,
                                          tmp_path: Path) -> None:
    kernel = tmp_path / "k.png"
    Image.fromarray(np.full((3, 3), 255, np.uint8)).save(kernel)
    paths = {name: (kernel if name == "kernel" else _mask_file(tmp_path / "m.png", np.ones((48, 64), bool)))
             for name in files}
    with pytest.raises(InputError) as caught:
        build_measurement(spec, clean, **paths)
    assert caught.value.code == code


def test_superres_baseline_is_bicubic(clean: Path) -> None:
    m = build_measurement(RestoreSpec(task="superres", scale=2), clean)
    assert m.baseline is not None and m.baseline.shape == (96, 128, 3)
