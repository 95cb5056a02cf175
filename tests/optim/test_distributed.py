"""Distributed steps equal single-process steps: DDP, FSDP2 (1-D), HSDP (2×2), tensor parallel.

Each world size spawns CPU processes on the gloo backend once; every rank runs the distributed
optimizer and the single-process one on the same data and compares (a failed assertion on any
rank fails the test with that rank's traceback). Owners compute polar factors and ν from whole
matrices in the work dtype, exactly as one process does, so the steps agree bitwise given the
same gradients; real FSDP2 and TP models compute their gradients with their own reductions,
which round differently (check_fsdp2, check_tensor_parallel_model).
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from polarkernels.optim import MatrixView, Muon, NonFiniteGradientError, PolarGrad, split_params
from polarkernels.optim.distributed import PolarJob, layout_of, polar_factors

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with the gloo backend")

OPTIMIZERS = {
    "polargrad": lambda ps, **kw: PolarGrad(ps, lr=0.1, weight_decay=0.1, **kw),
    "polargrad_polar_first": lambda ps, **kw: PolarGrad(ps, lr=0.1, polar_first=True, nesterov=True, **kw),
    "muon_rms": lambda ps, **kw: Muon(ps, lr=0.1, adjust_lr_fn="match_rms_adamw", **kw),
    # X travels in bfloat16 (the work dtype, narrower than the float32 momentum).
    "muon_bf16": lambda ps, **kw: Muon(ps, lr=0.1, dtype=torch.bfloat16, **kw),
}

EXPERTS = MatrixView("batch").spec()
QKV = MatrixView(blocks=("q", "k", "v"), sizes=(5, 2, 2)).spec()
HEADS = MatrixView(head_dim=2, axis=1).spec()

# (shape, view spec or None): uneven dims (7, 5, 9, 13 on 2–4 ranks), a row fewer than the
# ranks (empty shards), a conv kernel, an expert stack, a GQA-like fused QKV (blocks of 5, 2, 2
# rows), an output projection cut into column heads, and an AdamW vector.
PARAMS = [((7, 5), None), ((5, 7), None), ((1, 9), None), ((13, 6), None), ((4, 3, 2, 2), None),
          ((3, 5, 7), EXPERTS), ((9, 6), QKV), ((5, 8), HEADS), ((7,), None)]


def groups_of(params, views):
    """One param group per parameter (like one group per layer), each with its view."""
    return [{"params": [p], **({"algorithm": "polar", "view": v} if v else {})} for p, v in zip(params, views)]


def run(params, views, grads, make, **kwargs):
    opt = make(groups_of(params, views), **kwargs)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g
        opt.step()
    return opt


def problem(shapes, steps=3):
    gen = torch.Generator().manual_seed(51)
    w0 = [torch.randn(s, generator=gen) for s in shapes]
    return w0, [[torch.randn(s, generator=gen) for s in shapes] for _ in range(steps)]


def reference(w0, views, grads, make):
    ref = [nn.Parameter(w.clone()) for w in w0]
    run(ref, views, [[g.clone() for g in gs] for gs in grads], make)
    return ref


def check_ddp(world):
    """Every rank holds all gradients; owners compute their share, one all-gather per bucket."""
    shapes, views = zip(*PARAMS)
    w0, grads = problem(shapes)
    for name, make in OPTIMIZERS.items():
        ref = reference(w0, views, grads, make)
        ddp = [nn.Parameter(w.clone()) for w in w0]
        run(ddp, views, [[g.clone() for g in gs] for gs in grads], make, process_group=dist.group.WORLD)
        for a, b in zip(ref, ddp):
            # The same whole matrices go through the same batched CPU kernels, in other batches.
            assert torch.equal(a, b), f"DDP {name} {tuple(a.shape)}: max |Δ| {float((a - b).abs().max()):.3e}"


def check_dtensor(mesh, placements_of, what):
    """DTensor parameters with ``placements_of(shape)`` on ``mesh`` step as one process does."""
    from torch.distributed.tensor import distribute_tensor

    shapes, views = zip(*PARAMS)
    placements = [placements_of(s) for s in shapes]
    w0, grads = problem(shapes)
    for name, make in OPTIMIZERS.items():
        ref = reference(w0, views, grads, make)
        sharded = [nn.Parameter(distribute_tensor(w.clone(), mesh, pl)) for w, pl in zip(w0, placements)]
        run(sharded, views, [[distribute_tensor(g.clone(), mesh, pl) for g, pl in zip(gs, placements)]
                             for gs in grads], make)
        for a, b, pl in zip(ref, sharded, placements):
            full = b.detach().full_tensor()
            assert torch.equal(full, a.detach()), (f"{what} {name} {tuple(a.shape)} {pl}: max |Δ| "
                                                   f"{float((full - a.detach()).abs().max()):.3e}")


def check_fsdp2_1d(world):
    """FSDP2 layout on a 1-D mesh: rows or columns sharded, one replicated matrix."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard

    mesh = init_device_mesh("cpu", (world,))
    check_dtensor(mesh, lambda s: [Replicate() if s == (13, 6) else Shard(1 if s == (5, 7) else 0)], "FSDP2")


def check_tensor_parallel(world):
    """TP: column- and row-parallel weights (Shard(0), Shard(1)) on the whole world as one mesh."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard

    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
    check_dtensor(mesh, lambda s: [Shard(len(s) - 1 if len(s) % 2 else 0)], "TP")


def check_hsdp_and_2d_tp(world):
    """2×2 meshes: HSDP (Replicate(), Shard(0)); TP × FSDP both sharded; HSDP × TP (2×1×2)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    check_dtensor(mesh, lambda s: [Replicate(), Shard(0)], "HSDP")
    check_dtensor(mesh, lambda s: [Shard(0), Shard(len(s) - 1)], "2-D TP")
    mesh3 = init_device_mesh("cpu", (2, 1, 2), mesh_dim_names=("replicate", "shard", "tp"))
    check_dtensor(mesh3, lambda s: [Replicate(), Shard(0), Shard(len(s) - 1)], "HSDP × TP")
    # Replicas do the same work on their own copies: the HSDP group is the shard dim only.
    from torch.distributed.tensor import distribute_tensor
    lay = layout_of(distribute_tensor(torch.zeros(5, 3), mesh, [Replicate(), Shard(0)]), None)
    assert dist.get_process_group_ranks(lay.group) == dist.get_process_group_ranks(mesh.get_group(1))
    assert lay.boxes == (((0, 3), (0, 3)), ((3, 2), (0, 3)))


def check_fsdp2(world):
    """fully_shard on a real model (1-D mesh, and HSDP 2×2 on 4 ranks): the unsharded trajectory."""
    from torch.distributed.device_mesh import init_device_mesh

    fsdp2_matches_single_process(None)
    if world == 4:
        fsdp2_matches_single_process(init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard")))


def fsdp2_matches_single_process(mesh):
    from torch.distributed.fsdp import fully_shard

    def model():
        torch.manual_seed(52)
        return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 7), nn.Tanh(), nn.Linear(7, 3))

    ref, sharded = model(), model()
    fully_shard(sharded, mesh=mesh)
    x, y = torch.randn(16, 5, generator=torch.Generator().manual_seed(53)), torch.randn(16, 3)
    opts = [PolarGrad(m.parameters(), lr=0.05, weight_decay=0.1) for m in (ref, sharded)]
    for _ in range(3):
        for m, opt in zip((ref, sharded), opts):
            opt.zero_grad()
            nn.functional.mse_loss(m(x), y).backward()     # same batch on every rank
            opt.step()
    for (name, a), b in zip(ref.named_parameters(), sharded.parameters()):
        # FSDP2 averages the identical per-rank gradients with a reduce-scatter (exact for 2 and
        # 4 ranks, one float32 rounding for 3): a few ulps of the weights.
        torch.testing.assert_close(b.detach().full_tensor(), a.detach(), rtol=1e-5, atol=1e-6, msg=name)


def check_tensor_parallel_model(world):
    """parallelize_module (column- then row-parallel): the unsharded trajectory.

    The hidden size divides the ranks: TP's own activations assume even shards (uneven
    parameter shards are covered by check_tensor_parallel).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    def model():
        torch.manual_seed(55)
        return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 5))

    ref, tp = model(), model()
    parallelize_module(tp, init_device_mesh("cpu", (world,)), {"0": ColwiseParallel(), "2": RowwiseParallel()})
    x, y = torch.randn(16, 6, generator=torch.Generator().manual_seed(56)), torch.randn(16, 5)
    opts = [Muon(split_params(m), lr=0.05, adamw_lr=0.01) for m in (ref, tp)]
    for _ in range(3):
        for m, opt in zip((ref, tp), opts):
            opt.zero_grad()
            nn.functional.mse_loss(m(x), y).backward()
            opt.step()
    for (name, a), b in zip(ref.named_parameters(), tp.parameters()):
        # The row-parallel layer sums its partial products across ranks (another float32 order
        # in the forward and backward): gradients differ by a few ulps, the weights likewise.
        torch.testing.assert_close(b.detach().full_tensor(), a.detach(), rtol=1e-5, atol=1e-6, msg=name)


def check_collectives_per_step(world):
    """One step of many parameters costs one bucket: 2 all-to-alls (sharded), 1 all-gather (DDP)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    calls = {"all_to_all_single": 0, "all_gather": 0}
    originals = {name: getattr(dist, name) for name in calls}

    def counting(name):
        def call(*args, **kwargs):
            calls[name] += 1
            return originals[name](*args, **kwargs)
        return call

    mesh = init_device_mesh("cpu", (world,))
    shapes, views = zip(*PARAMS)
    w0, grads = problem(shapes, steps=1)
    sharded = [nn.Parameter(distribute_tensor(w, mesh, [Shard(0)])) for w in w0]
    ddp = [nn.Parameter(w.clone()) for w in w0]
    try:
        for name in calls:
            setattr(dist, name, counting(name))
        run(sharded, views, [[distribute_tensor(g, mesh, [Shard(0)]) for g in grads[0]]], OPTIMIZERS["polargrad"])
        assert calls == {"all_to_all_single": 2, "all_gather": 0}
        run(ddp, views, grads, OPTIMIZERS["polargrad"], process_group=dist.group.WORLD)
        assert calls == {"all_to_all_single": 2, "all_gather": 1}
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)


def check_buckets_and_dtypes(world):
    """polar_factors itself: many small buckets, mixed dtypes, results of several shapes."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    gen = torch.Generator().manual_seed(54)
    shapes = [(7, 5), (1, 9), (6, 4, 3), (5, 6), (2, 3)]
    dtypes = [torch.float32, torch.bfloat16, torch.float64, torch.float16, torch.float32]
    whole = [torch.randn(s, generator=gen).to(d) for s, d in zip(shapes, dtypes)]

    def polar(idx, xs):
        # Stand-ins for (U, ν per row, ν): whole-tensor functions a shard alone cannot compute.
        return [(x * x.double().sum().to(x.dtype), x.double().sum(dim=-1, keepdim=True), x.double().sum())
                for x in xs]

    def jobs_of(tensors, layouts):
        return [PolarJob(t._local_tensor if hasattr(t, "_local_tensor") else t, tuple(w.shape), lay,
                         float(w.numel()), w.dtype,
                         ((tuple(w.shape), w.dtype), ((*w.shape[:-1], 1), torch.float64), ((), torch.float64)))
                for t, w, lay in zip(tensors, whole, layouts)]

    expected = polar(range(len(whole)), whole)
    for cap in (0, 100, 1 << 20):                          # one job per bucket … one bucket
        shards = [distribute_tensor(w, mesh, [Shard(0)]) for w in whole]
        got = polar_factors(jobs_of(shards, [layout_of(s, None) for s in shards]), polar, bucket_bytes=cap)
        for res, exp, lay, w in zip(got, expected, [layout_of(s, None) for s in shards], whole):
            r0, n0 = lay.boxes[dist.get_rank()][0]           # rows; the other dims are whole
            assert torch.equal(res[0], exp[0][r0:r0 + n0]) and res[0].dtype == w.dtype
            assert torch.equal(res[1], exp[1][r0:r0 + n0]) and torch.equal(res[2], exp[2])
        got = polar_factors(jobs_of(whole, [layout_of(w, dist.group.WORLD) for w in whole]), polar, bucket_bytes=cap)
        assert all(torch.equal(a, b) for res, exp in zip(got, expected) for a, b in zip(res, exp))


def check_errors(world):
    """Partial placements, nested shards of one dim and shards off torch.chunk raise clear errors."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Shard

    mesh = init_device_mesh("cpu", (world,))
    partial = DTensor.from_local(torch.ones(4, 3), mesh, [Partial()])
    with pytest.raises(NotImplementedError, match="Partial"):
        layout_of(partial, None)
    mesh2 = init_device_mesh("cpu", (2, world // 2))
    nested = DTensor.from_local(torch.ones(1, 3), mesh2, [Shard(0), Shard(0)], shape=(world, 3), stride=(3, 1))
    with pytest.raises(NotImplementedError, match="several mesh dims"):
        layout_of(nested, None)
    lay = layout_of(DTensor.from_local(torch.ones(2, 3), mesh, [Shard(0)], shape=(2 * world, 3),
                                       stride=(3, 1)), None)
    bad = PolarJob(torch.ones(1, 3), (2 * world, 3), lay, 1.0, torch.float32, (((2 * world, 3), torch.float32),))
    with pytest.raises(RuntimeError, match="torch.chunk"):
        polar_factors([bad], lambda idx, xs: [(x,) for x in xs])


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


CHECKS = {3: [check_ddp, check_fsdp2_1d, check_tensor_parallel, check_fsdp2, check_tensor_parallel_model,
              check_buckets_and_dtypes, check_collectives_per_step, check_nonfinite_on_one_shard],
          4: [check_ddp, check_fsdp2_1d, check_hsdp_and_2d_tp, check_fsdp2, check_buckets_and_dtypes, check_errors]}


def worker(rank, world, init_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for check in CHECKS[world]:
            check(world)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", sorted(CHECKS))
def test_distributed_equals_single_process(world, tmp_path, monkeypatch):
    # The spawned children unpickle `worker` by importing this module by name, with the
    # parent's sys.path: make sure this file's directory is on it whatever pytest's import mode.
    monkeypatch.syspath_prepend(os.path.dirname(__file__))
    mp.spawn(worker, args=(world, str(tmp_path / "init")), nprocs=world, join=True)
