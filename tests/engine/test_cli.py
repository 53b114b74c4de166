"""Tests of ``dip restore`` (dip_engine.cli): each task end to end in a subprocess, and bad input.

The task runs start together in one module fixture (they take a few seconds
each, mostly importing torch and matplotlib) and run at 1 thread each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dip_engine import __version__
from dip_engine.cli import EXIT_BAD_INPUT, main

MODULE = [sys.executable, "-m", "dip_engine.cli"]
SCRIPT = Path(sys.executable).with_name("dip")  # the installed console script: `dip restore`
REPO_ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures("one_thread")  # the in-process runs


def _entry(kind: str) -> list[str]:
    if kind == "script":
        if not SCRIPT.exists():
            pytest.skip(f"console script not installed at {SCRIPT}")
        return [str(SCRIPT), "restore"]
    return list(MODULE)


def _env() -> dict[str, str]:
    # One thread per run: three runs share two cores. The repository on the path, as from its root.
    return os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                         "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}


def _write(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode=mode).save(path)
    return path


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _jpeg(path: Path, array: np.ndarray, *, quality: int) -> Path:
    Image.fromarray(array).save(path, format="JPEG", quality=quality)
    return path


def _line_kernel(size: int) -> np.ndarray:
    """A horizontal motion blur, as a user would draw it: white on black."""
    kernel = np.zeros((max(3, size // 4 | 1), size), np.uint8)
    kernel[kernel.shape[0] // 2] = 255
    return kernel


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    out: Path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, make_image: Callable[..., np.ndarray]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-inputs")
    mask = np.full((64, 64), 255, np.uint8)
    mask[20:36, 24:44] = 0  # a hole
    return {
        "clean": _write(root / "clean.png", make_image(64, 64)),
        "lowres": _write(root / "lowres.png", make_image(16, 16, seed=1)),
        "mask": _write(root / "mask.png", mask),
        "mask32": _write(root / "mask32.png", mask[::2, ::2]),
        "text": _write_text(root / "notes.png", "this is not an image\n"),
        "tiny": _write(root / "tiny.png", make_image(8, 8)),
        "jpeg": _jpeg(root / "clean.jpg", make_image(64, 64), quality=20),
        "kernel": _write(root / "kernel.png", _line_kernel(7)),
        "big_kernel": _write(root / "big_kernel.png", _line_kernel(65)),
        "colour_kernel": _write(root / "colour_kernel.png", make_image(5, 5)),
        "black_kernel": _write(root / "black_kernel.png", np.zeros((5, 5), np.uint8)),
        "root": root,
    }


@pytest.fixture(scope="module")
def runs(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("cli-runs")
    common = ["--iterations", "12", "--log-every", "4", "--device", "cpu", "--json"]
    commands = {
        "denoise": _entry("script") + ["denoise", str(inputs["clean"]), "--add-noise", "25", "--snapshot-every", "6",
                                       "--checkpoint-every", "4", "--seed", "3"],
        "superres": MODULE + ["superres", str(inputs["lowres"]), "--scale", "4"],
        "inpaint": MODULE + ["inpaint", str(inputs["clean"]), "--mask", str(inputs["mask"])],
        "dejpeg": MODULE + ["dejpeg", str(inputs["jpeg"])],
        "deblur": MODULE + ["deblur", str(inputs["clean"]), "--kernel", str(inputs["kernel"])],
    }
    procs = {
        task: subprocess.Popen(cmd + common + ["--out", str(root / task)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=_env(), cwd=root)
        for task, cmd in commands.items()
    }
    results = {}
    try:
        for task, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=240)
            results[task] = Run(proc.returncode, stdout, stderr, root / task)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


RESULTS = {"denoise": "dip_denoised.png", "superres": "dip_superres_x4.png", "inpaint": "dip_inpainted.png",
           "dejpeg": "dip_dejpeg.png", "deblur": "dip_deblurred.png"}
TASKS = sorted(RESULTS)


def _ok(run: Run) -> Run:
    assert run.returncode == 0, run.stderr
    return run


def _png(path: Path) -> Image.Image:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    image = Image.open(path)
    image.load()
    return image


@pytest.mark.parametrize("task", TASKS)
def test_each_task_writes_the_named_files(runs: dict[str, Run], task: str) -> None:
    run = _ok(runs[task])
    result = _png(run.out / RESULTS[task])
    assert result.size == (64, 64) and result.mode == "RGB"  # superres: 16 px x4
    curves = _png(run.out / RESULTS[task].replace(".png", "_curves.png"))
    assert curves.width > 300
    for name in ("best.png", "last.png"):
        assert _png(run.out / name).size == (64, 64)
    assert not (run.out / "checkpoint.pt").exists()  # a finished run removes its checkpoint
    assert not (run.out / "checkpoint.json").exists()
    assert not [p.name for p in run.out.iterdir() if p.name.startswith(".")]  # no temporary files


@pytest.mark.parametrize("task", TASKS)
def test_metrics_json_has_summary_history_and_versions(runs: dict[str, Run], task: str) -> None:
    run = _ok(runs[task])
    metrics = json.loads((run.out / "metrics.json").read_text())
    assert {"summary", "history", "versions", "config", "spec"} <= metrics.keys()
    assert metrics["versions"]["dip_engine"] == __version__
    assert metrics["versions"]["torch"] == torch.__version__
    assert [r["iteration"] for r in metrics["history"]] == [4, 8, 12]
    assert all(r["loss"] > 0 and "psnr_degraded" in r for r in metrics["history"])
    summary = metrics["summary"]
    assert summary["task"] == task and summary["stop_reason"] == "completed"
    assert summary["iterations"] == summary["iteration_cap"] == 12
    assert metrics["output_size"] == [64, 64]
    assert metrics["files"]["result"] == RESULTS[task]
    assert all((run.out / name).exists() for name in metrics["files"].values())


@pytest.mark.parametrize("task", TASKS)
def test_json_prints_the_summary(runs: dict[str, Run], task: str) -> None:
    run = _ok(runs[task])
    printed = json.loads(run.stdout)  # nothing but the JSON on stdout
    assert printed == json.loads((run.out / "metrics.json").read_text())["summary"]
    assert "error" not in run.stderr.lower()


def test_denoise_with_added_noise_scores_against_the_clean_input(runs: dict[str, Run]) -> None:
    run = _ok(runs["denoise"])
    summary = json.loads(run.stdout)
    assert summary["psnr_input"] == pytest.approx(20.2, abs=1.0)  # sigma 25 on the 0-255 scale
    assert summary["psnr_best"] is not None and summary["psnr_output"] is not None
    assert _png(run.out / "degraded.png").size == (64, 64)
    for r in json.loads((run.out / "metrics.json").read_text())["history"]:
        assert r["psnr"] is not None and r["ssim"] is not None


def test_without_a_reference_there_is_no_psnr(runs: dict[str, Run]) -> None:
    for task in ("superres", "inpaint", "dejpeg", "deblur"):
        summary = json.loads(_ok(runs[task]).stdout)
        assert summary["psnr_output"] is None and summary["psnr_best"] is None
        assert not (runs[task].out / "degraded.png").exists()


def test_snapshot_every_writes_numbered_snapshots(runs: dict[str, Run]) -> None:
    run = _ok(runs["denoise"])
    snapshots = sorted(p.name for p in (run.out / "snapshots").iterdir())
    assert snapshots == ["iter_00006.png", "iter_00012.png"]
    assert all(_png(run.out / "snapshots" / name).size == (64, 64) for name in snapshots)
    assert json.loads((run.out / "metrics.json").read_text())["snapshots"] == snapshots


@pytest.mark.parametrize("task", ["superres", "inpaint", "dejpeg", "deblur"])
def test_by_default_every_log_point_has_a_snapshot(runs: dict[str, Run], task: str) -> None:
    run = _ok(runs[task])
    snapshots = sorted(p.name for p in (run.out / "snapshots").iterdir())
    assert snapshots == ["iter_00004.png", "iter_00008.png", "iter_00012.png"]


# -- bad input: one line on stderr, exit status 2, nothing written ------------------------------------


BAD_INPUTS = {
    # id: (arguments with {placeholders} for the inputs, a fragment of the message)
    "non-image": (["denoise", "{text}"], "not a recognised image"),
    "missing": (["denoise", "{root}/nope.png"], "nope.png"),
    "mask-for-denoise": (["denoise", "{clean}", "--mask", "{mask}"], "mask"),
    "wrong-mask-size": (["inpaint", "{clean}", "--mask", "{mask32}"], "32x32"),
    "no-mask": (["inpaint", "{clean}"], "mask"),
    "scale-3": (["superres", "{lowres}", "--scale", "3"], "invalid choice: 3"),
    "iterations-0": (["denoise", "{clean}", "--iterations", "0"], "got 0"),
    "iterations-text": (["denoise", "{clean}", "--iterations", "many"], "'many'"),
    "negative-log-every": (["denoise", "{clean}", "--log-every", "-5"], "got -5"),
    "drop-fraction-1.5": (["inpaint", "{clean}", "--drop-fraction", "1.5"], "got 1.5"),
    "noise-for-superres": (["superres", "{lowres}", "--add-noise", "25"], "only for denoise, deblur"),
    "negative-checkpoint-every": (["denoise", "{clean}", "--checkpoint-every", "-1"], "got -1"),
    "too-small": (["denoise", "{tiny}"], "8x8"),
    "unknown-task": (["colorize", "{clean}"], "invalid choice: 'colorize'"),
    "deblur-without-kernel": (["deblur", "{clean}"], "deblur needs exactly one of a kernel image or blur_sigma"),
    "kernel-and-sigma": (["deblur", "{clean}", "--kernel", "{kernel}", "--blur-sigma", "2"], "not allowed with"),
    "kernel-for-denoise": (["denoise", "{clean}", "--kernel", "{kernel}"], "a kernel is not used by denoise"),
    "kernel-too-large": (["deblur", "{clean}", "--kernel", "{big_kernel}"], "larger than the 64x64 px image"),
    "colour-kernel": (["deblur", "{clean}", "--kernel", "{colour_kernel}"], "2-D (grayscale)"),
    "black-kernel": (["deblur", "{clean}", "--kernel", "{black_kernel}"], "all black"),
    "sigma-for-denoise": (["denoise", "{clean}", "--blur-sigma", "2"], "blur_sigma is only for deblur"),
    "jpeg-quality-0": (["dejpeg", "{clean}", "--jpeg-quality", "0"], "got 0"),
}


def _argv(template: list[str], inputs: dict[str, Path]) -> list[str]:
    return [arg.format(**{k: str(v) for k, v in inputs.items()}) for arg in template]


def _assert_one_line(stderr: str, fragment: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), stderr
    assert lines[0].startswith("dip restore: error: "), lines[0]
    assert fragment in lines[0]


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(case: str, inputs: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    template, fragment = BAD_INPUTS[case]
    out = tmp_path / "out"
    try:
        status = main(_argv(template, inputs) + ["--out", str(out), "--device", "cpu"])
    except SystemExit as exc:  # argparse's usage errors
        status = exc.code
    captured = capsys.readouterr()
    assert status == EXIT_BAD_INPUT
    _assert_one_line(captured.err, fragment)
    assert captured.out == ""
    assert not out.exists()


@pytest.mark.parametrize(
    ("entry", "case"),
    [
        ("module", "scale-3"),
        ("module", "missing"),
        ("script", "scale-3"),
        ("script", "missing"),
    ],
)
def test_bad_input_through_a_real_process(entry: str, case: str, inputs: dict[str, Path], tmp_path: Path) -> None:
    template, fragment = BAD_INPUTS[case]
    out = tmp_path / "out"
    proc = subprocess.run(_entry(entry) + _argv(template, inputs) + ["--out", str(out)],
                          capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == EXIT_BAD_INPUT
    _assert_one_line(proc.stderr, fragment)
    assert proc.stdout == ""
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_one_fails_in_one_line(inputs: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    status = main(["denoise", str(inputs["clean"]), "--device", "cuda", "--out", str(out)])
    err = capsys.readouterr().err
    assert status != 0
    assert len(err.splitlines()) == 1 and "cuda" in err
    assert not out.exists()


def test_plain_output_is_one_line_naming_the_result(inputs: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    status = main(["inpaint", str(inputs["clean"]), "--drop-fraction", "0.5", "--iterations", "2",
                   "--device", "cpu", "--quiet", "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 0
    lines = captured.out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wrote {out / 'dip_inpainted.png'} (completed after 2 iterations")
    assert "PSNR" in lines[0]  # dropped pixels of a clean input: the input is the reference
    assert (out / "dip_inpainted.png").exists()


def test_the_options_and_the_api_form_are_one_declaration() -> None:
    """``RestoreSpec``'s table makes both: every field is an option of ``dip restore`` and (but the
    worker's device settings) a field of the API's form, with the same default and bounds."""
    from dip_engine.cli import ArgumentParser, add_restore_arguments, spec_from_args
    from dip_engine.spec import RestoreSpec, request_fields

    parser = ArgumentParser(prog="dip restore")
    add_restore_arguments(parser)
    assert spec_from_args(parser.parse_args(["denoise", "x.png"])) == RestoreSpec(task="denoise")
    args = parser.parse_args(["inpaint", "x.png", "--drop-fraction", "0.5", "--add-noise", "25", "--early-stop",
                              "off", "--seed", "7", "--device", "cpu"])
    assert spec_from_args(args) == RestoreSpec(task="inpaint", drop_fraction=0.5, add_noise_sigma=25.0,
                                               early_stop="off", seed=7, device="cpu")
    with pytest.raises(SystemExit):
        parser.parse_args(["inpaint", "x.png", "--drop-fraction", "0.5", "--mask", "m.png"])  # one or the other

    from core.schemas import JobCreate

    form = JobCreate.model_json_schema()["properties"]
    for each in request_fields():
        if not each.param.service:
            assert each.name not in form
            continue
        assert each.name in form, each.name
        if not each.required:
            assert JobCreate.model_fields[each.name].default == each.default
        for bound, key in (("gt", "exclusiveMinimum"), ("ge", "minimum"), ("lt", "exclusiveMaximum"),
                           ("le", "maximum")):
            if getattr(each.param, bound) is not None:
                numbers = [form[each.name], *form[each.name].get("anyOf", [])]
                assert any(n.get(key) == getattr(each.param, bound) for n in numbers), (each.name, bound)
