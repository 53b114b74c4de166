"""The real-size default against the classical baseline, on a shared photo (``make bench-check``).

Not part of ``make test``: one 256 px run of the default takes minutes on a 2-core CPU.
The quality tables themselves are ``benchmarks/realsize.py``'s; this only guards the
headline claim from regressing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dip_engine.problems import build_measurement
from dip_engine.restore import RestoreInputs, restore
from dip_engine.spec import RestoreSpec

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "benchmarks" / "denoise9" / "originals"


@pytest.mark.bench
@pytest.mark.timeout(1800)
def test_default_denoising_of_a_256_px_photo_beats_nl_means(tmp_path: Path) -> None:
    from skimage.restoration import denoise_nl_means

    image = SHARED / "4.1.05.png"  # 256x256: the whole image, as a user would send it
    assert image.exists(), f"{image} is missing: the shared test images must sit beside the repository"
    spec = RestoreSpec(task="denoise", add_noise_sigma=25.0)  # what `dip restore denoise --add-noise 25` runs
    measurement = build_measurement(spec, image)
    noisy, clean = measurement.y, measurement.reference
    sigma = 25.0 / 255.0
    # The baseline of docs/benchmarks.md: h = 0.8 sigma, 5x5 patches, 13x13 search, slow mode.
    baseline = denoise_nl_means(noisy, h=0.8 * sigma, sigma=sigma, fast_mode=False, patch_size=5, patch_distance=6,
                                channel_axis=-1)
    nl_means = float(10 * np.log10(1.0 / np.mean((np.clip(baseline, 0, 1) - clean) ** 2)))

    result = restore(spec, RestoreInputs(image), tmp_path)

    assert result.psnr_output is not None and result.psnr_output > nl_means, (result.psnr_output, nl_means)
