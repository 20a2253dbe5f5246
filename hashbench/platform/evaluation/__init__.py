"""Retrieval evaluation: exact ranking engines (torch, faiss), metrics under named conventions and
tie policies, embedding-quality metrics. See docs/metrics.md for every definition."""

from hashbench.platform.evaluation.core import CONVENTIONS, TIES, evaluate
from hashbench.platform.evaluation.embedding import (davies_bouldin_score, knn_balanced_accuracy,
                                                     silhouette_score)
from hashbench.platform.evaluation.engines import ENGINES

__all__ = ["evaluate", "silhouette_score", "davies_bouldin_score", "knn_balanced_accuracy",
           "CONVENTIONS", "TIES", "ENGINES"]
