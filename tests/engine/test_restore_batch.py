"""Tests of dip_engine.restore.restore_batch: several requests, batched where they can share a model.

Tiny images and a few iterations: these check grouping, per-run outputs and per-run failures;
tests/engine/test_batched.py checks the batched loop against solo runs in detail.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dip_engine.callbacks import Callback, FitState
from dip_engine.errors import InputError
from dip_engine.restore import RestoreInputs, RestoreLimits, RestoreRequest, RestoreResult, restore, restore_batch
from dip_engine.spec import RestoreSpec

from .conftest import ImageMaker

pytestmark = pytest.mark.usefixtures("one_thread")

ITERATIONS = 12
# A small float32 net: DIP's first Adam steps amplify float differences, and with the fast
# preset's 5-level net in bf16 a grouped convolution's other summation order parts a batched
# run from its solo run by tenths of a dB within 12 iterations (so does a solo run whose only
# change is its memory layout). This net keeps them equal to a thousandth of a dB.
SMALL = {"net.channels": 8, "net.levels": 2, "net.skip_channels": 2, "fit.precision": "fp32"}


class Boom(RuntimeError):
    """What a job's callback raises in the isolation tests."""


class RaiseAt(Callback):
    def __init__(self, iteration: int, error: type[Exception] = Boom) -> None:
        self.iteration, self.error = iteration, error

    def on_step(self, state: FitState) -> None:
        if state.iteration >= self.iteration:
            raise self.error(f"raised at {state.iteration}")


def _spec(seed: int, **changes: object) -> RestoreSpec:
    return RestoreSpec(**({"task": "denoise", "add_noise_sigma": 25.0, "iterations": ITERATIONS, "log_every": 4,
                           "seed": seed, "device": "cpu"} | changes))


def _request(tmp_path: Path, make_image: ImageMaker, k: int, *, size: int = 32, **changes: object) -> RestoreRequest:
    source = tmp_path / f"in{k}.png"
    Image.fromarray(make_image(size, size, seed=k)).save(source)
    callbacks = changes.pop("callbacks", ())
    return RestoreRequest(_spec(k, **changes), RestoreInputs(source), tmp_path / f"out{k}",
                          callbacks=callbacks, overrides=SMALL)  # type: ignore[arg-type]


def _metrics(result: RestoreResult) -> dict:
    return json.loads(result.files["metrics"].read_text())


def test_compatible_requests_share_one_batch_and_match_their_solo_runs(tmp_path: Path, make_image: ImageMaker) -> None:
    requests = [_request(tmp_path, make_image, k) for k in range(3)]
    results = restore_batch(requests)
    assert all(isinstance(r, RestoreResult) for r in results)
    for k, result in enumerate(results):
        assert isinstance(result, RestoreResult)
        assert _metrics(result)["setup"]["batch_size"] == 3
        assert result.files["result"].is_file() and result.iterations == ITERATIONS
        solo = restore(requests[k].spec, requests[k].inputs, tmp_path / f"solo{k}", overrides=SMALL)
        assert _metrics(solo)["setup"]["batch_size"] == 1
        assert result.psnr_output == pytest.approx(solo.psnr_output, abs=0.01)
    # Each run fitted its own image: their results differ.
    outputs = [np.asarray(Image.open(r.files["result"])) for r in results if isinstance(r, RestoreResult)]
    assert not np.array_equal(outputs[0], outputs[1])


def test_requests_that_cannot_share_a_model_run_apart(tmp_path: Path, make_image: ImageMaker) -> None:
    requests = [_request(tmp_path, make_image, 0), _request(tmp_path, make_image, 1, size=64),
                _request(tmp_path, make_image, 2)]
    results = restore_batch(requests)
    sizes = [_metrics(r)["setup"]["batch_size"] for r in results if isinstance(r, RestoreResult)]
    assert sizes == [2, 1, 2]
    assert Image.open(results[1].files["result"]).size == (64, 64)  # type: ignore[union-attr]


def test_a_bad_input_fails_its_own_request_only(tmp_path: Path, make_image: ImageMaker) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    requests = [_request(tmp_path, make_image, 0),
                RestoreRequest(_spec(1), RestoreInputs(broken), tmp_path / "out1", overrides=SMALL),
                _request(tmp_path, make_image, 2)]
    results = restore_batch(requests)
    assert isinstance(results[1], InputError)
    assert [_metrics(r)["setup"]["batch_size"] for r in (results[0], results[2])] == [2, 2]  # type: ignore[arg-type]


def test_an_isolated_error_ends_its_job_alone_and_writes_nothing_for_it(tmp_path: Path,
                                                                        make_image: ImageMaker) -> None:
    requests = [_request(tmp_path, make_image, 0), _request(tmp_path, make_image, 1, callbacks=[RaiseAt(5)]),
                _request(tmp_path, make_image, 2)]
    results = restore_batch(requests, RestoreLimits(checkpoint_every=4), isolate=(Boom,))
    assert isinstance(results[1], Boom)
    assert not (tmp_path / "out1" / "metrics.json").exists()
    for k in (0, 2):
        assert isinstance(results[k], RestoreResult) and results[k].iterations == ITERATIONS  # type: ignore[union-attr]
    # The others match a batch that never had the failing job.
    (tmp_path / "calm").mkdir()
    calm = restore_batch([_request(tmp_path / "calm", make_image, k) for k in (0, 2)])
    assert [r.psnr_output for r in calm] == pytest.approx(  # type: ignore[union-attr]
        [results[0].psnr_output, results[2].psnr_output], abs=0.01)  # type: ignore[union-attr]


def test_an_error_that_is_not_isolated_ends_the_whole_batch(tmp_path: Path, make_image: ImageMaker) -> None:
    requests = [_request(tmp_path, make_image, 0), _request(tmp_path, make_image, 1, callbacks=[RaiseAt(5)])]
    with pytest.raises(Boom):
        restore_batch(requests)


def test_an_isolated_error_of_a_run_alone_is_its_result(tmp_path: Path, make_image: ImageMaker) -> None:
    [outcome] = restore_batch([_request(tmp_path, make_image, 0, callbacks=[RaiseAt(3)])], isolate=(Boom,))
    assert isinstance(outcome, Boom)
    assert not (tmp_path / "out0" / "metrics.json").exists()
