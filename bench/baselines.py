"""What users run today to orthogonalize a matrix, as the benchmark's baselines.

- :func:`svd_uvt`: U Vᵀ from ``torch.linalg.svd`` (thin), the exact polar factor.
- :func:`torch_svd_polar`: U and H from ``torch.linalg.svd``, the polar decomposition a torch
  user writes without this package (the peer ``polar()`` must not lose to on CPU).
- :func:`scipy_polar`: ``scipy.linalg.polar`` (CPU; one call per matrix, as it takes no batch).
- :func:`torch_muon`: ``torch.optim.Muon``'s orthogonalization,
  ``torch.optim._muon._zeropower_via_newtonschulz`` (bfloat16 always, 2-D only), when this torch
  has it (:data:`TORCH_MUON_REASON` says why not otherwise).
- :func:`keller_jordan_quintic`: a plain-torch copy of the 5-step quintic of KellerJordan/Muon
  (``zeropower_via_newtonschulz5``), written here from its published description, with the
  working dtype as a parameter (the original hard-codes bfloat16).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

#: Muon's quintic (KellerJordan/Muon; torch.optim.Muon's default ``ns_coefficients``).
MUON_COEFFS = (3.4445, -4.7750, 2.0315)
MUON_STEPS = 5
MUON_EPS = 1e-7

try:
    from torch.optim._muon import _zeropower_via_newtonschulz as _torch_zeropower
except ImportError as exc:
    _torch_zeropower = None
    TORCH_MUON_REASON = (f"torch {torch.__version__} has no torch.optim._muon._zeropower_via_newtonschulz "
                         f"({exc}); torch.optim.Muon ships with torch >= 2.9")
else:
    TORCH_MUON_REASON = ""


def svd_uvt(g: Tensor) -> Tensor:
    """U Vᵀ for G = U Σ Vᵀ (thin SVD), batched; half precision runs in float32 (SVD needs it)."""
    work = g.float() if g.dtype in (torch.bfloat16, torch.float16) else g
    u, _, vh = torch.linalg.svd(work, full_matrices=False)
    return (u @ vh).to(g.dtype)


def torch_svd_polar(g: Tensor) -> tuple[Tensor, Tensor]:
    """(U, H) = (P Qᴴ, Q Σ Qᴴ) from ``torch.linalg.svd`` of G = P Σ Qᴴ, batched."""
    p, s, qh = torch.linalg.svd(g, full_matrices=False)
    h = (qh.mH * s[..., None, :]) @ qh
    return p @ qh, (h + h.mH) / 2


def scipy_polar(g: Tensor) -> Tensor:
    """``scipy.linalg.polar(G)[0]`` per matrix of the batch (CPU float32/float64)."""
    arrays = g.detach().cpu().numpy()
    flat = arrays.reshape(-1, *arrays.shape[-2:])
    out = np.stack([scipy.linalg.polar(a)[0] for a in flat])
    return torch.from_numpy(out.reshape(arrays.shape))


def torch_muon(g: Tensor) -> Tensor:
    """torch.optim.Muon's orthogonalization, one call per matrix of the batch (it is 2-D only)."""
    if _torch_zeropower is None:
        raise RuntimeError(TORCH_MUON_REASON)
    flat = g.reshape(-1, *g.shape[-2:])
    out = [_torch_zeropower(m, MUON_COEFFS, MUON_STEPS, MUON_EPS) for m in flat]
    return torch.stack(out).reshape(g.shape)


def keller_jordan_quintic(g: Tensor, dtype: torch.dtype = torch.bfloat16, steps: int = MUON_STEPS) -> Tensor:
    """Muon's orthogonalization as in KellerJordan/Muon: X ← aX + (bA + cA²)X with A = XXᵀ,
    after X = G/(‖G‖_F + 1e-7), on the wide orientation, in ``dtype``; batched over leading dims."""
    a, b, c = MUON_COEFFS
    x = g.to(dtype)
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + MUON_EPS)
    for _ in range(steps):
        s = x @ x.mT
        bmat = b * s + c * s @ s
        x = a * x + bmat @ x
    return x.mT if tall else x
