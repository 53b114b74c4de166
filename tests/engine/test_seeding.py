"""Tests of dip_engine.seeding: every random use of a run draws from a stream of its own.

The network's input code ``z`` must carry no trace of the synthetic degradation
it is asked to undo: with one generator for both, channel 0 of ``z`` *was* the
dropped-pixel map, and the added noise a transform of ``z``'s uniforms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import dip_engine.restore as restore_module
from dip_engine.restore import RestoreInputs, restore
from dip_engine.seeding import numpy_rng, stream_seed
from dip_engine.spec import RestoreSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def test_streams_have_distinct_documented_seeds() -> None:
    import hashlib

    names = ("input", "weights", "jitter", "noise", "mask", "jpeg")
    seeds = {stream_seed(0, name) for name in names} | {stream_seed(1, name) for name in names}
    assert len(seeds) == 2 * len(names)
    expected = int.from_bytes(hashlib.sha256(b"dip-restore/mask/7").digest()[:8], "big") & (2**63 - 1)
    assert stream_seed(7, "mask") == expected
    assert np.array_equal(numpy_rng(7, "mask").random(4), numpy_rng(7, "mask").random(4))


class _Captured(Exception):
    pass


def _capture_fit(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Make restore() hand its fit() arguments to the test and stop there."""
    seen: dict[str, Any] = {}

    def fake_fit(net: torch.nn.Module, z: torch.Tensor, y: torch.Tensor, physics: Any, **kwargs: Any) -> None:
        seen.update(z=z, y=y, physics=physics, reference=kwargs["reference"])
        raise _Captured

    monkeypatch.setattr(restore_module, "fit", fake_fit)
    return seen


def _run_until_fit(spec: RestoreSpec, image: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen = _capture_fit(monkeypatch)
    with pytest.raises(_Captured):
        restore(spec, RestoreInputs(image), out)
    return seen


def _max_abs_correlation(z: torch.Tensor, signal: np.ndarray) -> float:
    """Largest |Pearson r| between ``signal`` (H, W) and any channel of ``z`` (1, C, H, W)."""
    s = signal.astype(np.float64).ravel()
    s = (s - s.mean()) / s.std()
    worst = 0.0
    for channel in z[0].double().numpy():
        c = channel.ravel()
        worst = max(worst, abs(float(np.mean(s * (c - c.mean()) / c.std()))))
    return worst


@pytest.fixture
def clean_64(tmp_path: Path, make_image: Any) -> Path:
    # 64 px wide: a multiple of 32, so no padding stands between z and the measurement grid.
    path = tmp_path / "clean.png"
    Image.fromarray(make_image(64, 64)).save(path)
    return path


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_the_input_is_independent_of_the_dropped_pixels(seed: int, clean_64: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _run_until_fit(RestoreSpec(task="inpaint", drop_fraction=0.5, seed=seed, device="cpu"), clean_64,
                          tmp_path / "out", monkeypatch)
    known = seen["physics"].mask[0, 0].numpy() > 0.5
    # 4096 pixels: independent signals give |r| ~ 1/64; the old shared generator gave r = -1.
    assert _max_abs_correlation(seen["z"], known) < 0.08
    for channel in seen["z"][0].numpy():
        assert not np.array_equal(channel < 0.05, ~known)


@pytest.mark.parametrize("seed", [0, 3])
def test_the_input_is_independent_of_the_added_noise(seed: int, clean_64: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _run_until_fit(RestoreSpec(task="denoise", add_noise_sigma=25.0, seed=seed, device="cpu"), clean_64,
                          tmp_path / "out", monkeypatch)
    noise = (seen["y"] - seen["reference"])[0].numpy()  # (C, H, W); clipping at 0 and 1 aside
    for plane in noise:
        assert _max_abs_correlation(seen["z"], plane) < 0.08


def test_a_drawn_mask_and_the_same_mask_uploaded_give_the_same_run(clean_64: Path, tmp_path: Path) -> None:
    # Nothing of the degradation leaks into the run: only the mask itself matters, not where it came from.
    spec = RestoreSpec(task="inpaint", drop_fraction=0.5, iterations=6, log_every=3, device="cpu", seed=4)
    drawn = restore(spec, RestoreInputs(clean_64), tmp_path / "drawn")
    degraded = np.asarray(Image.open(drawn.files["degraded"]))
    mask = tmp_path / "mask.png"
    known = restore_module.build_measurement(spec, clean_64).mask
    Image.fromarray(np.where(known, 255, 0).astype(np.uint8)).save(mask)
    uploaded = restore(RestoreSpec(task="inpaint", iterations=6, log_every=3, device="cpu", seed=4),
                       RestoreInputs(clean_64, mask=mask, reference=clean_64), tmp_path / "uploaded")
    assert degraded.shape[:2] == known.shape
    assert np.array_equal(np.asarray(Image.open(drawn.files["result"])), np.asarray(Image.open(uploaded.files["result"])))
    assert drawn.metrics["summary"]["psnr_output"] == pytest.approx(uploaded.metrics["summary"]["psnr_output"], abs=1e-6)
