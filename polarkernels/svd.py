"""The exact reference: the polar factor from the thin SVD.

    A = P Σ Qᵀ (thin, k = min(m, n))   ⇒   U = P Qᵀ,   H = Q Σ Qᵀ   (Higham, "Functions of
    Matrices", Thm. 8.1)

Backward stable and accurate for any condition number, rank-deficient inputs included (U is then
one of the many valid factors: LAPACK's choice of singular vectors for σ = 0). Slow on GPUs.
"""

from __future__ import annotations

import torch
from torch import Tensor


def svd_polar(a: Tensor) -> Tensor:
    """U = P Qᵀ for A = P Σ Qᵀ, batched over leading dims; float32/float64 (half is upcast)."""
    work = a if a.dtype in (torch.float32, torch.float64) else a.float()
    p, _, qh = torch.linalg.svd(work, full_matrices=False)
    return (p @ qh).to(a.dtype)
