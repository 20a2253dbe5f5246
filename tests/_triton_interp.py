"""The fused Triton kernel modules, imported with Triton's CPU interpreter on (shared by the test files
that run them). ``triton.jit`` reads ``TRITON_INTERPRET`` when a module is imported, so the modules are
imported afresh with the variable set, which is then restored. ``HASHBENCH_FUSED_CUDA=1`` runs them on
a GPU instead."""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

KERNEL_MODULES = ("hashbench.platform.evaluation.fused_triton", "hashbench.platform.evaluation.fused_tie_sums")
ON_CUDA = os.environ.get("HASHBENCH_FUSED_CUDA") == "1"
if ON_CUDA and not torch.cuda.is_available():
    pytest.skip("HASHBENCH_FUSED_CUDA=1 but no CUDA device", allow_module_level=True)
DEV = "cuda" if ON_CUDA else "cpu"


def import_interpreted():
    """(fused_triton, fused_tie_sums), interpreted unless ``ON_CUDA``."""
    if not ON_CUDA and not all(getattr(sys.modules.get(n), "INTERPRET", False) for n in KERNEL_MODULES):
        old = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            for name in KERNEL_MODULES:
                sys.modules.pop(name, None)
                importlib.import_module(name)
        finally:
            if old is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = old
    return tuple(importlib.import_module(n) for n in KERNEL_MODULES)
