"""``lsh``: sign random projections (Charikar 2002) of CNN features — a two-stage baseline.

``h(x) = sgn(Wᵀ(f(x) − μ))`` with ``W`` (2048 × bits) of i.i.d. N(0, 1) entries
drawn from the ``seed`` parameter and ``μ`` the mean train feature (hyperplanes
through the data's centre: the ReLU features are all non-negative, so
hyperplanes through the origin would cut little). See docs/methods/lsh-itq.md.
"""

from __future__ import annotations

import torch

from hashbench.methods import _two_stage as ts
from hashbench.platform.registry import Method, Requirements, register

CITATION = ("Charikar MS. Similarity estimation techniques from rounding algorithms. STOC 2002. "
            "Features: " + ts.DCH_CITATION)


@torch.no_grad()
def finalize(model, batches, hp) -> None:
    """Fit μ on the train features; ``W`` stays the seeded Gaussian drawn at build time."""
    model = getattr(model, "module", model)
    feats = ts.collect_features(model, batches)
    model.mean.copy_(feats.mean(dim=0).to(model.mean.dtype))


register(Method(
    id="lsh", family="two-stage",
    summary="Random-hyperplane LSH on the features of a CNN trained with cross-entropy (DCH net, no LBE)",
    citation=CITATION, paper="../shared/papers/001_ccae20c2c51c6ac7.txt",
    build_model=ts.build_model, build_loss=ts.build_loss, build_optimizer=ts.build_optimizer,
    finalize=finalize, params=ts.stage_one_params(), code_type="binary", distance="hamming",
    batch_size=32, epochs=30, requires=Requirements(min_image_size=8)))
