"""Tests of dip_engine.presets: the paper's hyperparameters, the CPU preset and request overrides."""

from __future__ import annotations

import pytest

from dip_engine.config import FitConfig
from dip_engine.presets import SizeCap, apply_overrides
from dip_engine.problems import default_iterations, get_problem, preset_config, resolve
from dip_engine.spec import PRESETS, SCALES, TASKS, RestoreSpec


def test_paper_denoise_is_the_notebook() -> None:
    run = preset_config("paper", "denoise")
    assert (run.net.name, run.net.levels, run.net.channels, run.net.skip_channels) == ("skip", 5, 128, 4)
    assert run.net.upsample_mode == "bilinear" and run.net.input_channels == 32 and run.net.input_scale == 0.1
    fit = run.fit
    assert (fit.iterations, fit.lr, fit.reg_noise_std, fit.ema) == (3000, 0.01, pytest.approx(1 / 30), 0.99)
    # denoising.ipynb: exp_weight 0.99 seeded with the first output, its backtracking rule, the raw
    # output net(z) at the end, no early stopping.
    assert (fit.ema_start, fit.backtrack_db, fit.backtrack_rule) == ("first", 5.0, "reference")
    assert fit.early_stop is None and fit.output == "raw" and fit.log_every == 100


@pytest.mark.parametrize(("scale", "iterations", "noise"), [(2, 2000, 0.03), (4, 2000, 0.03), (8, 4000, 0.05)])
def test_paper_superres(scale: int, iterations: int, noise: float) -> None:
    run = preset_config("paper", "superres", scale=scale)
    assert (run.fit.iterations, run.fit.reg_noise_std) == (iterations, noise)
    assert run.downsample_kernel == "lanczos2" and run.net.skip_channels == 4
    # super-resolution.ipynb has no averaging and no backtracking.
    assert (run.fit.ema, run.fit.backtrack_db, run.fit.early_stop, run.fit.output) == (0.0, None, None, "raw")


def test_paper_inpaint_holes_and_scattered_pixels() -> None:
    holes = preset_config("paper", "inpaint")  # inpainting.ipynb, kate.png
    assert (holes.net.skip_channels, holes.net.upsample_mode, holes.fit.iterations) == (128, "nearest", 6001)
    scattered = preset_config("paper", "inpaint", scattered=True)  # restoration.ipynb, barbara
    assert (scattered.net.skip_channels, scattered.net.upsample_mode) == (4, "bilinear")
    assert (scattered.fit.iterations, scattered.fit.lr, scattered.fit.reg_noise_std) == (11000, 0.001, 0.03)
    assert scattered.fit.early_stop is None and scattered.fit.backtrack_db is None


def test_paper_dejpeg_is_the_snail_set_up() -> None:
    run = preset_config("paper", "dejpeg")
    assert run.net.input_channels == 3 and run.net.upsample_mode == "bilinear"
    assert run.net.level_channels() == ((8, 16, 32, 64, 128), (8, 16, 32, 64, 128), (0, 0, 0, 4, 4))
    assert (run.fit.iterations, run.fit.reg_noise_std, run.fit.backtrack_rule) == (2400, pytest.approx(1 / 30), "reference")


def test_quality_keeps_the_paper_nets_with_our_loop() -> None:
    quality = preset_config("quality", "inpaint", scattered=True)
    assert (quality.net.channels, quality.fit.iterations, quality.fit.lr) == (128, 4000, 0.01)
    assert quality.fit.ema_start == "debiased" and quality.fit.backtrack_rule == "rollback"
    assert quality.fit.early_stop is not None and quality.fit.output == "ema"


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("scattered", [False, True])
def test_fast_is_no_larger_shorter_and_stops_early(task: str, scattered: bool) -> None:
    fast = preset_config("fast", task, scattered=scattered, pixels=96 * 96)
    quality = preset_config("quality", task, scattered=scattered)
    assert fast.net.level_channels()[0] <= quality.net.level_channels()[0]
    # A cap, not a budget: 3000 at most at 96 px; what makes it fast is the narrower net in bf16.
    assert fast.fit.iterations <= max(quality.fit.iterations, 3000)
    assert fast.fit.early_stop is not None and fast.fit.early_stop.patience < quality.fit.early_stop.patience
    # The detector waits for the fit to reach the measurement's noise (noise-free tasks run on), and the
    # net computes in bf16 wherever the hardware has it.
    assert fast.fit.early_stop.noise_gate == 1.0
    assert fast.fit.precision == "auto" and fast.fit.channels_last


def test_noise_free_tasks_learn_slower_and_their_measurements_are_taken_as_exact() -> None:
    # Chosen from 256 px runs (docs/benchmarks.md): 0.005 beat 0.01 (and 0.01 beat 0.02 for superres).
    assert preset_config("fast", "superres").fit.lr == 0.005
    assert preset_config("fast", "inpaint", scattered=True).fit.lr == 0.005
    # Only scattered pixels were measured; holes and the noisy tasks keep 0.01.
    assert preset_config("fast", "inpaint", scattered=False).fit.lr == 0.01
    assert preset_config("fast", "denoise").fit.lr == 0.01
    exact = {"superres", "inpaint"}
    assert all(get_problem(task).assumed_noise_sigma == 0.0 for task in exact)
    assert all(get_problem(task).assumed_noise_sigma is None for task in TASKS if task not in exact)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("scale", SCALES)
def test_every_preset_is_a_valid_config(preset: str, task: str, scale: int) -> None:
    run = preset_config(preset, task, scale=scale)
    assert isinstance(run.fit, FitConfig) and run.fit.iterations >= run.fit.log_every


def test_overrides_apply() -> None:
    run = resolve(RestoreSpec(task="denoise", iterations=100, snapshot_every=10, early_stop="off"))
    assert run.fit.iterations == 100 and run.fit.snapshot_every == 10 and run.fit.early_stop is None
    # Short runs still log about 20 points.
    assert run.fit.log_every == 5
    assert resolve(RestoreSpec(task="denoise", iterations=3)).fit.log_every == 1
    assert resolve(RestoreSpec(task="denoise", iterations=100, log_every=7)).fit.log_every == 7
    assert resolve(RestoreSpec(task="denoise", early_stop="auto")).fit.early_stop is not None
    # "auto" turns the paper's ES-WMV on for the paper preset, which runs without it.
    assert resolve(RestoreSpec(task="denoise", preset="paper", early_stop="auto")).fit.early_stop is not None
    # Unset fields keep the preset's values.
    assert resolve(RestoreSpec(task="denoise", preset="paper")) == preset_config("paper", "denoise")


def test_size_cap_grows_linearly_in_the_side_between_its_two_sizes() -> None:
    cap = SizeCap(small=3000, large=5000, from_side=96, to_side=256)
    sides = (16, 96, 128, 160, 192, 224, 256, 512)
    assert [cap.at(side * side) for side in sides] == [3000, 3000, 3500, 4000, 4000, 4500, 5000, 5000]
    assert cap.at(128 * 512) == 5000  # the side of the pixel count, not the short side
    assert cap.at(None) == 5000  # not read yet: the most it may run
    assert SizeCap(small=3000, large=5000, from_side=96, to_side=256, step=100).at(128 * 128) == 3400


def test_the_noise_free_tasks_run_longer_on_larger_images() -> None:
    def cap(task: str, side: int, scattered: bool = False) -> int:
        return preset_config("fast", task, scattered=scattered, pixels=side * side).fit.iterations

    growing = [3000, 3500, 5000, 5000]
    assert [cap("inpaint", side, scattered=True) for side in (96, 128, 256, 512)] == growing
    assert [cap("superres", side) for side in (96, 128, 256, 512)] == growing  # the output's side
    # Denoising grows later: its detector ends most runs before 3000 up to 256 px.
    assert [cap("denoise", side) for side in (96, 256, 384, 512, 1024)] == [3000, 3000, 4000, 5000, 5000]
    for task in TASKS:
        if task not in ("inpaint", "superres", "denoise"):
            assert cap(task, 96) == cap(task, 512) == preset_config("fast", task).fit.iterations
    assert cap("inpaint", 96) == cap("inpaint", 512) == 3000  # masks of holes: not measured
    # The other presets keep their protocols' fixed counts.
    assert preset_config("quality", "inpaint", scattered=True, pixels=512 * 512).fit.iterations == 4000
    assert preset_config("paper", "inpaint", scattered=True, pixels=96 * 96).fit.iterations == 11000
    assert preset_config("paper", "superres", pixels=512 * 512).fit.iterations == 2000


def test_only_denoising_has_the_noise_floor() -> None:
    # Measured on denoising only (docs/benchmarks.md, "The noise floor").
    assert preset_config("fast", "denoise").fit.early_stop.noise_floor == 0.8
    for task in TASKS:
        stop = preset_config("fast", task).fit.early_stop
        if task != "denoise" and stop is not None:
            assert stop.noise_floor is None, task


def test_default_iterations_follow_the_preset_and_the_request() -> None:
    assert default_iterations(RestoreSpec(task="denoise", preset="paper")) == 3000
    assert default_iterations(RestoreSpec(task="denoise")) == 5000
    assert default_iterations(RestoreSpec(task="deblur")) == 3000
    # Before the image is read: the most it may run, and an uploaded mask may be scattered pixels.
    assert default_iterations(RestoreSpec(task="inpaint")) == 5000
    assert default_iterations(RestoreSpec(task="inpaint", drop_fraction=0.5)) == 5000
    assert default_iterations(RestoreSpec(task="superres")) == 5000
    assert default_iterations(RestoreSpec(task="inpaint", preset="quality", drop_fraction=0.5)) == 4000
    assert default_iterations(RestoreSpec(task="inpaint", preset="paper", drop_fraction=0.5)) == 11000
    assert default_iterations(RestoreSpec(task="superres", iterations=42)) == 42


def test_unknown_preset_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match="'slow'"):
        preset_config("slow", "denoise")  # type: ignore[arg-type]


def test_overrides_set_any_field_by_dotted_path() -> None:

    run = apply_overrides(preset_config("fast", "denoise"),
                          {"fit.lr": "0.005", "net.channels": "96", "fit.early_stop.patience": 300, "fit.snapshot_every": "none"})
    assert (run.fit.lr, run.net.channels, run.fit.early_stop.patience, run.fit.snapshot_every) == (0.005, 96, 300, None)
    quality = apply_overrides(preset_config("quality", "inpaint", scattered=True), {"fit.iterations": "11000", "fit.lr": "0.001"})
    assert (quality.fit.iterations, quality.fit.lr) == (11000, 0.001)


def test_overrides_reproduce_the_library_set_up() -> None:

    # inpainting.ipynb, library.png (skip_depth6), through --set.
    run = apply_overrides(preset_config("paper", "inpaint"), {
        "net.channels_down": "16,32,64,128,128,128", "net.channels_up": "16,32,64,128,128,128",
        "net.channels_skip": "0,0,0,0,0,0", "net.kernel_down": "5", "net.need1x1_up": "false",
        "net.input_channels": "1", "fit.reg_noise_std": "0", "fit.iterations": "3001"})
    assert run.net.depth == 6 and run.net.size_multiple == 64
    assert run.net.level_channels()[2] == (0,) * 6 and run.net.kernel_down == 5 and not run.net.need1x1_up
    assert run.fit.reg_noise_std == 0.0 and run.fit.iterations == 3001


@pytest.mark.parametrize(("path", "value", "message"), [
    ("fit.bogus", "1", "unknown setting 'fit.bogus'"),
    ("fit.lr", "fast", "fit.lr needs a float"),
    ("fit.lr", "-1", "lr must be > 0"),
    ("net.channels", "1.5", "net.channels needs a int"),
    ("net.channels_down", "8,x", "comma-separated list of ints"),
    ("net.kernel_down", "4", "must be an odd int"),
    ("net.activation", "tanh", "activation must be one of"),
    ("fit.backtrack_rule", "sometimes", "backtrack_rule must be"),
])
def test_overrides_reject_bad_paths_and_values(path: str, value: str, message: str) -> None:

    with pytest.raises(ValueError, match=message):
        apply_overrides(preset_config("fast", "denoise"), {path: value})
