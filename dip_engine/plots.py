"""Training curves as a PNG: the engine's only matplotlib user.

Uses the object-oriented API (``Figure`` + ``FigureCanvasAgg``) and never
pyplot, so plotting keeps no global state and is safe from worker threads.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .history import LogRecord

__all__ = ["plot_curves"]

_FIGSIZE_IN = (8.0, 4.5)
_DPI = 110


def _plot_finite(ax: Axes, xs: Sequence[int], ys: Sequence[float | None], *,
                 positive: bool = False, **style: object) -> None:
    """Plot the points whose value is known and finite (and > 0 if ``positive``)."""
    points = [(x, y) for x, y in zip(xs, ys)
              if y is not None and math.isfinite(y) and (y > 0 or not positive)]
    if not points:
        return
    px, py = zip(*points)
    # A lone point draws no line; give it a marker so it shows.
    ax.plot(px, py, marker="o" if len(points) == 1 else None, **style)


def _has_variance(records: Sequence[LogRecord]) -> bool:
    return any(r.variance is not None and math.isfinite(r.variance) and r.variance > 0 for r in records)


def _draw_variance(ax: Axes, records: Sequence[LogRecord], *, early_stop_iteration: int | None) -> None:
    """The ES-WMV variance, on a panel of its own: early stopping fires after its minimum."""
    its = [r.iteration for r in records]
    _plot_finite(ax, its, [r.variance for r in records], positive=True, color="tab:brown", linewidth=1.0,
                 label="ES-WMV output variance")
    ax.set_yscale("log")
    if early_stop_iteration is not None:
        ax.axvline(early_stop_iteration, color="tab:purple", linestyle="--", linewidth=1.0,
                   label="variance minimum (early-stop iterate)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("variance")
    ax.legend(loc="best", fontsize="small")
    ax.grid(True, which="major", alpha=0.3)


def _draw(fig: Figure, records: Sequence[LogRecord], *, title: str,
          best_iteration: int | None, early_stop_iteration: int | None) -> None:
    with_variance = _has_variance(records)
    if with_variance:
        loss_ax, variance_ax = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
        _draw_variance(variance_ax, records, early_stop_iteration=early_stop_iteration)
    else:
        loss_ax = fig.add_subplot()
    psnr_ax = loss_ax.twinx()
    its = [r.iteration for r in records]

    _plot_finite(loss_ax, its, [r.loss for r in records], positive=True,
                 color="tab:gray", linewidth=1.0, label="loss")
    if any(r.loss > 0 and math.isfinite(r.loss) for r in records):
        loss_ax.set_yscale("log")

    if any(r.psnr is not None for r in records):
        _plot_finite(psnr_ax, its, [r.psnr for r in records], color="tab:blue", label="PSNR")
        _plot_finite(psnr_ax, its, [r.psnr_avg for r in records], color="tab:orange",
                     label="PSNR (averaged output)")
    else:
        # Without a reference the only PSNR known is against the degraded input.
        _plot_finite(psnr_ax, its, [r.psnr_degraded for r in records], color="tab:green",
                     label="PSNR vs degraded input")

    if best_iteration is not None:
        loss_ax.axvline(best_iteration, color="tab:red", linestyle="--", linewidth=1.0,
                        label=f"best (iteration {best_iteration})")
    if early_stop_iteration is not None:
        loss_ax.axvline(early_stop_iteration, color="tab:purple", linestyle="--", linewidth=1.0,
                        label=f"early stop (iteration {early_stop_iteration})")

    if not with_variance:
        loss_ax.set_xlabel("iteration")
    loss_ax.set_ylabel("loss")
    psnr_ax.set_ylabel("PSNR (dB)")
    if title:
        loss_ax.set_title(title)
    handles, labels = loss_ax.get_legend_handles_labels()
    psnr_handles, psnr_labels = psnr_ax.get_legend_handles_labels()
    if handles or psnr_handles:
        # The PSNR axis is drawn on top, so its legend shows all entries.
        psnr_ax.legend(handles + psnr_handles, labels + psnr_labels, loc="best", fontsize="small")
    loss_ax.grid(True, which="major", alpha=0.3)


def plot_curves(
    records: Sequence[LogRecord],
    path: str | os.PathLike[str],
    *,
    title: str = "",
    best_iteration: int | None = None,
    early_stop_iteration: int | None = None,
) -> Path:
    """Draw loss (log scale, left axis) and PSNR (right axis) against iteration, and the
    ES-WMV variance on a panel below when the run recorded it.

    PSNR curves are ``psnr`` and ``psnr_avg`` when the run had a reference,
    else ``psnr_degraded``. Missing and non-finite values are skipped, so any
    list of records (even empty) gives a picture. The PNG is written to a
    temporary file beside ``path`` and renamed, so readers never see half a file.

    Args:
        records: Logged points, in iteration order.
        path: Where to write the PNG; its directory is created if needed.
        title: Figure title.
        best_iteration: Draws a dashed marker there, if given.
        early_stop_iteration: Draws a dashed marker there, if given.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    height = _FIGSIZE_IN[1] * (1.4 if _has_variance(records) else 1.0)
    fig = Figure(figsize=(_FIGSIZE_IN[0], height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    _draw(fig, records, title=title, best_iteration=best_iteration,
          early_stop_iteration=early_stop_iteration)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            fig.savefig(tmp, format="png")
        os.chmod(tmp_name, 0o644)  # mkstemp's 0600 would hide the plot from other readers
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
