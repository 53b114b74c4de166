"""Where a run on a noisy measurement is expected to end, before anything in it says: what the ETA counts down to.

Once the noise gate is open, the detector ends a run at patience after its last variance minimum
(:mod:`dip_engine.early_stopping`), and the ETA counts down to that. Before the gate opens the end
is forecast from two things, blended:

- the *typical end* of a run on an image of this size: ``a * pixels**b + patience`` (``TYPICAL_END``);
- the run's *own* loss: a power law fitted to the loss over the latter half of the iterations so far,
  extrapolated to the gate, plus what typically follows the gate (``AFTER_GATE``: the search for the
  variance minimum, then the patience).

The run's own forecast weighs ``1 - typical end / cap``. Where runs of this size typically reach the
cap (from about 380 px a side on, with denoising's cap), the extrapolation is left out: a large image's
loss flattens as it nears the noise, and the power law would promise the gate far too soon. Both
constants were chosen on replayed sigma = 25 denoising runs of tuning images at 96-512 px, and checked
on held-out images and on sigma = 15 (docs/benchmarks.md, "The ETA forecasts the gate from the loss").
"""

from __future__ import annotations

import math
from typing import Any

# The typical end: a * pixels**b + patience (about 1020 iterations at 96 px, 2630 at 256 px).
TYPICAL_END = (3.0, 0.6)
# From where the loss is forecast to reach the gate to the run's end.
AFTER_GATE = 600


class EndForecast:
    """Forecasts the end of a run whose gate is still shut.

    Call ``observe(iteration, loss)`` at each log point with the loss per measured entry, and
    ``end(cap, iteration)`` for the forecast. ``gate_target`` is the loss at which the gate opens.
    """

    def __init__(self, *, pixels: int, patience: int, gate_target: float,
                 typical_end: tuple[float, float] = TYPICAL_END, after_gate: int | None = AFTER_GATE) -> None:
        self.patience = patience
        self.gate_target = gate_target
        self.typical_end = int(typical_end[0] * pixels ** typical_end[1]) + patience
        self.after_gate = after_gate  # None: the typical end alone
        self.losses: list[tuple[int, float]] = []

    def observe(self, iteration: int, loss: float) -> None:
        if iteration > 0 and math.isfinite(loss) and loss > 0:
            self.losses.append((iteration, loss))

    def gate_at(self, iteration: int) -> float | None:
        """The iteration at which the loss's power law over ``[iteration / 2, iteration]`` reaches
        the gate: ``inf`` if the loss is not falling; ``None`` with fewer than three points."""
        points = [(math.log(i), math.log(v)) for i, v in self.losses if iteration / 2 <= i <= iteration]
        if len(points) < 3:
            return None
        mean_x = sum(x for x, _ in points) / len(points)
        mean_y = sum(y for _, y in points) / len(points)
        spread = sum((x - mean_x) ** 2 for x, _ in points)
        if spread == 0:
            return None
        slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
        if slope >= 0:
            return math.inf
        # Past e**40 the answer is "never" at any cap; the bound keeps exp() finite.
        return math.exp(min(40.0, mean_x + (math.log(self.gate_target) - mean_y) / slope))

    def end(self, cap: int, iteration: int) -> int:
        """The forecast end, within ``[iteration + patience, cap]``: the gate could open now at the
        soonest, and the run then still waits its patience."""
        soonest = iteration + self.patience
        typical = min(cap, max(self.typical_end, soonest))
        own_weight = min(1.0, max(0.0, 1.0 - self.typical_end / cap))
        if own_weight == 0.0 or self.after_gate is None:
            return typical
        gate = self.gate_at(iteration)
        if gate is None:
            return typical
        own = min(float(cap), max(float(soonest), gate + self.after_gate))
        return min(cap, max(soonest, round((1.0 - own_weight) * typical + own_weight * own)))

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = [(int(i), float(v)) for i, v in state.get("losses", [])]
