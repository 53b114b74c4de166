"""The ETA's forecast of where a noisy run ends before its gate opens (dip_engine.forecast)."""

from __future__ import annotations

import io
import math

import pytest
import torch

from dip_engine.config import EarlyStopConfig
from dip_engine.early_stopping import EarlyStopping
from dip_engine.forecast import AFTER_GATE, TYPICAL_END, EndForecast

SIGMA2 = (25 / 255) ** 2


def _power_law(gate_at: float, slope: float = -0.2):
    """A loss that reaches SIGMA2 (the gate) at ``gate_at``: SIGMA2 * (t / gate_at) ** slope."""
    return lambda t: SIGMA2 * (t / gate_at) ** slope


def _fed(side: int, loss, until: int, every: int = 25) -> EndForecast:
    forecast = EndForecast(pixels=side * side, patience=300, gate_target=SIGMA2)
    for t in range(every, until + 1, every):
        forecast.observe(t, loss(t))
    return forecast


def test_the_power_law_is_extrapolated_to_the_gate() -> None:
    forecast = _fed(96, _power_law(900), until=300)
    assert forecast.gate_at(300) == pytest.approx(900, rel=1e-6)
    # Only the latter half of the run counts: an early transient does not bend the line.
    forecast = EndForecast(pixels=96 * 96, patience=300, gate_target=SIGMA2)
    for t in range(25, 301, 25):
        forecast.observe(t, 50 * SIGMA2 if t < 150 else _power_law(900)(t))
    assert forecast.gate_at(300) == pytest.approx(900, rel=1e-6)


def test_a_small_image_blends_its_own_forecast_with_the_typical_end() -> None:
    typical = int(TYPICAL_END[0] * (96 * 96) ** TYPICAL_END[1]) + 300
    weight = 1 - typical / 3000
    for gate_at in (500.0, 1500.0):
        forecast = _fed(96, _power_law(gate_at), until=300)
        expected = round((1 - weight) * typical + weight * (gate_at + AFTER_GATE))
        assert forecast.end(3000, 300) == pytest.approx(expected, abs=1)
    # A loss that reaches the gate later forecasts a later end.
    assert _fed(96, _power_law(500), until=300).end(3000, 300) < _fed(96, _power_law(1500), until=300).end(3000, 300)


def test_where_runs_of_this_size_reach_the_cap_the_loss_is_not_extrapolated() -> None:
    # At 512 px the typical end lies past a cap of 5000: however soon the loss promises the gate.
    forecast = _fed(512, _power_law(1500), until=1200)
    assert forecast.typical_end >= 5000 and forecast.end(5000, 1200) == 5000


def test_without_enough_points_or_a_falling_loss() -> None:
    typical = int(TYPICAL_END[0] * (96 * 96) ** TYPICAL_END[1]) + 300
    # Two points: no line yet, the typical end.
    assert _fed(96, _power_law(900), until=50).end(3000, 50) == typical
    # A loss that does not fall never reaches the gate: its own forecast is the cap.
    flat = _fed(96, lambda t: 2 * SIGMA2, until=300)
    assert flat.gate_at(300) == math.inf
    weight = 1 - typical / 3000
    assert flat.end(3000, 300) == round((1 - weight) * typical + weight * 3000)
    # A diverged (non-finite) or zero loss is not a point of the line.
    forecast = _fed(96, _power_law(900), until=300)
    forecast.observe(325, float("nan"))
    forecast.observe(350, 0.0)
    assert forecast.gate_at(300) == pytest.approx(900, rel=1e-6) and len(forecast.losses) == 12


def test_the_forecast_is_never_sooner_than_patience_from_now_nor_past_the_cap() -> None:
    forecast = _fed(96, _power_law(320), until=300)  # the gate is due at once
    assert forecast.end(3000, 300) >= 600
    assert forecast.end(700, 300) <= 700
    assert _fed(96, _power_law(900), until=2800).end(3000, 2800) == 3000


def test_the_detector_counts_down_to_the_forecast_and_keeps_it_in_its_state() -> None:
    config = EarlyStopConfig(window=2, patience=300, noise_gate=1.0)
    detector = EarlyStopping(config, noise_sigma=25 / 255, pixels=96 * 96)
    loss = _power_law(1200)
    for t in range(25, 301, 25):
        detector.observe_fit(t, loss(t), torch.zeros(1))
    forecast = _fed(96, loss, until=300)
    assert detector.expected_end(3000, 300) == forecast.end(3000, 300) != forecast.typical_end
    buffer = io.BytesIO()
    torch.save(detector.state_dict(), buffer)
    buffer.seek(0)
    resumed = EarlyStopping(config, noise_sigma=25 / 255, pixels=96 * 96)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    assert resumed.expected_end(3000, 300) == detector.expected_end(3000, 300)
    # A checkpoint from before the forecast existed: the typical end until the loss is seen again.
    older = {k: v for k, v in detector.state_dict().items() if k != "forecast"}
    resumed = EarlyStopping(config, noise_sigma=25 / 255, pixels=96 * 96)
    resumed.load_state_dict(older)
    assert resumed.expected_end(3000, 300) == forecast.typical_end
    # Once the gate opens, the detector's own countdown takes over, and the loss is no longer kept.
    detector.update_variance(1300, torch.tensor(1.0), torch.zeros(1))
    detector.observe_fit(1300, loss(1300), torch.zeros(1))
    kept = len(detector.forecast.losses)
    detector.observe_fit(1325, loss(1325), torch.zeros(1))
    assert detector.expected_end(3000, 1325) == 1600 and len(detector.forecast.losses) == kept
