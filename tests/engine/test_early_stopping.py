"""Tests of dip_engine.early_stopping: the windowed variance and the ES-WMV detector."""

from __future__ import annotations

from dataclasses import replace

import io
import math

import numpy as np
import pytest
import torch

from dip_engine.config import EarlyStopConfig
from dip_engine.early_stopping import EarlyStopping, WindowedVariance


def _u_curve(iterations: int, minimum_at: int) -> list[float]:
    """A U-shaped variance curve, strictly decreasing to ``minimum_at`` then strictly increasing."""
    return [0.01 + 1e-4 * (t - minimum_at) ** 2 for t in range(1, iterations + 1)]


def _feed(detector: EarlyStopping, curve: list[float], *, first: int = 1) -> int | None:
    """Feed ``curve`` from iteration ``first`` until should_stop fires, as the loop does; returns that iteration."""
    for t, value in enumerate(curve, start=first):
        detector.update_variance(t, torch.tensor(value), torch.full((1, 1, 2, 2), float(t)))
        if detector.should_stop(t):
            return t
    return None


# -- ES-WMV on synthetic variance curves ----------------------------------------------


@pytest.mark.parametrize(("minimum_at", "patience"), [(300, 100), (57, 1000), (1, 10)])
def test_finds_the_minimum_of_a_u_curve_and_stops_patience_after_it(minimum_at: int, patience: int) -> None:
    detector = EarlyStopping(EarlyStopConfig(window=100, patience=patience))
    iterations = minimum_at + patience + 50
    curve = _u_curve(iterations, minimum_at)

    for t, value in enumerate(curve, start=1):
        detector.update_variance(t, torch.tensor(value), torch.full((1, 1, 2, 2), float(t)))
        # Fires exactly when `patience` iterations have passed without a new minimum.
        assert detector.should_stop(t) == (t >= minimum_at + patience), t
        assert detector.detected_iteration == min(t, minimum_at)

    assert detector.detected_iteration == minimum_at
    # The remembered candidate is the one passed at the minimum.
    assert torch.equal(detector.candidate, torch.full((1, 1, 2, 2), float(minimum_at)))
    assert float(detector.last_variance) == pytest.approx(curve[-1])


def test_a_noisy_u_curve_keeps_its_global_minimum() -> None:
    rng = np.random.default_rng(0)
    curve = [v * (1 + 0.05 * rng.standard_normal()) for v in _u_curve(2000, 700)]
    detector = EarlyStopping(EarlyStopConfig(window=100, patience=400))
    stopped = _feed(detector, curve)
    expected = int(np.argmin(curve[:stopped])) + 1
    assert detector.detected_iteration == expected
    assert abs(expected - 700) < 100
    assert stopped == expected + 400


def test_a_later_deeper_minimum_within_patience_resets_the_count() -> None:
    # A plateau with one later dip: the dip counts and the stop moves with it.
    curve = [1.0] * 50 + [0.5] + [0.6] * 149
    detector = EarlyStopping(EarlyStopConfig(patience=100))
    assert _feed(detector, curve) == 51 + 100
    assert detector.detected_iteration == 51


def test_equal_values_are_not_a_new_minimum() -> None:
    detector = EarlyStopping(EarlyStopConfig(patience=5))
    assert _feed(detector, [1.0] * 20) == 6
    assert detector.detected_iteration == 1


def test_nothing_is_detected_before_the_first_value() -> None:
    detector = EarlyStopping(EarlyStopConfig())
    assert detector.detected_iteration is None
    assert detector.candidate is None
    assert not detector.should_stop(10_000)


# -- min_delta ----------------------------------------------------------------------------


def test_min_delta_counts_only_relative_improvements() -> None:
    # 0.9 undercuts 1.0 by 10%: new with min_delta 0, not with 0.2. 0.79 undercuts by 21%.
    curve = [1.0, 0.9, 0.85, 0.79, 0.7, 0.65]
    paper = EarlyStopping(EarlyStopConfig(min_delta=0.0, patience=100))
    _feed(paper, curve)
    assert paper.detected_iteration == 6

    knee = EarlyStopping(EarlyStopConfig(min_delta=0.2, patience=100))
    detected = []
    for t, value in enumerate(curve, start=1):
        knee.update_variance(t, torch.tensor(value), torch.zeros(1))
        detected.append(knee.detected_iteration)
    # 0.7 and 0.65 are within 20% of 0.79.
    assert detected == [1, 1, 1, 4, 4, 4]


def test_min_delta_on_a_slowly_creeping_curve_stops_early() -> None:
    # Decreasing by 0.1% per iteration forever: the paper's rule never stops, a 20% margin does.
    curve = [0.999**t for t in range(3000)]
    assert _feed(EarlyStopping(EarlyStopConfig(patience=200)), curve) is None
    knee = EarlyStopping(EarlyStopConfig(patience=200, min_delta=0.2))
    stopped = _feed(knee, curve)
    assert stopped is not None and stopped == knee.detected_iteration + 200
    # Each counted minimum is >= 20% below the previous one: 0.999^224 ~ 0.8, so
    # minima come every ~224 iterations, which never fits in a patience of 200.
    assert knee.detected_iteration == 1


@pytest.mark.parametrize("min_delta", [-0.1, 1.0])
def test_min_delta_outside_0_1_is_refused(min_delta: float) -> None:
    with pytest.raises(ValueError, match=f"min_delta must be in \\[0, 1\\), got {min_delta}"):
        EarlyStopConfig(min_delta=min_delta)


# -- WindowedVariance ---------------------------------------------------------------------


@pytest.mark.parametrize("window", [2, 7, 100])
def test_windowed_variance_equals_numpy_over_the_last_window(window: int) -> None:
    rng = np.random.default_rng(window)
    steps = 4 * window + 3  # the ring buffer wraps and re-sums several times
    inputs = rng.random((steps, 3, 8, 8))
    tracker = WindowedVariance(window)
    for t in range(steps):
        value = tracker.update(torch.from_numpy(inputs[t]).float())
        assert tracker.count == t + 1
        if t + 1 < window:
            assert value is None
            continue
        last = inputs[t + 1 - window : t + 1].astype(np.float32).astype(np.float64)
        expected = last.var(axis=0).mean()  # per-pixel variance (ddof 0), averaged over pixels
        assert value is not None and value.dim() == 0
        assert float(value) == pytest.approx(expected, rel=1e-5), t


def test_windowed_variance_does_not_drift_on_long_offset_sequences() -> None:
    # Values near 0.5 with a small spread: E[x^2] - E[x]^2 cancels badly in float32,
    # and running sums would accumulate error without the periodic re-sum.
    window, steps = 10, 5000
    rng = np.random.default_rng(1)
    inputs = (0.5 + 0.01 * rng.standard_normal((steps, 1, 16, 16))).astype(np.float32)
    tracker = WindowedVariance(window)
    for t in range(steps):
        value = tracker.update(torch.from_numpy(inputs[t]))
    expected = inputs[-window:].astype(np.float64).var(axis=0).mean()
    assert float(value) == pytest.approx(expected, rel=1e-2)


def test_windowed_variance_is_zero_for_a_constant_sequence_and_never_negative() -> None:
    tracker = WindowedVariance(5)
    values = [tracker.update(torch.full((3, 4, 4), 0.3)) for _ in range(12)]
    assert all(float(v) == 0.0 for v in values[4:])


def test_windowed_variance_detaches_and_keeps_the_input_device_and_float32() -> None:
    tracker = WindowedVariance(2)
    x = torch.rand(1, 4, 4, requires_grad=True)
    tracker.update(x)
    value = tracker.update(x.double() * 2)
    assert value.dtype == torch.float32 and not value.requires_grad


def _through_a_file(state: dict) -> dict:
    """What a checkpoint does to a state dict."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_windowed_variance_state_dict_round_trip_continues_identically() -> None:
    rng = np.random.default_rng(2)
    inputs = [torch.from_numpy(rng.random((2, 4, 4))).float() for _ in range(30)]
    a, b = WindowedVariance(6), WindowedVariance(6)
    for x in inputs[:13]:
        a.update(x)
    b.load_state_dict(_through_a_file(a.state_dict()))
    for x in inputs[13:]:
        assert torch.equal(a.update(x), b.update(x))


def test_windowed_variance_refuses_a_window_below_2() -> None:
    with pytest.raises(ValueError, match="got 1"):
        WindowedVariance(1)


# -- EarlyStopping.update on outputs --------------------------------------------------------


def test_update_waits_for_a_full_window_then_tracks_the_calmest_output() -> None:
    # Outputs jitter a lot, then settle (iterations 61-90), then jitter again. The patience
    # outlasts the noisy start, whose first full window is the minimum until the calm comes.
    window, patience = 10, 60
    detector = EarlyStopping(EarlyStopConfig(window=window, patience=patience))
    generator = torch.Generator().manual_seed(0)
    stop_at = None
    for t in range(1, 201):
        spread = 0.001 if 61 <= t <= 90 else 0.3
        out = 0.5 + spread * torch.randn((1, 3, 8, 8), generator=generator)
        detector.update(t, out)
        if t < window:
            assert detector.detected_iteration is None and detector.last_variance is None
        if stop_at is None and detector.should_stop(t):
            stop_at = t
    # Only the windows ending at iterations 70-90 hold calm outputs alone.
    assert 70 <= detector.detected_iteration <= 90
    assert stop_at == detector.detected_iteration + patience


def test_update_remembers_the_candidate_rather_than_the_watched_signal() -> None:
    detector = EarlyStopping(EarlyStopConfig(window=2, patience=5))
    for t in range(1, 6):
        detector.update(t, torch.full((1, 1, 2, 2), 0.5), candidate=torch.full((1, 1, 2, 2), float(t)))
    # Constant outputs: variance 0 from t=2 on, and 0 is never undercut.
    assert detector.detected_iteration == 2
    assert torch.equal(detector.candidate, torch.full((1, 1, 2, 2), 2.0))


def test_early_stopping_state_dict_round_trip() -> None:
    curve = _u_curve(200, 80)
    a = EarlyStopping(EarlyStopConfig(patience=50))
    _feed(a, curve[:60])
    b = EarlyStopping(EarlyStopConfig(patience=50))
    b.load_state_dict(_through_a_file(a.state_dict()))
    assert _feed(a, curve[60:], first=61) == _feed(b, curve[60:], first=61) == 130
    assert a.detected_iteration == b.detected_iteration == 80
    assert torch.equal(a.candidate, b.candidate)


# -- the noise gate (discrepancy principle) -------------------------------------------------------


def _improving_run(detector: EarlyStopping, *, iterations: int = 3000, log_every: int = 25) -> tuple[int | None, float]:
    """A synthetic run built for this: a noise-free measurement ``y = clean`` that the averaged
    output approaches slowly (its error decays as exp(-t / 1000)), with a constant jitter in the
    raw outputs. Its averaged-output PSNR keeps rising by over 1 dB per 200 iterations.

    Returns where the detector stopped (``None``: never) and how much the averaged output's PSNR
    rose over the 200 iterations before that."""
    generator = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    clean = torch.stack([0.3 + 0.4 * xs, 0.5 + 0.2 * ys, 0.4 + 0.3 * xs * ys])[None]
    pattern = torch.randn(clean.shape, generator=generator)
    avg_sum, psnr_at = torch.zeros_like(clean), {}
    for t in range(1, iterations + 1):
        raw = clean + 0.2 * math.exp(-t / 1000) * pattern + 0.01 * torch.randn(clean.shape, generator=generator)
        avg_sum.mul_(0.995).add_(raw, alpha=0.005)
        avg = avg_sum / (1 - 0.995**t)
        psnr_at[t] = float(-10 * torch.log10(((avg - clean) ** 2).mean()))
        detector.update(t, avg, avg)
        if t % log_every == 0:
            detector.observe_fit(t, float(((raw - clean) ** 2).mean()), avg)
            if detector.should_stop(t):
                return t, psnr_at[t] - psnr_at[max(1, t - 200)]
    return None, psnr_at[iterations] - psnr_at[iterations - 200]


def test_the_plain_detector_fires_while_the_averaged_output_still_improves() -> None:
    # The failure the noise gate exists for (the test below would catch it).
    stop, rise = _improving_run(EarlyStopping(EarlyStopConfig(window=100, patience=200, signal="ema", min_delta=0.2)))
    assert stop is not None and rise > 0.1


@pytest.mark.parametrize("default", ["FAST_STOP", "DENOISE_STOP"])
def test_the_default_detector_never_fires_while_the_averaged_output_still_improves(default: str) -> None:
    from dip_engine import presets
    from dip_engine.noise import estimate_noise_sigma

    config = getattr(presets, default)  # the default detectors
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    clean = torch.stack([0.3 + 0.4 * xs, 0.5 + 0.2 * ys, 0.4 + 0.3 * xs * ys])
    sigma = estimate_noise_sigma(clean.permute(1, 2, 0).numpy())  # noise-free: its own texture only
    stop, rise = _improving_run(EarlyStopping(config, noise_sigma=sigma))
    assert stop is None or rise <= 0.1, (stop, rise)


def test_the_gate_opens_at_the_noise_level_and_restarts_the_search_there() -> None:
    detector = EarlyStopping(EarlyStopConfig(window=2, patience=3, noise_gate=1.0), noise_sigma=0.1)
    for t, var in enumerate([5.0, 1.0, 2.0, 3.0, 4.0, 5.0], start=1):
        detector.update_variance(t, torch.tensor(var), torch.full((1,), float(t)))
        detector.observe_fit(t, 0.05 if t < 5 else 0.009, torch.full((1,), float(t)))
    # Minimum at 2, but the fit reached sigma^2 = 0.01 only at 5: the search starts again there.
    assert detector.gate_opened_at == 5 and detector.detected_iteration == 5
    assert not detector.should_stop(7) and detector.should_stop(8)
    assert float(detector.candidate) == 5.0


def _gated(variances: list[float], losses: list[float], *, floor: float | None = None) -> EarlyStopping:
    """A gated detector (sigma^2 = 0.01) fed one variance and one loss per iteration from 1; the
    candidate of iteration t is t."""
    config = EarlyStopConfig(window=2, patience=3, min_delta=0.2, noise_gate=1.0, noise_floor=floor)
    detector = EarlyStopping(config, noise_sigma=0.1)
    for t, (var, loss) in enumerate(zip(variances, losses), start=1):
        detector.update_variance(t, torch.tensor(var), torch.full((1,), float(t)))
        detector.observe_fit(t, loss, torch.full((1,), float(t)))
    return detector


def test_a_run_with_no_minimum_after_its_gate_returns_its_last_output() -> None:
    # The gate opens at 2; the variance then creeps down, never by the 20% margin: the averaged
    # output was still settling, so patience ends the run and the last output is the answer.
    settling = _gated([5.0, 1.0, 0.95, 0.9, 0.85], [0.05, 0.009, 0.009, 0.009, 0.009])
    assert settling.should_stop(5) and settling.detected_iteration == 2
    assert not settling.returns_candidate
    # A minimum that beats the margin after the gate: the output there is the answer.
    knee = _gated([5.0, 1.0, 0.7, 0.75, 0.8, 0.85], [0.05, 0.009, 0.009, 0.009, 0.009, 0.009])
    assert knee.should_stop(6) and knee.returns_candidate and float(knee.candidate) == 3.0
    # Ended at the noise floor with no minimum after the gate: the last output reproduces the
    # noise, so the output where the gate opened is the answer.
    floored = _gated([5.0, 1.0, 0.95, 0.9], [0.05, 0.009, 0.0085, 0.0079], floor=0.8)
    assert floored.should_stop(4) and floored.returns_candidate and float(floored.candidate) == 2.0
    # A gate that never opened: the last output; no gate at all: the minimum, as ES-WMV has it.
    assert not _gated([5.0, 1.0, 2.0], [0.05, 0.05, 0.05]).returns_candidate
    plain = EarlyStopping(EarlyStopConfig(window=2, patience=3))
    for t, var in enumerate([5.0, 1.0, 2.0], start=1):
        plain.update_variance(t, torch.tensor(var), torch.full((1,), float(t)))
    assert plain.returns_candidate and float(plain.candidate) == 2.0


def test_whether_a_minimum_followed_the_gate_survives_a_checkpoint() -> None:
    for detector in (_gated([5.0, 1.0, 0.95], [0.05, 0.009, 0.009]), _gated([5.0, 1.0, 0.7], [0.05, 0.009, 0.009])):
        restored = EarlyStopping(detector.config, noise_sigma=0.1)
        restored.load_state_dict(_through_a_file(detector.state_dict()))
        assert restored.returns_candidate == detector.returns_candidate
    # A checkpoint written before this was kept: an open gate counts as having found its minimum.
    older = {k: v for k, v in _gated([5.0, 1.0, 0.95], [0.05, 0.009, 0.009]).state_dict().items()
             if k != "search_start"}
    restored = EarlyStopping(EarlyStopConfig(window=2, patience=3, min_delta=0.2, noise_gate=1.0), noise_sigma=0.1)
    restored.load_state_dict(older)
    assert restored.returns_candidate


def test_the_noise_floor_ends_a_run_whose_variance_keeps_falling() -> None:
    config = EarlyStopConfig(window=2, patience=3, min_delta=0.2, noise_gate=1.0, noise_floor=0.8)
    detector = EarlyStopping(config, noise_sigma=0.1)  # sigma^2 = 0.01: the floor is at 0.008
    losses = [0.05, 0.0095, 0.009, 0.0085, 0.0079]
    for t, loss in enumerate(losses, start=1):
        # Each variance undercuts the last by more than the margin: patience alone would never end it.
        detector.update_variance(t, torch.tensor(0.5**t), torch.full((1,), float(t)))
        detector.observe_fit(t, loss, torch.full((1,), float(t)))
        assert detector.should_stop(t) == (t == 5)
    assert detector.floor_reached_at == 5 and detector.detected_iteration == 5
    restored = EarlyStopping(config, noise_sigma=0.1)
    restored.load_state_dict(_through_a_file(detector.state_dict()))
    assert restored.should_stop(5) and restored.floor_reached_at == 5


def test_the_noise_floor_lies_at_or_below_the_gate() -> None:
    for gate, floor in ((1.0, 1.2), (1.0, 0.0), (None, -1.0)):
        with pytest.raises(ValueError, match="noise_floor"):
            EarlyStopConfig(noise_gate=gate, noise_floor=floor)
    # A noise-free measurement (sigma 0) never reaches a floor of 0: it runs to its cap.
    detector = EarlyStopping(EarlyStopConfig(window=2, patience=3, noise_gate=1.0, noise_floor=0.8), noise_sigma=0.0)
    detector.update_variance(1, torch.tensor(1.0), torch.zeros(1))
    detector.observe_fit(1, 1e-9, torch.zeros(1))
    assert not detector.should_stop(1) and detector.floor_reached_at is None


def test_the_expected_end_is_patience_after_the_minimum_once_the_gate_is_open() -> None:
    detector = EarlyStopping(EarlyStopConfig(window=2, patience=300, noise_gate=1.0), noise_sigma=0.1)
    detector.update_variance(100, torch.tensor(1.0), torch.zeros(1))
    assert detector.expected_end(3000) == 3000  # gate shut: the fit has not reached the noise yet
    detector.observe_fit(100, 0.001, torch.zeros(1))
    assert detector.expected_end(3000) == 400 and detector.expected_end(350) == 350
    detector.update_variance(200, torch.tensor(0.5), torch.zeros(1))  # a new minimum moves it on
    assert detector.expected_end(3000) == 500


def test_before_the_gate_a_noisy_run_expects_its_typical_end_and_a_noise_free_one_the_cap() -> None:
    config = EarlyStopConfig(window=2, patience=300, noise_gate=1.0)
    noisy = EarlyStopping(config, noise_sigma=25 / 255, pixels=96 * 96)
    typical = int(3.0 * (96 * 96) ** 0.6) + 300  # forecast.TYPICAL_END, before any loss is seen
    assert noisy.expected_end(3000, 100) == typical < 3000
    # Past its typical end with the gate still shut: not before patience from now.
    assert noisy.expected_end(3000, typical) == typical + 300
    assert noisy.expected_end(3000, 2900) == 3000
    for quiet in (EarlyStopping(config, noise_sigma=2 / 255, pixels=96 * 96),  # noise-free: may never open
                  EarlyStopping(config, noise_sigma=25 / 255),  # size unknown
                  EarlyStopping(replace(config, noise_gate=None), noise_sigma=25 / 255, pixels=96 * 96)):
        assert quiet.expected_end(3000, 100) == 3000
    # A large image's typical end lies past the cap.
    assert EarlyStopping(config, noise_sigma=25 / 255, pixels=512 * 512).expected_end(3000, 100) == 3000


def test_fit_state_eta_uses_the_expected_end_and_never_runs_past_the_cap() -> None:
    from dip_engine.callbacks import FitState

    state = FitState(total=1000, iteration=200)
    assert state.end == 1000
    state.expected_end = 600
    assert state.end == 600
    state.expected_end = 5000
    assert state.end == 1000
    state.iteration, state.expected_end = 700, 600  # a late minimum: the end is never in the past
    assert state.end == 700
