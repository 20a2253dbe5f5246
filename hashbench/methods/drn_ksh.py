"""``drn-ksh``: the DRH paper's DRN-KSH baseline (Conjeti et al., arXiv 1612.05400, Sec. 4 and Table 1).

"DRN-KSH by training a deep residual network with only the supervised retrieval loss and quantizing
through KSH post training": DRH's network (:class:`hashbench.methods.drh.DRHNet`: the small residual
trunk, global average pooling, the per-channel centring of the pooled features that DRH's default
``fch_input="centred"`` adds, the K-unit tanh layer) and optimiser (SGD, momentum, weight decay,
lr / 10 on a validation plateau), trained with the loss of eq. (3) reduced to its first term,

    J = J_S = 1 − (1/N) Σ_i Σ_{j≠i} p_ij s_ij                       (eq. 1; drh.retrieval_loss)

(λ_q = λ_b = λ_o = 0: no quantization, no bit balance, no orthogonality), then binarised by KSH
(:mod:`hashbench.methods.ksh`) fitted in ``finalize`` on the K tanh outputs of the train split.
Everything but the loss and the binarisation is DRH's, so ``drh`` vs ``drn-ksh`` isolates the paper's
claim that end-to-end hashing beats a two-stage one (14.2 % MAP at 34 layers).
"""

from __future__ import annotations

from hashbench.methods import _supervised_hashing as sh
from hashbench.methods import drh, ksh

sh.register_two_stage(
    "drn-ksh", trunk="drn", hasher=ksh.HASHER, family="drh",
    summary="DRH baseline DRN-KSH: DRH's residual network trained with the retrieval loss J_S only, "
            "binarised by KSH after training",
    citation=drh.CITATION + " KSH: " + ksh.CITATION, paper=drh.PAPER)
