"""Retrieval evaluation: exact ranking engines (torch, faiss), metrics under named conventions and
tie policies, embedding-quality metrics. See docs/metrics.md for every definition.

The names below are imported on first access (PEP 562), so that importing a light submodule
(``cpu_kernels``, ``cpu_eval``, ``inputs``) does not import torch through ``core``.
"""

from __future__ import annotations

import importlib

# public name -> submodule that defines it
_LAZY = {"evaluate": "core", "CONVENTIONS": "core", "TIES": "core",
         "silhouette_score": "embedding", "davies_bouldin_score": "embedding",
         "knn_balanced_accuracy": "embedding", "ENGINES": "engines"}

__all__ = ["evaluate", "silhouette_score", "davies_bouldin_score", "knn_balanced_accuracy",
           "CONVENTIONS", "TIES", "ENGINES"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
