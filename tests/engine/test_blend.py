"""Tests of dip_engine.blend and of how a run holds measured pixels out to weigh the net against a
classical answer (inpainting: biharmonic; denoising: NL-means)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import uniform_filter
from skimage.restoration import inpaint_biharmonic

from dip_engine.blend import blend_weight, hold_out, stein, weigh
from dip_engine.errors import InputError
from dip_engine.problems import DENOISE_HOLDOUT, INPAINT_HOLDOUT, INPAINT_HOLDOUT_FROM_SIDE, get_problem, preset_config
from dip_engine.restore import RestoreInputs, RestoreRequest, _prepare, restore
from dip_engine.restore import RestoreLimits
from dip_engine.spec import RestoreSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_weight_is_the_least_squares_one() -> None:
    rng = np.random.default_rng(0)
    net, fill = rng.random(500), rng.random(500)
    assert blend_weight(net, fill, 0.3 * net + 0.7 * fill) == pytest.approx(0.3)
    assert blend_weight(net, fill, net) == pytest.approx(1.0)
    assert blend_weight(net, fill, fill) == pytest.approx(0.0)
    # Outside [0, 1] the weight would extrapolate past one of the two fills: it is clipped.
    assert blend_weight(net, fill, 1.5 * net - 0.5 * fill) == 1.0
    assert blend_weight(net, fill, 1.5 * fill - 0.5 * net) == 0.0
    assert blend_weight(net, net, rng.random(500)) == 1.0


def test_weigh_scores_each_fill_on_the_held_pixels_only() -> None:
    rng = np.random.default_rng(1)
    truth = rng.random((16, 16, 1))
    held = np.zeros((16, 16), bool)
    held[::4, ::4] = True
    net = truth + 0.1 * (~held)[..., None]  # exact on the held pixels, wrong elsewhere
    fill = truth + 0.05
    blend = weigh(net, fill, truth, held)
    assert blend.held_pixels == 16 and blend.alpha == 1.0 and blend.psnr_net is None
    assert blend.psnr_fill == pytest.approx(-10 * np.log10(0.05**2))


def test_hold_out_draws_about_the_fraction_from_the_known_pixels() -> None:
    known = np.random.default_rng(2).random((200, 200)) < 0.5
    held = hold_out(known, 0.03, np.random.default_rng(3))
    assert not (held & ~known).any()
    assert held.sum() / known.sum() == pytest.approx(0.03, rel=0.15)


def _scene(tmp_path: Path, side: int = 64) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """A smooth image (biharmonic interpolates it almost exactly) and a scattered mask."""
    ys, xs = np.mgrid[0:side, 0:side] / (side - 1)
    image = np.rint(255 * np.stack([0.2 + 0.6 * xs, 0.3 + 0.4 * ys, 0.5 + 0.3 * np.sin(4 * xs + 3 * ys)], -1))
    image = image.astype(np.uint8)
    source = tmp_path / "in.png"
    Image.fromarray(image).save(source)
    known = np.random.default_rng(1).random((side, side)) < 0.5
    mask = tmp_path / "mask.png"
    Image.fromarray(np.where(known, 255, 0).astype(np.uint8)).save(mask)
    return source, mask, image, known


def _spec(**changes: object) -> RestoreSpec:
    return RestoreSpec(**({"task": "inpaint", "iterations": 6, "log_every": 2, "device": "cpu"} | changes))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2)))


# The preset holds pixels out from 256 px a side; these small scenes ask for it.
HOLD = {"holdout": str(INPAINT_HOLDOUT)}


def test_the_fast_preset_holds_out_scattered_pixels_from_256_px() -> None:
    side = INPAINT_HOLDOUT_FROM_SIDE
    assert preset_config("fast", "inpaint", scattered=True, pixels=side * side).holdout == INPAINT_HOLDOUT
    assert preset_config("fast", "inpaint", scattered=True, pixels=512 * 512).holdout == INPAINT_HOLDOUT
    assert preset_config("fast", "inpaint", scattered=True, pixels=side * side - 1).holdout == 0.0
    for config in (preset_config("fast", "inpaint", scattered=False, pixels=512 * 512),
                   preset_config("quality", "inpaint", scattered=True, pixels=512 * 512),
                   preset_config("paper", "inpaint", scattered=True, pixels=512 * 512),
                   preset_config("fast", "superres", pixels=512 * 512)):
        assert config.holdout == 0.0


def test_the_net_never_sees_the_held_out_pixels(tmp_path: Path) -> None:
    source, mask, _, known = _scene(tmp_path)
    request = RestoreRequest(_spec(), RestoreInputs(source, mask=mask), tmp_path / "out", overrides=HOLD)
    prepared = _prepare(request, RestoreLimits())
    assert prepared.run.holdout == INPAINT_HOLDOUT and prepared.held is not None
    held = prepared.held
    assert held.any() and not (held & ~known).any()
    fitted_mask = prepared.job.physics.mask[0, 0, :64, :64].numpy().astype(bool)
    assert np.array_equal(fitted_mask, known & ~held)
    assert not prepared.job.y[0, :, :64, :64].numpy()[:, held].any()
    # The answer's own measurement still has them.
    assert np.array_equal(prepared.measurement.mask, known)


def test_the_answer_keeps_every_known_pixel_and_leans_on_the_better_fill(tmp_path: Path) -> None:
    source, mask, image, known = _scene(tmp_path)
    blended = restore(_spec(), RestoreInputs(source, mask=mask), tmp_path / "blend", overrides=HOLD)
    alone = restore(_spec(), RestoreInputs(source, mask=mask), tmp_path / "alone")
    blend = blended.metrics["setup"]["blend"]
    assert "blend" not in alone.metrics["setup"]
    # Six iterations leave the net far from this smooth image, which biharmonic fills almost exactly.
    assert blend["alpha"] < 0.2 and blend["psnr_fill"] > blend["psnr_net"] + 10
    assert blend["holdout"] == INPAINT_HOLDOUT and blend["held_pixels"] > 0
    truth = image.astype(np.float64)
    biharmonic = 255 * inpaint_biharmonic(truth * known[..., None] / 255, ~known, channel_axis=-1)
    for name in ("result", "best", "last"):
        written = np.asarray(Image.open(blended.files[name]).convert("RGB"))
        assert np.array_equal(written[known], image[known])
    written = np.asarray(Image.open(blended.files["result"]).convert("RGB"))
    net_only = np.asarray(Image.open(alone.files["result"]).convert("RGB"))
    assert _psnr(written, truth) > _psnr(net_only, truth) + 5
    assert _psnr(written, truth) > _psnr(np.clip(biharmonic, 0, 255), truth) - 1


def test_noisy_known_pixels_are_not_held_out(tmp_path: Path) -> None:
    source, mask, _, _ = _scene(tmp_path)
    request = RestoreRequest(_spec(noise_sigma=25.0), RestoreInputs(source, mask=mask), tmp_path / "out",
                             overrides=HOLD)
    # Noisy known pixels are not kept in the answer, so they are no clean validation set either.
    assert _prepare(request, RestoreLimits()).held is None


def test_holes_and_small_images_are_not_blended_by_default(tmp_path: Path) -> None:
    source, mask, _, _ = _scene(tmp_path)
    known = np.ones((64, 64), bool)
    known[20:40, 20:40] = False
    holes = tmp_path / "holes.png"
    Image.fromarray(np.where(known, 255, 0).astype(np.uint8)).save(holes)
    for name, upload in (("holes", holes), ("small", mask)):
        result = restore(_spec(), RestoreInputs(source, mask=upload), tmp_path / name)
        assert result.metrics["config"]["holdout"] == 0.0 and "blend" not in result.metrics["setup"]


def test_a_holdout_out_of_range_is_a_bad_parameter(tmp_path: Path) -> None:
    source, mask, _, _ = _scene(tmp_path)
    with pytest.raises(InputError) as caught:
        restore(_spec(), RestoreInputs(source, mask=mask), tmp_path / "out", overrides={"holdout": "0.6"})
    assert caught.value.code == "invalid_parameter" and "holdout" in caught.value.message
    assert not (tmp_path / "out").exists()


# -- denoising: the net weighed against NL-means --------------------------------------------


def _noisy_scene(tmp_path: Path, side: int = 64) -> tuple[Path, np.ndarray]:
    """A smooth colour image: the net after a few iterations is far from it, NL-means close."""
    ys, xs = np.mgrid[0:side, 0:side] / (side - 1)
    image = np.rint(255 * np.stack([0.2 + 0.6 * xs, 0.3 + 0.4 * ys, 0.5 + 0.3 * np.sin(4 * xs + 3 * ys)], -1))
    source = tmp_path / "clean.png"
    Image.fromarray(image.astype(np.uint8)).save(source)
    return source, image


def _denoise(**changes: object) -> RestoreSpec:
    return _spec(**({"task": "denoise", "add_noise_sigma": 25.0} | changes))


def test_the_fast_denoising_preset_holds_out_pixels_at_every_size() -> None:
    for pixels in (64 * 64, 256 * 256, 512 * 512):
        assert preset_config("fast", "denoise", pixels=pixels).holdout == DENOISE_HOLDOUT
    for preset, task in (("quality", "denoise"), ("paper", "denoise"), ("fast", "dejpeg"), ("fast", "deblur")):
        assert preset_config(preset, task, pixels=256 * 256).holdout == 0.0


def test_denoising_fits_all_but_the_held_out_pixels(tmp_path: Path) -> None:
    source, _ = _noisy_scene(tmp_path)
    prepared = _prepare(RestoreRequest(_denoise(), RestoreInputs(source), tmp_path / "out"), RestoreLimits())
    held = prepared.held
    assert held is not None and held.sum() / held.size == pytest.approx(DENOISE_HOLDOUT, rel=0.35)
    fitted_mask = prepared.job.physics.mask[0, 0, :64, :64].numpy().astype(bool)
    assert np.array_equal(fitted_mask, ~held)
    assert not prepared.job.y[0, :, :64, :64].numpy()[:, held].any()
    assert prepared.measurement.mask is None  # the answer's measurement is the whole noisy image


def test_nl_means_without_the_held_pixels_owes_nothing_to_their_values() -> None:
    rng = np.random.default_rng(4)
    y = rng.random((32, 32, 3)).astype(np.float32)
    held = hold_out(np.ones((32, 32), bool), 0.05, np.random.default_rng(5))
    changed = y.copy()
    changed[held] = rng.random((int(held.sum()), 3))
    answer = get_problem("denoise").classical_answer
    assert answer is not None
    first, second = answer(y, ~held, 0.1), answer(changed, ~held, 0.1)
    assert np.array_equal(first, second)
    # With every pixel measured, the values count.
    assert not np.array_equal(answer(y, np.ones_like(held), 0.1), answer(changed, np.ones_like(held), 0.1))


def test_noise_on_the_held_pixels_leaves_the_weight_unbiased() -> None:
    # Noise independent of both answers adds the same to both errors: the weight chosen against the
    # noisy values is the one chosen against the clean ones, up to its sampling spread.
    rng = np.random.default_rng(6)
    clean = rng.random((128, 128, 3))
    net, fill = clean + 0.05 * rng.standard_normal(clean.shape), clean + 0.08 * rng.standard_normal(clean.shape)
    held = hold_out(np.ones((128, 128), bool), 0.5, np.random.default_rng(7))
    noisy = clean + 0.1 * rng.standard_normal(clean.shape)
    on_clean, on_noisy = weigh(net, fill, clean, held).alpha, weigh(net, fill, noisy, held).alpha
    assert on_clean == pytest.approx(0.08**2 / (0.05**2 + 0.08**2), abs=0.03)
    assert on_noisy == pytest.approx(on_clean, abs=0.05)


def test_a_denoising_answer_leans_on_nl_means_where_the_net_is_far(tmp_path: Path) -> None:
    source, image = _noisy_scene(tmp_path)
    blended = restore(_denoise(), RestoreInputs(source), tmp_path / "blend")
    alone = restore(_denoise(), RestoreInputs(source), tmp_path / "alone", overrides={"holdout": "0"})
    blend = blended.metrics["setup"]["blend"]
    assert "blend" not in alone.metrics["setup"] and not blended.metrics["setup"]["kept_measured"]
    # Six iterations leave the net far from the image, which NL-means denoises well.
    assert blend["alpha"] < 0.2 and blend["psnr_fill"] > blend["psnr_net"] + 3
    # Noisy held-out values: the weight is the mean of the two estimates.
    assert blend["alpha_stein"] is not None
    assert blend["alpha"] == pytest.approx((blend["alpha_without"] + blend["alpha_stein"]) / 2)
    written = np.asarray(Image.open(blended.files["result"]).convert("RGB"))
    net_only = np.asarray(Image.open(alone.files["result"]).convert("RGB"))
    assert _psnr(written, image) > _psnr(net_only, image) + 5


def test_the_divergence_is_exact_for_a_linear_answer() -> None:
    rng = np.random.default_rng(8)
    y = rng.random((24, 24, 3)).astype(np.float32)
    held = hold_out(np.ones((24, 24), bool), 0.1, np.random.default_rng(9))
    entries = 3 * int(held.sum())
    assert stein(lambda v: 0.25 * v, y, held, 0.1, rng).divergence == pytest.approx(0.25 * entries, rel=1e-3)
    # A 3x3 mean takes a ninth of each pixel's own value, whatever the others do.
    box = lambda v: uniform_filter(v.astype(np.float64), size=(3, 3, 1), mode="mirror")
    assert stein(box, y, held, 0.1, rng).divergence == pytest.approx(entries / 9, rel=0.02)


def test_steins_term_takes_out_an_answers_dependence_on_the_noise() -> None:
    # An answer that keeps half of each pixel's noise looks better against the noisy values than it
    # is; the corrected weight is the one the clean image gives.
    rng = np.random.default_rng(10)
    clean = rng.random((128, 128, 3))
    noise = 0.1 * rng.standard_normal(clean.shape)
    net = clean + 0.06 * rng.standard_normal(clean.shape)
    own_error = 0.02 * rng.standard_normal(clean.shape)
    classical = lambda v: 0.5 * v + 0.5 * clean + own_error
    held = hold_out(np.ones((128, 128), bool), 0.3, np.random.default_rng(11))
    noisy = stein(classical, clean + noise, held, 0.1, np.random.default_rng(12))
    on_clean = blend_weight(net[held], noisy.answer[held], clean[held])
    naive = blend_weight(net[held], noisy.answer[held], (clean + noise)[held])
    corrected = blend_weight(net[held], noisy.answer[held], (clean + noise)[held], correction=noisy.correction)
    assert corrected == pytest.approx(on_clean, abs=0.03)
    assert naive < on_clean - 0.1
    # With both estimates, the weight is their mean.
    blend = weigh(net, classical(clean + noise), clean + noise, held, noisy=noisy)
    assert blend.alpha == pytest.approx((blend.alpha_without + blend.alpha_stein) / 2)
