"""The polar factor of parameters that live on several ranks (torch.distributed).

Two layouts, both ending with every rank holding its part of U = polar(X) for every matrix:

- **replicated** (DDP, or a replicated DTensor): every rank holds the same full X. Each rank
  orthogonalizes a share (round-robin over same-shape buckets, rotating so small buckets
  spread too) and the results are all-gathered, bucket by bucket.
- **sharded** (FSDP2 / DTensor ``Shard(d)`` on a 1-D mesh): each rank holds a slice of X. Each
  matrix has an owner rank (round-robin); the owner gathers the full X, orthogonalizes all its
  matrices in one ``orthogonalize_many`` call and scatters the slices of U back.

Elementwise work (momentum, weight decay, the update) stays on local tensors
(:func:`local`); only the polar factor, which needs the whole matrix, communicates. The result
equals the single-process one: the same matrices go through the same ``orthogonalize`` call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch built without distributed support: no DTensor can exist
    DTensor = ()  # isinstance(t, ()) is always False

Orthogonalize = Callable[[list[Tensor]], list[Tensor]]


def local(t: Tensor) -> Tensor:
    """The local tensor of a DTensor (aliasing its storage), or ``t`` itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def mesh_group(t: Tensor) -> ProcessGroup | None:
    """The process group of a DTensor's 1-D mesh, or ``None`` for a plain tensor."""
    if not isinstance(t, DTensor):
        return None
    _check_one_dim_mesh(t)
    return t.device_mesh.get_group()


@dataclass(frozen=True)
class Sharding:
    """How a matrix view (rows, cols) is split across ``group``: torch.chunk slices of ``dim``."""

    group: ProcessGroup
    dim: int
    size: int

    def chunk(self) -> int:
        """Length of every slice but possibly the last ones (torch.chunk/DTensor semantics)."""
        return math.ceil(self.size / dist.get_world_size(self.group))

    def local_size(self, rank: int) -> int:
        """Length of rank ``rank``'s slice (0 for ranks past the end)."""
        c = self.chunk()
        return max(0, min(c, self.size - rank * c))


@dataclass(frozen=True)
class Layout:
    """Where a parameter's matrix lives: ``local``; ``replicated`` over ``group``; ``sharded``."""

    kind: str
    group: ProcessGroup | None = None
    sharding: Sharding | None = None


def layout_of(p: Tensor, process_group: ProcessGroup | None) -> Layout:
    """The layout of parameter ``p`` viewed as the matrix (p.shape[0], prod(p.shape[1:])).

    Plain tensors are ``local``, or ``replicated`` over ``process_group`` when one is given
    (DDP: every rank holds the same all-reduced gradient). DTensors must sit on a 1-D mesh with
    ``Replicate()`` or ``Shard(d)``, where d is 0 or, for 2-D parameters, 1.
    """
    if not isinstance(p, DTensor):
        if process_group is None or dist.get_world_size(process_group) == 1:
            return Layout("local")
        return Layout("replicated", process_group)
    _check_one_dim_mesh(p)
    group = p.device_mesh.get_group()
    (placement,) = p.placements
    if placement.is_replicate():
        return Layout("replicated", group)
    if placement.is_shard():
        d = placement.dim % p.ndim
        if d != 0 and not (p.ndim == 2 and d == 1):
            raise NotImplementedError(f"a {p.ndim}-D parameter sharded on dim {d} cannot be viewed as a "
                                      f"row- or column-sharded matrix; shard it on dim 0 (as FSDP2 does)")
        rows, cols = p.shape[0], math.prod(p.shape[1:])
        return Layout("sharded", group, Sharding(group, d, rows if d == 0 else cols))
    raise NotImplementedError(f"DTensor placement {placement} is not supported; expected Replicate() "
                              f"or Shard(d) (reduce Partial gradients before the step)")


def _check_one_dim_mesh(t: DTensor) -> None:
    if t.device_mesh.ndim != 1:
        raise NotImplementedError(f"DTensor parameters on a {t.device_mesh.ndim}-D device mesh are not "
                                  f"supported (HSDP/TP); use a 1-D mesh such as FSDP2's fully_shard")


def orthogonalize_replicated(mats: Sequence[Tensor], orth: Orthogonalize, group: ProcessGroup) -> list[Tensor]:
    """U for matrices every rank of ``group`` holds identically: each rank computes a share.

    Same-shape matrices form buckets; matrix t of a bucket goes to rank (offset + t) mod world,
    the offset running on across buckets. Each bucket is all-gathered as one
    (⌈k/world⌉, m, n) tensor per rank, zero-padded where a rank owns fewer.
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    buckets: dict[tuple, list[int]] = {}
    for i, x in enumerate(mats):
        buckets.setdefault((tuple(x.shape), x.dtype, x.device), []).append(i)
    owner, offset = [0] * len(mats), 0
    for idx in buckets.values():
        for t, i in enumerate(idx):
            owner[i] = (offset + t) % world
        offset += len(idx)
    mine = [i for i in range(len(mats)) if owner[i] == rank]
    done = dict(zip(mine, orth([mats[i] for i in mine])))

    out: list[Tensor | None] = [None] * len(mats)
    pending = []
    for idx in buckets.values():
        per_rank = [[i for i in idx if owner[i] == r] for r in range(world)]
        x = mats[idx[0]]
        send = x.new_zeros((max(map(len, per_rank)), *x.shape))
        for t, i in enumerate(per_rank[rank]):
            send[t] = done[i]
        recv = [torch.empty_like(send) for _ in range(world)]
        pending.append((dist.all_gather(recv, send, group=group, async_op=True), per_rank, recv))
    for work, per_rank, recv in pending:
        work.wait()
        for r, ids in enumerate(per_rank):
            for t, i in enumerate(ids):
                out[i] = done[i] if r == rank else recv[r][t]
    return out  # type: ignore[return-value]


def orthogonalize_sharded(mats: Sequence[Tensor], shardings: Sequence[Sharding],
                          orth: Orthogonalize) -> list[Tensor]:
    """U's local slices for matrices split across ranks: gather on the owner, scatter back.

    ``mats[i]`` is this rank's slice of matrix i (sliced as ``shardings[i]`` says). Owners go
    round-robin per process group; every rank issues the same collectives in the same order.
    """
    owners, counters = [], {}
    for sh in shardings:
        n = counters.get(id(sh.group), 0)
        counters[id(sh.group)] = n + 1
        owners.append(n % dist.get_world_size(sh.group))

    gathers = []
    for x, sh, owner in zip(mats, shardings, owners):
        rank, world = dist.get_rank(sh.group), dist.get_world_size(sh.group)
        if x.shape[sh.dim] != sh.local_size(rank):
            raise RuntimeError(f"local shard of length {x.shape[sh.dim]} on dim {sh.dim} does not follow "
                               f"torch.chunk sharding of {sh.size} over {world} ranks")
        padded = _pad_to(x, sh.dim, sh.chunk()).contiguous()
        bufs = [torch.empty_like(padded) for _ in range(world)] if rank == owner else None
        work = dist.gather(padded, bufs, dst=dist.get_global_rank(sh.group, owner), group=sh.group,
                           async_op=True)
        gathers.append((work, bufs))
    full: dict[int, Tensor] = {}
    for i, ((work, bufs), sh) in enumerate(zip(gathers, shardings)):
        work.wait()
        if bufs is not None:
            full[i] = torch.cat(bufs, dim=sh.dim).narrow(sh.dim, 0, sh.size)
    factors = dict(zip(full, orth(list(full.values()))))

    scatters = []
    for i, (x, sh, owner) in enumerate(zip(mats, shardings, owners)):
        chunk, world = sh.chunk(), dist.get_world_size(sh.group)
        recv = torch.empty_like(_pad_to(x, sh.dim, chunk)).contiguous()
        send = None
        if i in factors:
            send = [s.contiguous() for s in _pad_to(factors[i], sh.dim, chunk * world).split(chunk, sh.dim)]
        work = dist.scatter(recv, send, src=dist.get_global_rank(sh.group, owner), group=sh.group,
                            async_op=True)
        scatters.append((work, recv))
    out = []
    for (work, recv), x, sh in zip(scatters, mats, shardings):
        work.wait()
        out.append(recv.narrow(sh.dim, 0, x.shape[sh.dim]))
    return out


def _pad_to(x: Tensor, dim: int, length: int) -> Tensor:
    """x zero-padded at the end of ``dim`` (0 or 1 of a matrix) to ``length``."""
    extra = length - x.shape[dim]
    if extra == 0:
        return x
    return F.pad(x, (0, extra) if dim == 1 else (0, 0, 0, extra))


def sum_over_groups(values: Sequence[Tensor], groups: Sequence[ProcessGroup | None]) -> list[Tensor]:
    """Each 0-d ``values[i]`` summed over ``groups[i]`` (kept as is where the group is None).

    Used for ν = ⟨X, U⟩ of sharded matrices: each rank holds the partial sum of its slice.
    """
    out = list(values)
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        if g is not None:
            by_group.setdefault(id(g), []).append(i)
    for idx in by_group.values():
        stacked = torch.stack([values[i] for i in idx])
        dist.all_reduce(stacked, group=groups[idx[0]])
        for t, i in enumerate(idx):
            out[i] = stacked[t]
    return out
