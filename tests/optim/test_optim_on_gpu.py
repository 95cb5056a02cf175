"""The optimizers on CUDA tensors (skipped without a GPU): default bfloat16 iteration, checks on device."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from polarkernels.optim import Muon, NonFiniteGradientError, PolarGrad

from optim_runs import random_problem

pytestmark = pytest.mark.gpu

SHAPES = [(64, 96), (64, 96), (80, 40), (8, 4, 3, 3), (96,)]


def trajectory(make, device, steps=5):
    w0, grads = random_problem(SHAPES, steps=steps, seed=61, dtype=torch.float32)
    params = [nn.Parameter(w.to(device, copy=True)) for w in w0]
    opt = make(params)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.to(device)
        opt.step()
    return w0, [p.detach().cpu() for p in params]


@pytest.mark.parametrize("make", [lambda ps: PolarGrad(ps, lr=0.02, weight_decay=0.1),
                                  lambda ps: Muon(ps, lr=0.02, adjust_lr_fn="match_rms_adamw")],
                         ids=["polargrad", "muon"])
def test_cuda_follows_cpu(make):
    """CUDA iterates in bfloat16 by default, CPU in float32: the displacements agree to bf16 level."""
    w0, gpu = trajectory(make, "cuda")
    _, cpu = trajectory(make, "cpu")
    for w, a, b in zip(w0, gpu, cpu):
        # bfloat16 (ε = 2⁻⁸) against float32 iterations: measured on CPU (dtype=bfloat16 against
        # float32, same problem) 0.6–2.0% on the displacement W − W₀; 5% leaves room for cuBLAS.
        rel = float((a - w - (b - w)).norm() / (b - w).norm())
        assert rel < 5e-2, f"{tuple(w.shape)}: relative displacement error {rel:.3e}"


def test_cuda_nonfinite_gradient_touches_nothing():
    p = nn.Parameter(torch.randn(16, 8, device="cuda"))
    opt = PolarGrad([p])
    before = p.detach().clone()
    p.grad = torch.randn(16, 8, device="cuda")
    p.grad[3, 3] = math.nan
    with pytest.raises(NonFiniteGradientError):
        opt.step()
    assert torch.equal(p.detach(), before) and not opt.state[p]
