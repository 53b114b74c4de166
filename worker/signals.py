"""Per-process set-up of the pool's child processes.

The main worker process imports torch (through the task module) but never
touches CUDA, so forking is safe; each child picks its CPU thread count at
start and its GPU when its first job starts (CUDA initialises then, in the
child).
"""

from __future__ import annotations

import os

import torch
from billiard.process import current_process
from celery import current_app
from celery.signals import worker_process_init


@worker_process_init.connect
def configure_child(**_: object) -> None:
    """Share the CPU cores among the pool's processes (unless OMP_NUM_THREADS says otherwise)."""
    if "OMP_NUM_THREADS" not in os.environ:
        concurrency = max(1, current_app.conf.worker_concurrency or 1)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // concurrency))


def select_device(device: str) -> str:
    """Pin this process to its GPU before a job; returns the device for the engine.

    Child *i* of the pool takes GPU ``i mod count`` (run ``concurrency`` =
    number of GPUs for one process per GPU). Without a GPU, ``device`` goes
    to the engine unchanged: ``auto`` becomes the CPU and ``cuda`` fails there
    with a clear error.
    """
    if device == "cpu" or not torch.cuda.is_available():
        return device
    index = getattr(current_process(), "index", None) or 0
    torch.cuda.set_device(index % torch.cuda.device_count())
    # One image size per run: let cuDNN pick the fastest convolution algorithms once.
    torch.backends.cudnn.benchmark = True
    return device
