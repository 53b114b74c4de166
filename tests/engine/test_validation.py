"""Tests for dip_engine.validation: every refusal code and the happy paths."""

from __future__ import annotations

import pytest

from dip_engine.errors import InputError
from dip_engine.io import ImageInfo
from dip_engine.spec import RestoreSpec
from dip_engine.validation import check_inputs, validate_spec


def info(width: int = 64, height: int = 48) -> ImageInfo:
    return ImageInfo(width=width, height=height, mode="RGB", channels=3, has_alpha=False,
                     bit_depth=8, format="PNG")


def refused(code: str, call, *args, **kwargs) -> str:
    with pytest.raises(InputError) as excinfo:
        call(*args, **kwargs)
    assert excinfo.value.code == code, (excinfo.value.code, excinfo.value.message)
    return excinfo.value.message


# -- validate_spec ---------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        RestoreSpec(task="denoise"),
        RestoreSpec(task="denoise", add_noise_sigma=25, iterations=20000, log_every=4, snapshot_every=100),
        RestoreSpec(task="denoise", add_noise_sigma=255.0, early_stop="auto", device="cuda", preset="paper"),
        RestoreSpec(task="superres", scale=8, from_hr=True, early_stop="off", device="cpu"),
        RestoreSpec(task="superres", scale=2),
        RestoreSpec(task="inpaint", drop_fraction=0.5, seed=2**32 - 1),
        RestoreSpec(task="inpaint", iterations=1),
    ],
)
def test_valid_specs_pass(spec):
    assert validate_spec(spec) is None


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"task": "colorize"}, "task must be one of denoise, superres, inpaint, dejpeg, deblur, got 'colorize'"),
        ({"scale": 3}, "scale must be one of 2, 4, 8, got 3"),
        ({"scale": True}, "got True"),
        ({"iterations": 0}, "iterations must be in 1..20000, got 0"),
        ({"iterations": 20001}, "got 20001"),
        ({"iterations": 2.5}, "got 2.5"),
        ({"log_every": 0}, "log_every must be >= 1, got 0"),
        ({"snapshot_every": -5}, "snapshot_every must be >= 1, got -5"),
        ({"add_noise_sigma": 0}, "add_noise_sigma must be in (0, 255]"),
        ({"add_noise_sigma": 256}, "got 256"),
        ({"add_noise_sigma": float("nan")}, "got nan"),
        ({"drop_fraction": 0.5}, "drop_fraction is only for inpaint, not denoise"),
        ({"from_hr": True}, "from_hr is only for superres, not denoise"),
        ({"preset": "slow"}, "preset must be one of fast, quality, paper, got 'slow'"),
        ({"early_stop": "maybe"}, "got 'maybe'"),
        ({"device": "tpu"}, "device must be one of auto, cpu, cuda, got 'tpu'"),
        ({"seed": -1}, "seed must be an int"),
    ],
)
def test_bad_denoise_fields(changes, fragment):
    message = refused("invalid_parameter", validate_spec, RestoreSpec(**{"task": "denoise", **changes}))
    assert fragment in message


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (RestoreSpec(task="inpaint", drop_fraction=0.0), "drop_fraction must be in (0, 1), got 0.0"),
        (RestoreSpec(task="inpaint", drop_fraction=1.0), "got 1.0"),
        (RestoreSpec(task="inpaint", add_noise_sigma=10), "add_noise_sigma is only for denoise, deblur, not inpaint"),
            (RestoreSpec(task="denoise", blur_sigma=1.5), "blur_sigma is only for deblur, not denoise"),
            (RestoreSpec(task="deblur", jpeg_quality=10), "jpeg_quality is only for dejpeg, not deblur"),
            (RestoreSpec(task="denoise", scale=2), "scale is only for superres, not denoise"),
            (RestoreSpec(task="deblur", blur_sigma=0.0), "blur_sigma must be in (0, 20]"),
            (RestoreSpec(task="dejpeg", jpeg_quality=100), "jpeg_quality must be an int in 1..95"),
            (RestoreSpec(task="inpaint", noise_sigma=300.0), "noise_sigma must be in [0, 255]"),
        (RestoreSpec(task="superres", add_noise_sigma=10), "not superres"),
        (RestoreSpec(task="inpaint", from_hr=True), "from_hr is only for superres, not inpaint"),
    ],
)
def test_task_specific_fields(spec, fragment):
    assert fragment in refused("invalid_parameter", validate_spec, spec)


def test_max_iterations_is_configurable():
    spec = RestoreSpec(task="denoise", iterations=600)
    assert "1..500, got 600" in refused("invalid_parameter", validate_spec, spec, max_iterations=500)
    validate_spec(spec, max_iterations=600)
    with pytest.raises(ValueError, match="max_iterations"):
        validate_spec(spec, max_iterations=0)


# -- check_inputs ----------------------------------------------------------------


def test_output_sizes():
    assert check_inputs(RestoreSpec(task="denoise"), info(64, 48)) == (64, 48)
    assert check_inputs(RestoreSpec(task="inpaint", drop_fraction=0.3), info(64, 48)) == (64, 48)
    assert check_inputs(RestoreSpec(task="inpaint"), info(64, 48), mask=info(64, 48)) == (64, 48)
    assert check_inputs(RestoreSpec(task="superres", scale=4), info(64, 48)) == (256, 192)
    assert check_inputs(RestoreSpec(task="superres", scale=4, from_hr=True), info(64, 64)) == (64, 64)


def test_image_too_small():
    message = refused("image_too_small", check_inputs, RestoreSpec(task="denoise"), info(12, 40))
    assert message == "image is 12x40 px; the minimum is 16 px per side"
    assert check_inputs(RestoreSpec(task="denoise"), info(12, 40), min_size=8) == (12, 40)


def test_mask_not_allowed_outside_inpaint():
    for task in ("denoise", "superres"):
        message = refused("mask_not_allowed", check_inputs, RestoreSpec(task=task), info(), mask=info())
        assert task in message


def test_mask_required_for_inpaint_without_drop_fraction():
    refused("mask_required", check_inputs, RestoreSpec(task="inpaint"), info())


def test_mask_and_drop_fraction_together_is_refused():
    message = refused("invalid_parameter", check_inputs, RestoreSpec(task="inpaint", drop_fraction=0.5),
                      info(), mask=info())
    assert "not both" in message and "0.5" in message


def test_mask_size_mismatch():
    message = refused("mask_size_mismatch", check_inputs, RestoreSpec(task="inpaint"), info(64, 64),
                      mask=info(100, 80))
    assert message == "mask is 100x80 px but the image is 64x64 px"


@pytest.mark.parametrize(
    ("spec", "image", "good", "bad"),
    [
        (RestoreSpec(task="denoise"), info(64, 48), info(64, 48), info(48, 64)),
        (RestoreSpec(task="superres", scale=2), info(32, 20), info(64, 40), info(32, 20)),
        (RestoreSpec(task="superres", scale=4, from_hr=True), info(128, 64), info(128, 64), info(32, 16)),
    ],
)
def test_reference_must_match_the_output(spec, image, good, bad):
    assert check_inputs(spec, image, reference=good) == (good.width, good.height)
    message = refused("reference_size_mismatch", check_inputs, spec, image, reference=bad)
    assert f"reference is {bad.width}x{bad.height} px but the output is {good.width}x{good.height} px" == message


def test_from_hr_needs_sides_divisible_by_scale():
    message = refused("invalid_parameter", check_inputs, RestoreSpec(task="superres", scale=4, from_hr=True),
                      info(66, 64))
    assert "divide by the scale 4" in message and "66x64" in message


def test_from_hr_low_resolution_image_must_reach_min_size():
    spec = RestoreSpec(task="superres", scale=8, from_hr=True)
    message = refused("image_too_small", check_inputs, spec, info(64, 128))
    assert "8x16 px" in message
    assert check_inputs(spec, info(128, 128)) == (128, 128)
    assert check_inputs(spec, info(64, 128), min_size=8) == (64, 128)


def test_output_pixel_limit():
    spec = RestoreSpec(task="superres", scale=4)
    assert check_inputs(spec, info(32, 32), max_output_pixels=128 * 128) == (128, 128)
    message = refused("image_too_large", check_inputs, spec, info(32, 33), max_output_pixels=128 * 128)
    assert "128x132 px" in message and "16384" in message


@pytest.mark.parametrize(("changes", "words"), [
    ({"iterations": 20000, "snapshot_every": 1}, ["20000 snapshots", "at most 200", "snapshot_every >= 100"]),
    ({"iterations": 6000, "log_every": 1}, ["6000 history points", "at most 5000", "log_every >= 2"]),
    ({"snapshot_every": 10}, ["500 snapshots over 5000 iterations"]),  # the preset's cap counts when unset
])
def test_requests_for_too_many_history_points_or_snapshots_are_refused(changes: dict, words: list[str]) -> None:
    with pytest.raises(InputError) as excinfo:
        validate_spec(RestoreSpec(task="denoise", **changes))
    assert excinfo.value.code == "invalid_parameter"
    for word in words:
        assert word in excinfo.value.message


def test_requests_at_the_caps_pass() -> None:
    validate_spec(RestoreSpec(task="denoise", iterations=20000, snapshot_every=100, log_every=4))
