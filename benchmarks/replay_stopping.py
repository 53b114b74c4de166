"""Replay stopping rules on recorded runs: choose the detector's defaults from a table.

A run's trajectory does not depend on when it will stop, so one long run per
image, recorded with ``realsize.py --trace`` (early stopping observing but
never firing: ``--set fit.early_stop.patience=100000 --set fit.early_stop.noise_floor=off``),
answers for every
rule at once what it would have returned. For each rule (cap, patience,
minimum relative drop of the variance, noise gate, noise floor), the table gives the mean
PSNR against the baseline, the wins, the detection gap to the oracle-best
iterate within the cap, the mean iterations, and the worst error of the ETA
the engine shows at a quarter of the run (it counts down to the cap for a
noise-free measurement, to the forecast of ``dip_engine.forecast`` for a noisy
one until its gate opens, and to patience after the variance minimum once it is
open; ``--eta-priors`` and ``--after-gates`` vary the forecast), in iterations
against those really left (at a steady speed, the ETA's error in seconds).
A run that reaches its cap returns what ``fit()`` returns: the output at the
variance minimum once the gate has opened, else its last output. The replay sees the log points only (every
``log_every`` iterations), so it approximates a detector that updates every
iteration to that resolution; the chosen rule is then run for real.

    python benchmarks/replay_stopping.py /tmp/trace-a.json /tmp/trace-b.json --held-out kodim03 kodim12 peppers
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from dip_engine.config import EarlyStopConfig
from dip_engine.early_stopping import EarlyStopping
from dip_engine.forecast import AFTER_GATE, TYPICAL_END, EndForecast


@dataclass(frozen=True)
class Rule:
    cap: int
    patience: int
    min_delta: float
    gate: float | None  # stop only once the loss per entry is <= gate * sigma_hat^2
    floor: float | None = None  # and at the latest once it is <= floor * sigma_hat^2
    # The ETA's forecast (dip_engine.forecast): the typical end a * pixels**b + patience, and what follows
    # the gate's forecast opening (None: the typical end alone).
    eta_prior: tuple[float, float] = TYPICAL_END
    after_gate: int | None = AFTER_GATE

    def label(self) -> str:
        gate = "off" if self.gate is None else f"{self.gate:g}"
        floor = "" if self.floor is None else f", floor {self.floor:g}"
        prior = "" if self.eta_prior == TYPICAL_END else f", ETA prior {self.eta_prior[0]:g}:{self.eta_prior[1]:g}"
        after = ("" if self.after_gate == AFTER_GATE
                 else ", ETA without the loss" if self.after_gate is None else f", ETA after gate {self.after_gate}")
        return f"cap {self.cap}, patience {self.patience}, min_delta {self.min_delta:g}, gate {gate}{floor}{prior}{after}"


@dataclass(frozen=True)
class Replayed:
    psnr: float  # of what the run returns
    end: int  # the iteration it ends at
    oracle: float  # the best averaged output within the cap
    eta_error: float  # |iterations the ETA counts down / iterations really left - 1| at a quarter of the run


def replay(row: dict, rule: Rule) -> Replayed:
    """What ``row``'s run returns under ``rule``, and how far off its ETA was at 25% of it: the
    engine's own detector, fed the logged variance and loss of each point."""
    points = [p for p in row["history"] if p["iteration"] <= rule.cap]
    config = EarlyStopConfig(patience=rule.patience, signal="ema", min_delta=rule.min_delta, noise_gate=rule.gate,
                             noise_floor=rule.floor)
    detector = EarlyStopping(config, noise_sigma=row.get("noise_sigma_estimate"), pixels=row["size"] ** 2)
    if detector.forecast is not None:
        detector.forecast = EndForecast(pixels=row["size"] ** 2, patience=rule.patience,
                                        gate_target=detector.forecast.gate_target, typical_end=rule.eta_prior,
                                        after_gate=rule.after_gate)
    oracle = max(p["psnr_avg"] for p in points)
    expected_end: dict[int, int] = {}  # what the engine's ETA counts down to, per log point
    end = points[-1]
    for index, point in enumerate(points):
        # The candidate a minimum remembers is the point's index: what the run would return.
        if point["variance"] is not None:
            detector.update_variance(point["iteration"], torch.tensor(point["variance"]), torch.tensor(index))
        detector.observe_fit(point["iteration"], point["loss"], torch.tensor(index))
        expected_end[point["iteration"]] = detector.expected_end(rule.cap, point["iteration"])
        if detector.should_stop(point["iteration"]):
            end = point
            break
    # As fit() ends (EarlyStopping.returns_candidate): the output at the variance minimum, or the last one.
    returned = points[int(detector.candidate)] if detector.returns_candidate else end
    quarter = min((p for p in points if p["iteration"] <= end["iteration"]),
                  key=lambda p: abs(p["iteration"] - end["iteration"] / 4))
    # In iterations: the speed part of the ETA is exact on a machine the run has to itself.
    shown = expected_end[quarter["iteration"]] - quarter["iteration"]
    real = end["iteration"] - quarter["iteration"]
    return Replayed(returned["psnr_avg"], end["iteration"], oracle, abs(shown / real - 1) if real > 0 else 0.0)


def summarise(rows: list[dict], rule: Rule) -> dict:
    results = [replay(row, rule) for row in rows]
    diffs = [r.psnr - row["baseline_psnr"] for r, row in zip(results, rows)]
    return {
        "rule": rule,
        "psnr": statistics.mean(r.psnr for r in results),
        "vs": statistics.mean(diffs),
        "wins": sum(d >= 0 for d in diffs),
        "worst": min(diffs),
        "gap": statistics.mean(r.oracle - r.psnr for r in results),
        "iterations": statistics.mean(r.end for r in results),
        "eta": max(r.eta_error for r in results),
        "n": len(rows),
    }


def load_rows(path: Path) -> list[dict]:
    """The rows of a ``--json`` file, or of a run's log (one JSON row per line, as it goes)."""
    text = path.read_text()
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def grid(caps: list[int], patiences: list[int], deltas: list[float], gates: list[float | None],
         floors: list[float | None] = [None], priors: list[tuple[float, float]] = [TYPICAL_END],
         after_gates: list[int | None] = [AFTER_GATE]) -> list[Rule]:
    return [Rule(c, p, d, g, f, e, a) for c, p, d, g, f, e, a
            in itertools.product(caps, patiences, deltas, gates, floors, priors, after_gates)
            if f is None or g is None or f <= g]


def _line(s: dict) -> str:
    return (f"| {s['rule'].label()} | {s['psnr']:.2f} | {s['vs']:+.2f} | {s['wins']}/{s['n']} | {s['worst']:+.2f} "
            f"| {s['gap']:.2f} | {s['iterations']:.0f} | {100 * s['eta']:.0f}% |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traces", nargs="+", type=Path,
                        help="JSON written by realsize.py --trace, or its log (stderr)")
    parser.add_argument("--held-out", nargs="*", default=[], help="image names kept out of the choice")
    parser.add_argument("--caps", default="2000,2400,3000")
    parser.add_argument("--patience", default="200,400,800")
    parser.add_argument("--min-delta", default="0,0.05,0.2")
    parser.add_argument("--gates", default="off,0.8,1,1.2")
    parser.add_argument("--floors", default="off", help="noise floors to try, e.g. off,0.8,0.85")
    parser.add_argument("--eta-priors", default=f"{TYPICAL_END[0]:g}:{TYPICAL_END[1]:g}",
                        help="the ETA's typical end a * pixels**b + patience to try, as a:b (forecast.TYPICAL_END)")
    parser.add_argument("--after-gates", default=str(AFTER_GATE),
                        help="the ETA's iterations from the gate's forecast opening to the end (forecast.AFTER_GATE); "
                             "off: the typical end alone")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--per-image", action="store_true",
                        help="also each image under every rule of the grid (narrow the grid first)")
    args = parser.parse_args(argv)
    rows = [row for path in args.traces for row in load_rows(path)]
    tuning = [r for r in rows if r["image"] not in args.held_out]
    held = [r for r in rows if r["image"] in args.held_out]
    ints = lambda text: [int(v) for v in text.split(",")]
    optional = lambda text: [None if v == "off" else float(v) for v in text.split(",")]
    rules = grid(ints(args.caps), ints(args.patience), [float(v) for v in args.min_delta.split(",")],
                 optional(args.gates), optional(args.floors),
                 [tuple(float(x) for x in v.split(":")) for v in args.eta_priors.split(",")],  # type: ignore[misc]
                 [None if v == "off" else int(v) for v in args.after_gates.split(",")])
    header = ("| rule | PSNR | vs baseline | wins | worst | gap | iterations | worst ETA error at 25% |\n"
              "|---|---|---|---|---|---|---|---|")
    chosen = rules  # the grid's order when every image is held out
    if tuning:
        ranked = sorted((summarise(tuning, rule) for rule in rules), key=lambda s: (-s["vs"], s["iterations"]))
        chosen = [s["rule"] for s in ranked[:args.top]]
        print(f"### Tuning images ({len(tuning)}): {', '.join(r['image'] for r in tuning)}; best {args.top} rules\n")
        print(header)
        for s in ranked[:args.top]:
            print(_line(s))
    if held:
        print(f"\n### Held-out images ({len(held)}), the top rules above\n")
        print(header)
        for rule in chosen:
            print(_line(summarise(held, rule)))
    if args.per_image:
        names = [row["image"] + (" (held out)" if row in held else "") for row in tuning + held]
        print("\n### Each image: what the run returns (where it ends); the oracle within the cap\n")
        print("| image | size | baseline | " + " | ".join(rule.label() for rule in rules) + " | oracle |")
        print("|---|---|---|" + "---|" * len(rules) + "---|")
        for name, row in zip(names, tuning + held):
            results = [replay(row, rule) for rule in rules]
            cells = " | ".join(f"{r.psnr:.2f} ({r.end})" for r in results)
            print(f"| {name} | {row['size']} | {row['baseline_psnr']:.2f} | {cells} | {max(r.oracle for r in results):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
