"""Tests of dip_engine.restore: files in, files out, for every image kind; checkpoints across runs.

A few iterations each: these check shapes, modes, alpha and bookkeeping, not quality.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dip_engine.callbacks import Callback, FitState
from dip_engine.errors import InputError
from dip_engine.noise import NOISE_FREE_SIGMA, estimate_noise_sigma
from dip_engine.restore import CHECKPOINT_NAME, RestoreInputs, restore
from dip_engine.problems import get_problem
from dip_engine.spec import RestoreSpec

pytestmark = pytest.mark.usefixtures("one_thread")

ImageMaker = Callable[..., np.ndarray]


def _spec(task: str, **changes: object) -> RestoreSpec:
    return RestoreSpec(**({"task": task, "iterations": 4, "log_every": 2, "device": "cpu"} | changes))


def _alpha(width: int, height: int) -> np.ndarray:
    """uint8 (H, W): fully transparent to opaque, left to right."""
    return np.tile(np.linspace(0, 255, width).round().astype(np.uint8), (height, 1))


def _save(path: Path, rgb: np.ndarray, mode: str) -> Path:
    """Write ``rgb`` (uint8 H, W, 3) as an ``L``, ``RGB`` or ``RGBA`` PNG."""
    if mode == "L":
        image = Image.fromarray(rgb).convert("L")
    elif mode == "RGBA":
        image = Image.fromarray(np.dstack([rgb, _alpha(rgb.shape[1], rgb.shape[0])]), mode="RGBA")
    else:
        image = Image.fromarray(rgb)
    image.save(path)
    return path


def _open(path: Path) -> Image.Image:
    image = Image.open(path)
    image.load()
    return image


def _without_elapsed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "elapsed_s"} for record in history]


# -- every image kind keeps its size and mode ------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_odd_size_keeps_size_mode_and_alpha(mode: str, tmp_path: Path, make_image: ImageMaker) -> None:
    source = _save(tmp_path / "in.png", make_image(97, 61), mode)
    result = restore(_spec("denoise", iterations=2), RestoreInputs(source), tmp_path / "out")
    for key in ("result", "best", "last"):
        image = _open(result.files[key])
        assert image.size == (97, 61) and image.mode == mode, key
        if mode == "RGBA":
            # Alpha is passed through exactly; only the colour is restored.
            np.testing.assert_array_equal(np.asarray(image)[..., 3], _alpha(97, 61))
    assert result.metrics["output_size"] == [61, 97]
    assert result.metrics["setup"]["padded_measurement"] == [64, 128]  # bottom/right reflect padding


@pytest.mark.parametrize(
    ("task", "changes", "out_size"),
    [("inpaint", {"drop_fraction": 0.5}, (97, 61)), ("superres", {"scale": 2}, (194, 122))],
    ids=["inpaint", "superres-x2"],
)
def test_odd_size_for_the_other_tasks(task: str, changes: dict, out_size: tuple[int, int], tmp_path: Path,
                                      make_image: ImageMaker) -> None:
    source = _save(tmp_path / "in.png", make_image(97, 61), "RGBA")
    result = restore(_spec(task, iterations=2, **changes), RestoreInputs(source), tmp_path / "out")
    image = _open(result.files["result"])
    assert result.files["result"].name == get_problem(task).result_name(_spec(task, **changes))
    assert image.size == out_size and image.mode == "RGBA"
    if task == "inpaint":
        np.testing.assert_array_equal(np.asarray(image)[..., 3], _alpha(97, 61))


def test_superres_scales_the_alpha_with_the_image(tmp_path: Path, make_image: ImageMaker) -> None:
    source = _save(tmp_path / "in.png", make_image(16, 16), "RGBA")
    result = restore(_spec("superres", scale=4), RestoreInputs(source), tmp_path / "out")
    image = _open(result.files["result"])
    assert image.size == (64, 64) and image.mode == "RGBA"
    alpha = np.asarray(image)[..., 3].astype(float)
    # Still transparent on the left, opaque on the right, increasing in between.
    assert alpha[:, :4].mean() < 20 and alpha[:, -4:].mean() > 235
    assert np.all(np.diff(alpha.mean(axis=0)) >= -1)


@pytest.mark.parametrize(("task", "changes"), [("denoise", {}), ("inpaint", {"drop_fraction": 0.3})])
def test_grayscale_stays_grayscale(task: str, changes: dict, tmp_path: Path, make_image: ImageMaker) -> None:
    source = _save(tmp_path / "in.png", make_image(64, 64), "L")
    result = restore(_spec(task, **changes), RestoreInputs(source), tmp_path / "out")
    for key in ("result", "best", "last"):
        assert _open(result.files[key]).mode == "L"
    assert result.metrics["setup"]["parameters"] > 0


def test_16_bit_png_input(tmp_path: Path) -> None:
    ys, xs = np.mgrid[0:64, 0:64]
    values = (xs * 1000 + ys * 17 + 3).astype(np.uint16)  # uses the low byte too
    source = tmp_path / "deep.png"
    Image.fromarray(values).save(source)
    assert _open(source).mode.startswith("I")
    result = restore(_spec("denoise", add_noise_sigma=25.0), RestoreInputs(source), tmp_path / "out")
    image = _open(result.files["result"])
    assert image.size == (64, 64) and image.mode == "L"
    # The clean 16-bit image is the reference: noise of sigma 25/255 on [0, 1] values, not on 0-65535 ones.
    assert result.metrics["summary"]["psnr_input"] == pytest.approx(20.5, abs=1.0)


# -- what a run writes -------------------------------------------------------------------------------


def test_outputs_and_metrics(tmp_path: Path, make_image: ImageMaker) -> None:
    source = _save(tmp_path / "in.png", make_image(64, 64), "RGB")
    out = tmp_path / "out"
    result = restore(_spec("denoise", add_noise_sigma=15.0, snapshot_every=2), RestoreInputs(source), out)
    assert {p.name for p in out.iterdir()} == {
        "dip_denoised.png", "dip_denoised_curves.png", "best.png", "last.png", "degraded.png", "metrics.json",
        "snapshots"}
    assert [p.name for p in result.snapshots] == ["iter_00002.png", "iter_00004.png"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics, default=str))
    summary = metrics["summary"]
    assert summary["psnr_best"] == result.psnr_best and summary["psnr_output"] == result.psnr_output
    assert summary["detection_gap_db"] == pytest.approx(summary["psnr_best"] - summary["psnr_output"])
    assert metrics["spec"]["add_noise_sigma"] == 15.0
    assert metrics["config"]["fit"]["iterations"] == 4 and metrics["config"]["fit"]["snapshot_every"] == 2
    assert metrics["files"]["degraded"] == "degraded.png"


def test_a_given_noise_level_replaces_the_estimate(tmp_path: Path, make_image: ImageMaker) -> None:
    source = _save(tmp_path / "in.png", make_image(64, 64), "RGB")
    estimated = restore(_spec("denoise", add_noise_sigma=15.0), RestoreInputs(source), tmp_path / "a").metrics
    given = restore(_spec("denoise", add_noise_sigma=15.0, noise_sigma=15.0), RestoreInputs(source), tmp_path / "b").metrics
    assert estimated["summary"]["noise_sigma_source"] == "estimated"
    assert given["summary"]["noise_sigma_source"] == "given"
    assert given["summary"]["noise_sigma_estimate"] == 15 / 255


@pytest.mark.parametrize(("task", "changes"), [("superres", {"scale": 2}), ("inpaint", {"drop_fraction": 0.5})])
def test_noise_free_tasks_take_the_measurement_as_exact_unless_told(task: str, changes: dict, tmp_path: Path) -> None:
    # A textured clean image, whose fine detail the wavelet estimate reads as noise: a low-resolution
    # image and inpainting's known pixels are taken as exact all the same.
    pixels = np.random.default_rng(0).random((32, 32, 3))
    source = tmp_path / "textured.png"
    Image.fromarray((pixels * 255).astype(np.uint8)).save(source)
    assert estimate_noise_sigma(pixels) > NOISE_FREE_SIGMA
    assumed = restore(_spec(task, **changes), RestoreInputs(source), tmp_path / "a").metrics
    given = restore(_spec(task, noise_sigma=10.0, **changes), RestoreInputs(source), tmp_path / "b").metrics
    assert (assumed["summary"]["noise_sigma_source"], assumed["summary"]["noise_sigma_estimate"]) == ("assumed", 0.0)
    assert (given["summary"]["noise_sigma_source"], given["summary"]["noise_sigma_estimate"]) == ("given", 10 / 255)
    if task == "inpaint":
        assert assumed["setup"]["kept_measured"] and not given["setup"]["kept_measured"]


def test_superres_from_hr_scores_against_the_hr_input(tmp_path: Path, make_image: ImageMaker) -> None:
    source = _save(tmp_path / "hr.png", make_image(64, 64), "RGB")
    result = restore(_spec("superres", from_hr=True), RestoreInputs(source), tmp_path / "out")
    assert _open(result.files["result"]).size == (64, 64)
    assert _open(result.files["degraded"]).size == (16, 16)
    summary = result.metrics["summary"]
    # psnr_input is the bicubic baseline; the Y-channel numbers are the paper's protocol (4 px border).
    from dip_engine.io import load_image, resize_image
    from dip_engine.metrics import psnr, psnr_y

    hr = torch.from_numpy(load_image(source).pixels).permute(2, 0, 1)[None]
    degraded = load_image(result.files["degraded"]).pixels
    bicubic = torch.from_numpy(resize_image(degraded, size=(64, 64), method="bicubic")).permute(2, 0, 1)[None]
    assert summary["psnr_input"] == pytest.approx(float(psnr(bicubic, hr)), abs=0.1)  # degraded.png is 8-bit
    assert summary["psnr_y_input"] == pytest.approx(float(psnr_y(bicubic, hr, shave=4)), abs=0.1)
    assert summary["psnr_output"] is not None and summary["psnr_y_output"] is not None
    assert summary["psnr_y_output"] != summary["psnr_output"]


def test_scattered_masks_pick_the_random_pixel_preset(tmp_path: Path, make_image: ImageMaker) -> None:
    source = _save(tmp_path / "in.png", make_image(64, 64), "RGB")
    rng = np.random.default_rng(0)
    scattered = tmp_path / "scattered.png"
    Image.fromarray(np.where(rng.random((64, 64)) < 0.5, 255, 0).astype(np.uint8)).save(scattered)
    block = tmp_path / "block.png"
    holes = np.full((64, 64), 255, np.uint8)
    holes[16:40, 20:44] = 0
    Image.fromarray(holes).save(block)

    def net_of(mask: Path) -> dict:
        result = restore(_spec("inpaint", iterations=1), RestoreInputs(source, mask=mask), tmp_path / mask.stem)
        return result.metrics["config"]["net"]

    assert net_of(scattered)["skip_channels"] == 4 and net_of(scattered)["upsample_mode"] == "bilinear"
    assert net_of(block)["upsample_mode"] == "nearest" and net_of(block)["skip_channels"] > 4


def test_the_cap_is_sized_by_the_image_read(tmp_path: Path, make_image: ImageMaker) -> None:
    def cap(task: str, side: int, **changes: object) -> int:
        source = _save(tmp_path / f"in{side}.png", make_image(side, side), "RGB")
        spec = _spec(task, iterations=None, log_every=None, **changes)
        result = restore(spec, RestoreInputs(source), tmp_path / f"{task}{side}", callbacks=[CancelAt(1)])
        return result.metrics["config"]["fit"]["iterations"]

    assert (cap("inpaint", 64, drop_fraction=0.5), cap("inpaint", 256, drop_fraction=0.5)) == (3000, 5000)
    # Super-resolution is sized by its output: x4 from 32 px is 128 px.
    assert cap("superres", 32, scale=4) == 3500
    # Denoising grows from 256 px.
    assert (cap("denoise", 256), cap("denoise", 384)) == (3000, 4000)


@pytest.mark.parametrize(("noise_sigma", "kept"), [(None, True), (0.0, True), (25.0, False)],
                         ids=["clean-assumed", "clean-given", "noisy"])
def test_noise_free_inpainting_keeps_the_known_pixels(tmp_path: Path, noise_sigma: float | None, kept: bool) -> None:
    ys, xs = np.mgrid[0:64, 0:64] / 63
    # A smooth clean image: whether the known pixels are kept depends on noise_sigma alone (unset:
    # inpainting assumes 0, whatever the estimate would say).
    image = np.rint(255 * np.stack([0.2 + 0.6 * xs, 0.3 + 0.4 * ys, 0.5 + 0.3 * np.sin(4 * xs + 3 * ys)], -1))
    image = image.astype(np.uint8)
    source = _save(tmp_path / "in.png", image, "RGB")
    known = np.random.default_rng(1).random((64, 64)) < 0.5
    mask = tmp_path / "mask.png"
    Image.fromarray(np.where(known, 255, 0).astype(np.uint8)).save(mask)
    result = restore(_spec("inpaint", iterations=6, noise_sigma=noise_sigma), RestoreInputs(source, mask=mask),
                     tmp_path / "out")
    assert result.metrics["setup"]["kept_measured"] is kept
    for name in ("result", "best", "last"):
        written = np.asarray(_open(result.files[name]).convert("RGB"))
        # Six iterations fit nothing exactly: only a kept pixel equals its measured value everywhere.
        assert np.array_equal(written[known], image[known]) is kept
        assert not np.array_equal(written[~known], image[~known])


def test_bad_input_raises_before_anything_is_written(tmp_path: Path, make_image: ImageMaker) -> None:
    source = _save(tmp_path / "in.png", make_image(64, 64), "RGB")
    out = tmp_path / "out"
    with pytest.raises(InputError) as excinfo:
        restore(_spec("inpaint"), RestoreInputs(source), out)
    assert excinfo.value.code == "mask_required"
    with pytest.raises(InputError, match="iterations must be in 1..100, got 200"):
        restore(_spec("denoise", iterations=200), RestoreInputs(source), out, max_iterations=100)
    with pytest.raises(InputError) as excinfo:
        restore(_spec("denoise"), RestoreInputs(source), out, max_pixels=1000)
    assert excinfo.value.code == "image_too_large"
    assert not out.exists()


# -- cancel, checkpoint, resume -----------------------------------------------------------------------


class CancelAt(Callback):
    def __init__(self, at: int) -> None:
        self.at = at
        self.started_at: int | None = None

    def on_fit_start(self, state: FitState) -> None:
        self.started_at = state.iteration

    def on_step(self, state: FitState) -> None:
        if state.iteration == self.at:
            state.request_stop("canceled")


@pytest.fixture
def resumable(tmp_path: Path, make_image: ImageMaker) -> tuple[RestoreSpec, RestoreInputs]:
    source = _save(tmp_path / "in.png", make_image(64, 64), "RGB")
    return _spec("denoise", iterations=12, log_every=3, add_noise_sigma=25.0, seed=4), RestoreInputs(source)


def test_canceled_run_writes_outputs_and_keeps_its_checkpoint(
        tmp_path: Path, resumable: tuple[RestoreSpec, RestoreInputs]) -> None:
    spec, inputs = resumable
    out = tmp_path / "out"
    result = restore(spec, inputs, out, callbacks=[CancelAt(7)], checkpoint_every=5)
    assert result.stop_reason == "canceled" and result.iterations == 7
    assert result.files["result"].exists() and result.metrics["summary"]["stop_reason"] == "canceled"
    assert (out / CHECKPOINT_NAME).exists() and (out / "checkpoint.json").exists()


def test_resumed_restore_equals_an_uninterrupted_one(
        tmp_path: Path, resumable: tuple[RestoreSpec, RestoreInputs]) -> None:
    spec, inputs = resumable
    whole = restore(spec, inputs, tmp_path / "whole", checkpoint_every=5)
    out = tmp_path / "resumed"
    restore(spec, inputs, out, callbacks=[CancelAt(7)], checkpoint_every=5)

    probe = CancelAt(-1)
    resumed = restore(spec, inputs, out, callbacks=[probe], checkpoint_every=5)
    assert probe.started_at == 7
    assert resumed.stop_reason == "completed" and resumed.iterations == 12
    assert _without_elapsed(resumed.metrics["history"]) == _without_elapsed(whole.metrics["history"])
    for key in ("result", "best", "last"):
        np.testing.assert_array_equal(np.asarray(_open(resumed.files[key])), np.asarray(_open(whole.files[key])))
    assert not (out / CHECKPOINT_NAME).exists() and not (out / "checkpoint.json").exists()


@pytest.mark.parametrize("change", [{"seed": 5}, {"iterations": 14}], ids=["other-seed", "other-iterations"])
def test_a_changed_request_does_not_resume_a_stale_checkpoint(
        change: dict, tmp_path: Path, resumable: tuple[RestoreSpec, RestoreInputs]) -> None:
    spec, inputs = resumable
    out = tmp_path / "out"
    restore(spec, inputs, out, callbacks=[CancelAt(7)], checkpoint_every=5)
    probe = CancelAt(-1)
    changed = RestoreSpec(**(vars(spec) | change))
    result = restore(changed, inputs, out, callbacks=[probe], checkpoint_every=5)
    assert probe.started_at == 0
    assert result.iterations == changed.iterations


def test_resume_false_starts_over(tmp_path: Path, resumable: tuple[RestoreSpec, RestoreInputs]) -> None:
    spec, inputs = resumable
    out = tmp_path / "out"
    restore(spec, inputs, out, callbacks=[CancelAt(7)], checkpoint_every=5)
    probe = CancelAt(-1)
    restore(spec, inputs, out, callbacks=[probe], checkpoint_every=5, resume=False)
    assert probe.started_at == 0


# -- on a GPU (skipped without one) ------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize(("task", "changes", "size"),
                         [("denoise", {"add_noise_sigma": 25.0}, 64), ("superres", {}, 16),
                          ("inpaint", {"drop_fraction": 0.5}, 64)])
def test_restore_on_cuda(task: str, changes: dict, size: int, tmp_path: Path, make_image: ImageMaker) -> None:
    source = _save(tmp_path / "in.png", make_image(size, size), "RGBA")
    out = tmp_path / "out"
    result = restore(_spec(task, device="cuda", snapshot_every=2, **changes), RestoreInputs(source), out,
                     checkpoint_every=2)
    assert result.metrics["setup"]["device"].startswith("cuda")
    image = _open(result.files["result"])
    assert image.size == (64, 64) and image.mode == "RGBA"
    assert len(result.snapshots) == 2 and not (out / CHECKPOINT_NAME).exists()
