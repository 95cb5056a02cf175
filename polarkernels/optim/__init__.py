"""torch.optim optimizers on polarkernels' polar factor.

    opt = polarkernels.optim.PolarGrad(model.parameters(), lr=1e-3, weight_decay=0.01)
    opt = polarkernels.optim.Muon(polarkernels.optim.split_params(model), lr=0.02)

Matrices (and N-d weights through their :class:`MatrixView`: conv kernels flattened, expert
stacks as batches, fused QKV split into blocks and heads) take the polar update; everything else
takes AdamW in the same optimizer. See :class:`PolarGrad` for the algorithm and its options.
"""

from .diagnostics import EquilibriumMonitor, GroupStats
from .grad_checks import NonFiniteGradientError
from .muon import Muon
from .param_groups import split_params
from .polargrad import PolarGrad
from .qk_clip import max_attention_logits, qk_clip_
from .stiefel import StiefelMuon, on_stiefel, project_to_stiefel_, stiefel_error
from .stiefel_direction import StiefelDirection, stiefel_direction
from .views import MatrixView, view_for

__all__ = ["PolarGrad", "Muon", "split_params", "MatrixView", "view_for", "EquilibriumMonitor", "GroupStats",
           "NonFiniteGradientError", "qk_clip_", "max_attention_logits", "StiefelMuon", "project_to_stiefel_",
           "on_stiefel", "stiefel_error", "stiefel_direction", "StiefelDirection"]
