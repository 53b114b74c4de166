"""Tests of dip_engine.batched: K jobs fitted as one vmapped model against K solo fit() runs.

DIP amplifies float noise: a grouped convolution sums in another order than a plain one,
and after some tens of Adam steps at lr 0.01 the two runs part by up to tenths of a dB (so
does a solo run whose only change is channels-last layout). The comparisons with solo runs
are therefore kept to 40 iterations, where they agree to about 1e-3 dB; comparisons
between two batched runs are exact.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from dip_engine import batched
from dip_engine.batched import BatchJob, fit_batch
from dip_engine.callbacks import Callback, FitState
from dip_engine.checkpoint import load_checkpoint
from dip_engine.config import EarlyStopConfig, FitConfig, NetConfig
from dip_engine.fit import CheckpointConfig, FitResult, fit
from dip_engine.history import LogRecord
from dip_engine.nets import build_from_config
from dip_engine.physics import Denoising, Inpainting
from dip_engine.restore import make_input

SIZE = 32
TINY = NetConfig(name="skip", channels=8, levels=2, skip_channels=2)

pytestmark = pytest.mark.usefixtures("one_thread")


def _clean(seed: int) -> Tensor:
    """A smooth colour image, different for each seed, in [0, 1]."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, SIZE), torch.linspace(0, 1, SIZE), indexing="ij")
    phase = torch.rand(3, generator=torch.Generator().manual_seed(seed)) * 6
    channels = [0.5 + 0.4 * torch.sin(4 * xs + phase[c] + 3 * c * ys) for c in range(3)]
    return torch.stack(channels)[None].clamp(0, 1)


def _job(k: int, *, image_seed: int | None = None, **changes: Any) -> dict[str, Any]:
    """Job ``k``'s inputs, as keyword arguments of fit() (and of BatchJob): all its own seeds."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(100 + k)
        net = build_from_config(TINY, out_channels=3)
    clean = _clean(k if image_seed is None else image_seed)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(200 + k))
    job = dict(net=net, z=make_input(TINY, SIZE, SIZE, generator=torch.Generator().manual_seed(300 + k)),
               y=(clean + 0.1 * noise).clamp(0, 1), physics=Denoising(), reference=clean,
               generator=torch.Generator().manual_seed(400 + k))
    return job | changes


def _config(**changes: Any) -> FitConfig:
    return FitConfig(**(dict(iterations=40, log_every=10, early_stop=None) | changes))


def _solo(k: int, config: FitConfig, **changes: Any) -> FitResult:
    return fit(**_job(k, **changes), config=config)


def _batch(config: FitConfig, changes: dict[int, dict[str, Any]] | None = None, k: int = 3) -> list[FitResult]:
    changes = changes or {}
    return fit_batch([BatchJob(**_job(i, **changes.get(i, {}))) for i in range(k)], config=config)


def _assert_close(batched: FitResult, solo: FitResult, *, loss_rtol: float = 2e-3, psnr_db: float = 0.02) -> None:
    assert [r.iteration for r in batched.history] == [r.iteration for r in solo.history]
    for b, s in zip(batched.history, solo.history):
        assert b.loss == pytest.approx(s.loss, rel=loss_rtol)
    assert batched.history[-1].psnr == pytest.approx(solo.history[-1].psnr, abs=psnr_db)
    assert (batched.iterations, batched.stop_reason, batched.backtracks) == (solo.iterations, solo.stop_reason,
                                                                              solo.backtracks)
    assert batched.output.shape == solo.output.shape and batched.output.dtype == torch.float32


def _same_run(a: FitResult, b: FitResult) -> bool:
    return [r.loss for r in a.history] == [r.loss for r in b.history] and torch.equal(a.output, b.output)


class CancelAt(Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_step(self, state: FitState) -> None:
        if state.iteration == self.at:
            state.request_stop("canceled")


class Events(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def on_fit_start(self, state: FitState) -> None:
        self.events.append(("start", state.iteration))

    def on_log(self, state: FitState, record: LogRecord) -> None:
        assert state.last is record and state.iteration == record.iteration
        self.events.append(("log", state.iteration))

    def on_checkpoint(self, state: FitState, path: Path) -> None:
        self.events.append(("checkpoint", state.iteration))

    def on_fit_end(self, state: FitState) -> None:
        self.events.append(("end", state.iteration))


class SpikeAt(Denoising):
    """The identity, but wildly wrong at one iteration: a loss spike for the backtracker to undo."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        self.calls += 1
        return 10.0 * x if self.calls == self.at else x


# -- the optimiser ---------------------------------------------------------------------------------


def test_batched_adam_is_k_torch_adams_bit_for_bit_even_when_one_skips() -> None:
    generator = torch.Generator().manual_seed(0)
    shapes = [(4, 3, 3, 3), (4,)]
    solo = [[torch.randn(s, generator=generator).requires_grad_() for s in shapes] for _ in range(3)]
    adams = [torch.optim.Adam(params, lr=0.01) for params in solo]
    flat = torch.stack([torch.cat([p.detach().flatten() for p in params]) for params in solo])
    adam = batched._BatchedAdam(flat, lr=0.01)
    for step in range(6):
        grads = [torch.randn((3, *s), generator=generator) for s in shapes]
        skip = torch.tensor([False, step in (2, 3), False])
        for k in range(3):
            if not skip[k]:
                for p, g in zip(solo[k], grads):
                    p.grad = g[k].clone()
                adams[k].step()
        adam.step(flat, torch.cat([g.flatten(1) for g in grads], dim=1), skip)
    for k in range(3):
        assert torch.equal(flat[k], torch.cat([p.detach().flatten() for p in solo[k]]))
        for key in ("exp_avg", "exp_avg_sq"):
            theirs = torch.cat([adams[k].state[p][key].flatten() for p in solo[k]])
            assert torch.equal(getattr(adam, key)[k], theirs)
    assert adam.steps.tolist() == [6, 4, 6]


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_jobs_slice_of_the_stack_is_a_plain_net_and_adam_state(channels_last: bool) -> None:
    nets = [_job(k)["net"] for k in range(2)]
    stack = batched._Stack(nets, lr=0.01, channels_last=channels_last, bf16=False)
    for k, net in enumerate(nets):
        state = stack.net_state_dict(k)
        assert list(state) == list(net.state_dict())
        assert all(torch.equal(state[key], value) for key, value in net.state_dict().items())
    reference = torch.optim.Adam(nets[1].parameters(), lr=0.01)
    nets[1](_job(1)["z"]).mean().backward()
    reference.step()
    groups = reference.state_dict()["param_groups"]
    stack.load_adam_state_dict(0, reference.state_dict())
    stack.load_net_state_dict(0, nets[1].state_dict())
    mine = stack.adam_state_dict(0, groups)
    for i, entry in reference.state_dict()["state"].items():
        assert all(torch.equal(mine["state"][i][key], entry[key]) for key in entry)
    assert stack.adam_state_dict(1, groups)["state"] == {}  # no step yet, no state: as torch's Adam
    assert all(torch.equal(a, b) for a, b in zip(stack.net_state_dict(0).values(), nets[1].state_dict().values()))


# -- the batch against solo runs --------------------------------------------------------------------


def test_batched_jobs_match_their_solo_runs() -> None:
    config = _config()
    results = _batch(config)
    for k, result in enumerate(results):
        solo = _solo(k, config)
        _assert_close(result, solo)
        # Over the first steps nothing has had time to grow: the losses agree to float noise.
        assert result.history[0].loss == pytest.approx(solo.history[0].loss, rel=1e-5)
    assert len({round(r.history[-1].psnr, 3) for r in results}) == 3  # three different jobs


def test_a_job_does_not_see_the_others() -> None:
    config = _config()
    base = _batch(config)
    other = _batch(config, {2: dict(image_seed=7)})
    assert _same_run(base[0], other[0]) and _same_run(base[1], other[1])
    assert not _same_run(base[2], other[2])


def test_a_job_alone_in_a_batch_matches_its_solo_run() -> None:
    config = _config(output="raw")
    _assert_close(_batch(config, k=1)[0], _solo(0, config))


def test_a_cancelled_job_leaves_and_the_others_go_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    forward = batched._Stack.forward

    def spy(self: batched._Stack, codes: Tensor) -> Tensor:
        sizes.append(codes.shape[0])
        return forward(self, codes)

    monkeypatch.setattr(batched._Stack, "forward", spy)
    config = _config()
    path = tmp_path / "job1.pt"
    cancel = dict(callbacks=[CancelAt(15)], checkpoint=CheckpointConfig(path, every=100))
    results = _batch(config, {1: cancel})
    assert sizes == [3] * 15 + [2] * 25  # restacked without it: no compute spent on it afterwards
    assert (results[1].iterations, results[1].stop_reason) == (15, "canceled")
    assert load_checkpoint(path)["iteration"] == 15  # written on cancel, as fit() does
    assert [(r.iterations, r.stop_reason) for r in (results[0], results[2])] == [(40, "completed")] * 2
    solo_cancel = dict(callbacks=[CancelAt(15)], checkpoint=CheckpointConfig(tmp_path / "solo1.pt", every=100))
    for k in range(3):
        _assert_close(results[k], _solo(k, config, **(solo_cancel if k == 1 else {})))


def test_an_early_stopped_job_leaves_and_the_others_run_to_the_cap() -> None:
    # The gate opens at once for job 1 (a huge noise estimate) and never for the others (none).
    config = _config(log_every=5, early_stop=EarlyStopConfig(window=5, patience=10, noise_gate=1.0))
    sigmas = {0: dict(noise_sigma=0.0), 1: dict(noise_sigma=1.0), 2: dict(noise_sigma=0.0)}
    results = _batch(config, sigmas)
    assert results[1].stop_reason == "early_stop" and results[1].iterations < 40
    assert results[1].output_iteration == results[1].early_stop_iteration
    assert [(r.iterations, r.stop_reason) for r in (results[0], results[2])] == [(40, "completed")] * 2
    for k in range(3):
        solo = _solo(k, config, **sigmas[k])
        _assert_close(results[k], solo)
        assert (results[k].early_stop_iteration, results[k].output_iteration) == (solo.early_stop_iteration,
                                                                                  solo.output_iteration)


def test_a_rollback_restores_only_its_own_job() -> None:
    config = _config(backtrack_db=5.0, backtrack_every=10)
    spiked = {1: dict(physics=SpikeAt(20))}
    results = _batch(config, spiked)
    assert [r.backtracks for r in results] == [0, 1, 0]
    assert 20 not in [r.iteration for r in results[1].history]  # the rolled-back iteration logs nothing
    _assert_close(results[1], _solo(1, config, physics=SpikeAt(20)))
    calm = _batch(config)
    assert _same_run(results[0], calm[0]) and _same_run(results[2], calm[2])


# -- checkpoints ------------------------------------------------------------------------------------


def test_a_batched_checkpoint_resumes_in_a_solo_fit(tmp_path: Path) -> None:
    path = tmp_path / "job1.pt"
    events = Events()
    checkpoint = dict(checkpoint=CheckpointConfig(path, every=20))
    _batch(_config(iterations=20), {1: checkpoint | dict(callbacks=[events])})
    assert ("checkpoint", 20) in events.events
    saved = load_checkpoint(path)
    net = _job(1)["net"]
    net.load_state_dict(saved["net"])  # strict: a plain state dict
    torch.optim.Adam(net.parameters(), lr=0.01).load_state_dict(saved["optimizer"])
    assert float(saved["optimizer"]["state"][0]["step"]) == 20

    resumed = _solo(1, _config(), **checkpoint)
    uninterrupted = _batch(_config())[1]
    assert resumed.iterations == 40 and [r.iteration for r in resumed.history] == [10, 20, 30, 40]
    _assert_close(resumed, uninterrupted)


def test_a_batch_resumes_from_its_checkpoints_exactly(tmp_path: Path) -> None:
    def checkpoints() -> dict[int, dict[str, Any]]:
        return {k: dict(checkpoint=CheckpointConfig(tmp_path / f"job{k}.pt", every=20)) for k in range(3)}

    _batch(_config(iterations=20), checkpoints())
    resumed = _batch(_config(), checkpoints())
    uninterrupted = _batch(_config())
    assert all(_same_run(a, b) for a, b in zip(resumed, uninterrupted))


def test_a_batch_resumes_jobs_checkpointed_at_different_iterations(tmp_path: Path) -> None:
    paths = [tmp_path / f"job{k}.pt" for k in range(2)]
    _batch(_config(), {0: dict(checkpoint=CheckpointConfig(paths[0], every=20), callbacks=[CancelAt(20)]),
                       1: dict(checkpoint=CheckpointConfig(paths[1], every=10), callbacks=[CancelAt(30)])}, k=2)
    results = _batch(_config(), {k: dict(checkpoint=CheckpointConfig(paths[k], every=100)) for k in range(2)}, k=2)
    assert [r.iterations for r in results] == [40, 40]
    assert [r.iteration for r in results[0].history] == [10, 20, 30, 40]


# -- precision and layout ---------------------------------------------------------------------------


@pytest.mark.parametrize(("precision", "channels_last"), [("bf16", False), ("fp32", True)])
def test_bf16_and_channels_last_batch_as_solo_runs_do(precision: str, channels_last: bool) -> None:
    config = _config(precision=precision, channels_last=channels_last)
    results = _batch(config, k=2)
    for k, result in enumerate(results):
        solo = _solo(k, config)
        assert result.output.dtype == torch.float32
        # bf16 rounds differently in a grouped convolution, and 40 steps of a tiny net take the
        # rounding down another path: "about as far", as test_fit asks of bf16 against fp32.
        tolerance = 2.0 if precision == "bf16" else 0.05
        assert result.history[-1].loss < 0.7 * result.history[0].loss
        assert result.history[-1].psnr == pytest.approx(solo.history[-1].psnr, abs=tolerance)


def test_the_bf16_batched_forward_is_autocasts_up_to_rounding() -> None:
    jobs = [_job(k) for k in range(2)]
    nets = [job["net"] for job in jobs]
    codes = torch.stack([job["z"] for job in jobs])
    outputs = {bf16: batched._Stack(nets, lr=0.01, channels_last=False, bf16=bf16).forward(codes)[0]
               for bf16 in (False, True)}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = nets[0](jobs[0]["z"]).float()
    with torch.no_grad():
        fp32 = nets[0](jobs[0]["z"])
    assert outputs[True].dtype == torch.float32
    assert (outputs[False] - fp32).abs().max() < 1e-5
    assert (outputs[True] - fp32).abs().max() > 1e-3  # bf16 did happen
    assert (outputs[True] - autocast).abs().max() < 0.05  # a few bf16 steps of the output, as autocast's


def test_the_trained_weights_are_left_in_each_jobs_net() -> None:
    jobs = [BatchJob(**_job(k)) for k in range(2)]
    results = fit_batch(jobs, config=_config(output="raw"))  # last: the trained net on its code
    for job, result in zip(jobs, results):
        with torch.no_grad():
            assert torch.allclose(job.net(job.z), result.last, atol=1e-5)


# -- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    (dict(z=torch.rand(1, 32, 16, 16), y=torch.rand(1, 3, 16, 16), reference=None), "z shape"),
    (dict(crop=(30, 30), reference=None), "crop"),
    (dict(net=build_from_config(replace(TINY, channels=4), out_channels=3)), "architecture"),
    (dict(net=build_from_config(replace(TINY, upsample_mode="nearest"), out_channels=3)), "architecture"),
    (dict(y=torch.rand(1, 3, 16, 16)), "job 1: z is"),
])
def test_jobs_that_cannot_share_a_batch_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_batch([BatchJob(**_job(0)), BatchJob(**_job(1, **change))], config=_config())


def test_shared_objects_and_the_reference_rule_are_refused() -> None:
    first = _job(0)
    with pytest.raises(ValueError, match="share one generator"):
        fit_batch([BatchJob(**first), BatchJob(**_job(1, generator=first["generator"]))], config=_config())
    with pytest.raises(ValueError, match="share one net"):
        fit_batch([BatchJob(**first), BatchJob(**_job(1, net=first["net"]))], config=_config())
    with pytest.raises(ValueError, match="rollback"):
        fit_batch([BatchJob(**first)], config=_config(backtrack_rule="reference"))
    with pytest.raises(ValueError, match="at least one job"):
        fit_batch([], config=_config())


def test_jobs_may_differ_in_operator_and_reference() -> None:
    mask = torch.rand(SIZE, SIZE, generator=torch.Generator().manual_seed(5)) > 0.5
    config = _config()
    changes = {1: dict(physics=Inpainting(mask)), 2: dict(reference=None)}
    results = _batch(config, changes)
    for k in range(3):
        _assert_close(results[k], _solo(k, config, **changes.get(k, {})), psnr_db=0.05) if k != 2 else None
    assert results[2].history[-1].psnr is None and results[2].best_iteration is None
