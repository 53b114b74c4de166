"""Tests of dip_engine.plots: the curves PNG."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dip_engine.history import LogRecord
from dip_engine.plots import plot_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _records(n: int, *, reference: bool) -> list[LogRecord]:
    return [
        LogRecord(iteration=10 * i, loss=0.1 / (i + 1), psnr_degraded=15.0 + i * 0.5,
                  elapsed_s=0.1 * i,
                  psnr=20.0 + i if reference else None,
                  psnr_avg=20.5 + i if reference else None)
        for i in range(n)
    ]


def _check_png(path: Path) -> Image.Image:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = Image.open(path)
    image.load()
    # 8 x 4.5 in at about 110 dpi.
    assert 700 <= image.width <= 1000 and 400 <= image.height <= 600
    assert 10_000 < path.stat().st_size < 1_000_000
    return image


def test_writes_a_png_with_reference_curves_and_markers(tmp_path: Path) -> None:
    out = plot_curves(_records(30, reference=True), tmp_path / "curves.png", title="denoise",
                      best_iteration=200, early_stop_iteration=250)
    assert out == tmp_path / "curves.png"
    _check_png(out)
    assert os.listdir(tmp_path) == ["curves.png"]  # no temporary file left behind


def test_handles_records_without_reference(tmp_path: Path) -> None:
    out = plot_curves(_records(30, reference=False), tmp_path / "curves.png")
    _check_png(out)


def test_curves_change_the_picture(tmp_path: Path) -> None:
    empty = _check_png(plot_curves([], tmp_path / "empty.png"))
    full = _check_png(plot_curves(_records(30, reference=True), tmp_path / "full.png",
                                  best_iteration=100))
    assert empty.size == full.size
    assert empty.convert("RGB").tobytes() != full.convert("RGB").tobytes()


@pytest.mark.parametrize(
    "records",
    [
        [],
        _records(1, reference=True),
        _records(1, reference=False),
        [LogRecord(iteration=i, loss=v, psnr_degraded=v, elapsed_s=0.0, psnr=v, psnr_avg=None)
         for i, v in enumerate([math.nan, math.inf, -math.inf, 0.0, 1.0, 2.0])],
        [LogRecord(iteration=0, loss=math.nan, psnr_degraded=math.inf, elapsed_s=0.0, psnr=math.nan)],
    ],
    ids=["empty", "one-with-reference", "one-without-reference", "mixed-non-finite", "all-non-finite"],
)
def test_does_not_crash_on_degenerate_records(tmp_path: Path, records: list[LogRecord]) -> None:
    _check_png(plot_curves(records, tmp_path / "curves.png", best_iteration=3, early_stop_iteration=4))


def test_overwrites_an_existing_file_and_creates_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "run" / "curves.png"
    plot_curves([], path)
    first = path.read_bytes()
    plot_curves(_records(5, reference=True), path)
    assert path.read_bytes() != first
    _check_png(path)


def test_does_not_import_pyplot() -> None:
    code = ("import sys; from dip_engine.plots import plot_curves; "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_the_es_variance_gets_a_panel_of_its_own(tmp_path: Path) -> None:
    from PIL import Image

    from dip_engine.history import LogRecord
    from dip_engine.plots import plot_curves

    plain = [LogRecord(iteration=i, loss=1.0 / i, psnr_degraded=20 + i / 100, elapsed_s=i) for i in range(10, 200, 10)]
    with_variance = [LogRecord(**{**r.to_dict(), "variance": 1e-3 * (1 + ((r.iteration - 100) / 100) ** 2)})
                     for r in plain]
    a = Image.open(plot_curves(plain, tmp_path / "a.png"))
    b = Image.open(plot_curves(with_variance, tmp_path / "b.png", early_stop_iteration=100))
    assert b.height > a.height and b.width == a.width
