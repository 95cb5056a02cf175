"""Riemannian SGD (``bench.optimizers.manifold``): one step equals the formula with an
independent polar factor (SVD), the iterate stays on the manifold, and bad input is refused."""

from __future__ import annotations

import pytest
import torch

from bench.optimizers.manifold import RiemannianSGD


def polar_svd(a: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(a, full_matrices=False)
    return u @ vh


@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (7, 7)])
@pytest.mark.parametrize("seed", [0, 1])
def test_two_steps_follow_the_formula(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    w0 = polar_svd(torch.randn(*shape, generator=gen, dtype=torch.float64))
    grads = [torch.randn(*shape, generator=gen, dtype=torch.float64) for _ in range(2)]
    p = torch.nn.Parameter(w0.clone())
    opt = RiemannianSGD([p], lr=0.3, momentum=0.9)
    w, m = w0.clone(), torch.zeros_like(w0)
    for g in grads:
        p.grad = g.clone()
        opt.step()
        m = 0.9 * m + g
        tall = shape[0] >= shape[1]
        wt, mt = (w, m) if tall else (w.mT, m.mT)
        direction = mt - wt @ ((wt.mT @ mt + mt.mT @ wt) / 2)        # P_T(M) at tall W
        new = polar_svd(wt - 0.3 * direction)
        w = new if tall else new.mT
        # float64 polar by different algorithms (polarkernels' vs SVD) on a well-conditioned
        # matrix: agreement to ~1e-14; 1e-10 leaves margin
        assert torch.allclose(p.detach(), w, atol=1e-10)
        small = min(shape)
        gram = p.detach().mT @ p.detach() if tall else p.detach() @ p.detach().mT
        assert torch.allclose(gram, torch.eye(small, dtype=torch.float64), atol=1e-12)   # on St(m, n)


def test_rejects_bad_hyperparameters_and_shapes():
    w = torch.nn.Parameter(torch.eye(3))
    with pytest.raises(ValueError, match="lr must be positive, got -1"):
        RiemannianSGD([w], lr=-1)
    with pytest.raises(ValueError, match="momentum must be in"):
        RiemannianSGD([w], lr=1, momentum=1.0)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        RiemannianSGD([torch.nn.Parameter(torch.ones(3))], lr=1)
