"""A fit step's forward and backward pass, captured once as a CUDA graph and replayed.

DIP's step is small: at 512 px the paper's net launches a few hundred short kernels per
step, and on an H100/H200 the launches, not the arithmetic, set the speed. A CUDA graph
replays them all with one launch. Only the forward pass, the loss and the backward pass
are captured; everything that reads a value on the host (backtracking, logging, early
stopping) and the optimiser step stay eager, so they keep their exact behaviour: the
backtracker may still restore Adam's state with ``load_state_dict``, which a captured
step would not allow. The jitter is drawn eagerly too, from the run's own generator, so
a graphed run draws the same codes as an eager one and its checkpoints resume either way.

Capture needs static addresses: the parameters (restored in place by ``load_state_dict``)
and their gradients, which the graph writes rather than accumulates. So the caller must
not set the gradients to ``None`` between replays.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["GraphedStep"]

LossFn = Callable[[Tensor], tuple[Tensor, Tensor]]


class GraphedStep:
    """``out, loss = loss_fn(code); loss.backward()``, replayed from a CUDA graph.

    Args:
        loss_fn: maps the code to ``(output, scalar loss)``; it must not read values on
            the host (no ``.item()``, no data-dependent Python branches), and autocast
            inside it must run with ``cache_enabled=False``.
        net: the module whose parameters receive the gradients; its buffers (batch-norm
            statistics) are put back after the warm-up, so warming up leaves no trace.
        code: an example code, (1, C, H, W), on a CUDA device; its shape and layout are the
            graph's.
        warmup: eager passes on a side stream before capture (cuDNN picks its algorithms
            and the allocator settles there, as capture requires).
    """

    def __init__(self, loss_fn: LossFn, net: nn.Module, code: Tensor, *, warmup: int = 3) -> None:
        if code.device.type != "cuda":
            raise ValueError(f"a CUDA graph needs a CUDA device, got {code.device}")
        params = [p for p in net.parameters() if p.requires_grad]
        buffers = [b.detach().clone() for b in net.buffers()]
        self.code = code.detach().clone()
        side = torch.cuda.Stream(device=code.device)
        side.wait_stream(torch.cuda.current_stream(code.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                _, loss = loss_fn(self.code)
                loss.backward()
        torch.cuda.current_stream(code.device).wait_stream(side)
        with torch.no_grad():
            for live, saved in zip(net.buffers(), buffers):
                live.copy_(saved)
        for p in params:
            # Captured with no gradient, the backward pass writes the gradients afresh on
            # each replay instead of adding to the warm-up's.
            p.grad = None
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out, self.loss = loss_fn(self.code)
            self.loss.backward()

    def __call__(self, code: Tensor) -> tuple[Tensor, Tensor]:
        """One forward and backward pass on ``code``: the output and the loss, both copies
        (the graph's own tensors are overwritten by the next replay)."""
        self.code.copy_(code)
        self.graph.replay()
        return self.out.detach().clone(), self.loss.detach().clone()
