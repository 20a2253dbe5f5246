"""The whole training step as one CUDA graph: gather, augmentation, forward, loss, backward, update.

Small retrieval models are launch-bound on a GPU: a DCH step at batch 32 is a few hundred tiny
kernels, each costing more to launch from Python than to run. Captured once as a CUDA graph, a
step is one ``replay()``: the batch's row indices are copied into a static tensor and every kernel
of the step runs from the graph, with no Python in between.

Used by :func:`hashbench.platform.training.loop.fit` on a single CUDA device when the method says
its step is graph-safe (``Method.cuda_graph``: no host synchronisation, no data-dependent shapes, no
Python-side state that changes between steps) and ``TrainConfig.cuda_graph`` is on. The first
``WARMUP`` steps run eagerly on a side stream (cuDNN autotuning, cuBLAS workspaces and the
optimizer's lazily created state must exist before capture), the next step is captured and then
replayed. The graph is captured again when a learning rate changes (a scheduler step: learning
rates are constants inside the captured optimizer kernels) or the batch shape changes. If capture
fails the run continues eagerly, with a warning naming the error.

Randomness inside the graph (augmentation, dropout) comes from the default CUDA generator, which
graphs advance on every replay; the loop seeds it at each epoch.
"""

from __future__ import annotations

import time
import warnings

import torch

WARMUP = 3


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Optimizers with a step counter (Adam, Adadelta, ...) keep it on the device when capturable."""
    for group in optimizer.param_groups:
        if "capturable" in group:
            group["capturable"] = True
    for state in optimizer.state.values():
        step = state.get("step") if isinstance(state, dict) else None
        if torch.is_tensor(step) and step.device != device:
            state["step"] = step.to(device=device, dtype=torch.float32)


class GraphedStep:
    """``step(rows)`` -> terms vector, eager for the first steps, then replayed from a CUDA graph.

    ``step_fn(rows, zero_grad)`` runs one full training step and returns a 1-d tensor of its loss
    terms; with ``zero_grad=False`` it must not reset the gradients (inside the graph, backward writes
    them fresh). The returned tensor is only valid until the next call: copy it.
    """

    def __init__(self, step_fn, optimizer: torch.optim.Optimizer, device: torch.device):
        self.step_fn = step_fn
        self.optimizer = optimizer
        self.device = device
        self.graph = None
        self.static_rows = None
        self.out = None
        self.lrs = None
        self.warmed = 0
        self.failed = None          # the capture error, once capture failed
        self.captures = 0
        self.capture_s = 0.0        # wall time spent capturing (benchmarks/bench_trial.py)
        make_capturable(optimizer, device)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        if self.failed is not None:
            return self.step_fn(rows, True)
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        if self.graph is not None and (lrs != self.lrs or rows.shape != self.static_rows.shape):
            self.graph = None
        if self.graph is None:
            if self.warmed < WARMUP:
                self.warmed += 1
                return self._side_stream(rows)
            if not self._capture(rows, lrs):
                return self.step_fn(rows, True)
        self.static_rows.copy_(rows)
        self.graph.replay()
        return self.out

    def _side_stream(self, rows: torch.Tensor) -> torch.Tensor:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = self.step_fn(rows, True)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def _capture(self, rows: torch.Tensor, lrs: list) -> bool:
        t0 = time.perf_counter()
        try:
            return self._capture_graph(rows, lrs)
        finally:
            self.capture_s += time.perf_counter() - t0

    def _capture_graph(self, rows: torch.Tensor, lrs: list) -> bool:
        self.graph, self.out = None, None
        self.static_rows = rows.clone()
        self.optimizer.zero_grad(set_to_none=True)   # backward allocates the grads in the graph's pool
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                out = self.step_fn(self.static_rows, False)
        except Exception as exc:  # noqa: BLE001 - any capture error: keep training eagerly
            self.failed = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"CUDA graph capture of the training step failed ({self.failed}); "
                          f"training continues without graphs")
            torch.cuda.synchronize(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            return False
        self.graph, self.out, self.lrs = graph, out, lrs
        self.captures += 1
        return True
