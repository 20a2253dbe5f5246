"""GraphedStep's control flow (training/graphed.py) with the CUDA graph API replaced by fakes.

The real capture needs a GPU. Here ``torch.cuda.CUDAGraph`` / ``graph`` / streams are fakes: a step
function called while "capturing" registers itself as the graph's body instead of running, and
``replay()`` runs that body on whatever the static row tensor holds at that moment — as a real graph
replays its kernels on the static input. The tests check which steps run eagerly, when the graph is
captured (and captured again), that every replay sees its own batch, and the fallback on failure.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from hashbench.platform.training import graphed
from hashbench.platform.training.graphed import WARMUP, GraphedStep, make_capturable


class FakeGraph:
    capturing = None          # the graph being captured, if any

    def __init__(self):
        self.body = None

    def replay(self):
        self.body()


@pytest.fixture
def fake_cuda(monkeypatch):
    @contextlib.contextmanager
    def graph(g):
        FakeGraph.capturing = g
        try:
            yield
        finally:
            FakeGraph.capturing = None

    class Stream:
        def __init__(self, *_):
            pass

        def wait_stream(self, _):
            pass

    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda _: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *_: Stream())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *_: None)


class Recorder:
    """A step function: records (first row id, zero_grad, how it ran) of every executed step."""

    def __init__(self, fail_capture=False):
        self.runs = []
        self.fail_capture = fail_capture
        self.static_out = torch.zeros(1)

    def __call__(self, rows, zero_grad):
        g = FakeGraph.capturing
        if g is not None:
            if self.fail_capture:
                raise RuntimeError("operation not permitted when stream is capturing")

            def body():
                self.runs.append((int(rows[0]), zero_grad, "replay"))
                self.static_out.fill_(float(rows[0]))
            g.body = body
            return self.static_out
        self.runs.append((int(rows[0]), zero_grad, "eager"))
        return torch.tensor([float(rows[0])])


def make(step_fn, lr=0.1):
    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([param], lr=lr)
    return GraphedStep(step_fn, opt, torch.device("cpu")), opt


def test_warm_up_then_capture_then_replay_every_batch(fake_cuda):
    rec = Recorder()
    step, _ = make(rec)
    outs = [float(step(torch.tensor([i, 100 + i]))[0]) for i in range(8)]
    assert outs == [float(i) for i in range(8)]                  # each step's own batch, replays included
    assert rec.runs[:WARMUP] == [(i, True, "eager") for i in range(WARMUP)]
    assert rec.runs[WARMUP:] == [(i, False, "replay") for i in range(WARMUP, 8)]   # no zero_grad in-graph
    assert step.captures == 1 and step.failed is None


def test_a_new_learning_rate_or_batch_shape_is_captured_again(fake_cuda):
    rec = Recorder()
    step, opt = make(rec)
    for i in range(5):
        step(torch.tensor([i, i]))
    opt.param_groups[0]["lr"] = 0.01                             # a scheduler step between epochs
    step(torch.tensor([5, 5]))
    step(torch.tensor([6, 6]))
    assert step.captures == 2 and rec.runs[-2:] == [(5, False, "replay"), (6, False, "replay")]
    step(torch.tensor([7, 7, 7]))                                # another batch shape
    assert step.captures == 3 and rec.runs[-1] == (7, False, "replay")


def test_capture_failure_warns_and_trains_eagerly(fake_cuda):
    rec = Recorder(fail_capture=True)
    step, _ = make(rec)
    with pytest.warns(UserWarning, match="capture of the training step failed .*not permitted"):
        for i in range(WARMUP + 1):
            step(torch.tensor([i]))
    for i in range(WARMUP + 1, 7):
        step(torch.tensor([i]))
    assert step.failed and step.captures == 0
    assert [r[0] for r in rec.runs] == list(range(7))             # no step lost, none run twice
    assert all(how == "eager" and zero for _, zero, how in rec.runs)


def test_make_capturable_switches_optimizers_with_a_step_counter():
    p = torch.nn.Parameter(torch.zeros(2))
    adam, sgd = torch.optim.Adam([p]), torch.optim.SGD([p], lr=0.1, momentum=0.9)
    make_capturable(adam, torch.device("cpu"))
    make_capturable(sgd, torch.device("cpu"))
    assert adam.param_groups[0]["capturable"] is True
    assert "capturable" not in sgd.param_groups[0]                 # SGD keeps no step counter
    assert graphed.WARMUP >= 1
