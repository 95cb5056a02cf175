"""Training loops shared by the optimizer tests: fixed random problems, one-step sizes."""

from __future__ import annotations

import torch


def random_problem(shapes, steps, seed, dtype=torch.float64):
    """Initial weights and ``steps`` lists of gradients, Gaussian, reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    w0 = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=dtype) for s in shapes] for _ in range(steps)]
    return w0, grads


def train(opt_cls, w0, grads, **kwargs):
    """Run ``opt_cls(params, **kwargs)`` through the given gradients; returns (params, optimizer)."""
    params = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = opt_cls(params, **kwargs)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    return params, opt


def step_size(opt_cls, g, **kwargs):
    """‖W₁ − W₀‖_F of one step from a fresh state, W₀ = 0 (so W₁ is the step, no cancellation)."""
    p = torch.nn.Parameter(torch.zeros_like(g))
    opt = opt_cls([p], lr=0.1, weight_decay=0.0, **kwargs)
    p.grad = g
    opt.step()
    return float(p.detach().norm())
