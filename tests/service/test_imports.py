"""The API process stays free of PyTorch: it validates uploads and enqueues by task name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_api_never_imports_torch() -> None:
    code = ("import sys, api.main, core.queue, worker.celery_app; "
            "api.main.create_app(api.main.Settings(redis_url='redis://127.0.0.1:1/0')).openapi(); "
            "heavy = sorted(m for m in ('torch', 'torchvision', 'matplotlib', 'worker.tasks') if m in sys.modules); "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
