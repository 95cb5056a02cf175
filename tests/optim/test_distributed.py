"""Distributed steps equal single-process steps: DDP-style sharing, DTensor shards, FSDP2.

Each case spawns CPU processes on the gloo backend; every rank runs the distributed optimizer
and the single-process one on the same data and compares (a failed assertion on any rank fails
the test with that rank's traceback).
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from polarkernels.optim import Muon, NonFiniteGradientError, PolarGrad

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with the gloo backend")

OPTIMIZERS = [
    lambda ps, **kw: PolarGrad(ps, lr=0.1, weight_decay=0.1, **kw),
    lambda ps, **kw: PolarGrad(ps, lr=0.1, polar_first=True, nesterov=True, **kw),
    lambda ps, **kw: Muon(ps, lr=0.1, adjust_lr_fn="match_rms_adamw", **kw),
]


def run(params, grads, make, **kwargs):
    opt = make(params, **kwargs)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g
        opt.step()
    return opt


def problem(shapes, steps):
    gen = torch.Generator().manual_seed(51)
    w0 = [torch.randn(s, generator=gen) for s in shapes]
    return w0, [[torch.randn(s, generator=gen) for s in shapes] for _ in range(steps)]


def check_ddp(world):
    """Every rank holds all gradients; each orthogonalizes a share, all-gather completes U."""
    shapes = [(6, 5), (6, 5), (6, 5), (5, 7), (1, 9), (4, 3, 2, 2), (7,)]
    w0, grads = problem(shapes, steps=3)
    for make in OPTIMIZERS:
        ref = [nn.Parameter(w.clone()) for w in w0]
        run(ref, [[g.clone() for g in gs] for gs in grads], make)
        ddp = [nn.Parameter(w.clone()) for w in w0]
        run(ddp, [[g.clone() for g in gs] for gs in grads], make, process_group=dist.group.WORLD)
        for a, b in zip(ref, ddp):
            # The same matrices go through the same batched CPU kernels, only in smaller batches.
            assert torch.equal(a, b), f"DDP {tuple(a.shape)}: max |Δ| {float((a - b).abs().max()):.3e}"


def check_dtensor(world):
    """Sharded parameters: the owner gathers each matrix and scatters U's slices back."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    # Uneven rows, column sharding, a row fewer than the ranks (empty shards), a replicated
    # matrix, a conv weight sharded on out-channels, an AdamW vector.
    layout = [((7, 5), Shard(0)), ((5, 7), Shard(1)), ((1, 9), Shard(0)), ((6, 5), Replicate()),
              ((4, 3, 2, 2), Shard(0)), ((7,), Shard(0)), ((6, 5), Shard(0))]
    shapes, placements = [s for s, _ in layout], [pl for _, pl in layout]
    w0, grads = problem(shapes, steps=3)
    for make in OPTIMIZERS:
        ref = [nn.Parameter(w.clone()) for w in w0]
        run(ref, [[g.clone() for g in gs] for gs in grads], make)
        sharded = [nn.Parameter(distribute_tensor(w.clone(), mesh, [pl])) for w, pl in zip(w0, placements)]
        run(sharded, [[distribute_tensor(g.clone(), mesh, [pl]) for g, pl in zip(gs, placements)] for gs in grads],
            make)
        for a, b in zip(ref, sharded):
            full = b.detach().full_tensor()
            # ν = ⟨X, U⟩ is summed per shard, then across ranks: another float32 summation order,
            # relative error ≲ ε₃₂·√(mn) ≈ 1e-6 on ν; the polar factors themselves are bitwise.
            torch.testing.assert_close(full, a.detach(), rtol=1e-5, atol=1e-6, msg=f"DTensor {tuple(a.shape)}")


def check_fsdp2(world):
    """fully_shard on a real model: same trajectory as the unsharded model."""
    from torch.distributed.fsdp import fully_shard

    def model():
        torch.manual_seed(52)
        return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 7), nn.Tanh(), nn.Linear(7, 3))

    ref, sharded = model(), model()
    fully_shard(sharded)
    x, y = torch.randn(16, 5, generator=torch.Generator().manual_seed(53)), torch.randn(16, 3)
    opts = [PolarGrad(m.parameters(), lr=0.05, weight_decay=0.1) for m in (ref, sharded)]
    for _ in range(3):
        for m, opt in zip((ref, sharded), opts):
            opt.zero_grad()
            nn.functional.mse_loss(m(x), y).backward()     # same batch on every rank
            opt.step()
    for (name, a), b in zip(ref.named_parameters(), sharded.parameters()):
        # FSDP2 averages the identical per-rank gradients (exact for 2 ranks, one rounding for
        # 3), and ν is summed over shards as above: float32 rounding, a few ulps of the weights.
        torch.testing.assert_close(b.detach().full_tensor(), a.detach(), rtol=1e-5, atol=1e-6, msg=name)


def check_nonfinite_on_one_shard(world):
    """A NaN in one rank's shard stops every rank (no rank is left waiting in a collective)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    w = nn.Parameter(distribute_tensor(torch.ones(world * 2, 3), mesh, [Shard(0)]))
    for nonfinite in ("raise", "skip"):
        opt = PolarGrad([w], nonfinite=nonfinite)
        g = torch.ones(world * 2, 3)
        g[-1, -1] = math.nan                                # on the last rank's shard only
        w.grad = distribute_tensor(g, mesh, [Shard(0)])
        if nonfinite == "raise":
            with pytest.raises(NonFiniteGradientError):
                opt.step()
        else:
            opt.step()
            assert opt.skipped_steps == 1
        assert torch.equal(w.detach().full_tensor(), torch.ones(world * 2, 3))


CHECKS = [check_ddp, check_dtensor, check_fsdp2, check_nonfinite_on_one_shard]


def worker(rank, world, init_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for check in CHECKS:
            check(world)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_equals_single_process(world, tmp_path, monkeypatch):
    # The spawned children unpickle `worker` by importing this module by name, with the
    # parent's sys.path: make sure this file's directory is on it whatever pytest's import mode.
    monkeypatch.syspath_prepend(os.path.dirname(__file__))
    mp.spawn(worker, args=(world, str(tmp_path / "init")), nprocs=world, join=True)
