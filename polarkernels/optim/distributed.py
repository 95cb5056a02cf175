"""The polar factors of parameters that live on several ranks (torch.distributed).

A polar factor needs the whole matrix, everything else in a step is elementwise and stays on
each rank's local tensor (:func:`local`). So a step hands :func:`polar_factors` one
:class:`PolarJob` per parameter: this rank's part of X (the momentum, or the gradient), and
gets back this rank's part of whatever the optimizer's ``polar`` function computes from the
whole X (U, and ν = ⟨X, U⟩ for PolarGrad), with the optimizer's matrix view applied to the
whole parameter, so an expert stack is orthogonalized expert by expert wherever it is cut.

**Layouts** (:func:`layout_of`):

- ``local``: a plain tensor without a process group (one process), or a DTensor whose mesh
  has one rank.
- ``replicated``: every rank of the group holds the whole X: DDP (plain tensors, pass
  ``process_group``) or a DTensor with only ``Replicate()`` placements.
- ``sharded``: a DTensor with ``Shard(d)`` on some mesh dimensions: FSDP2 (1-D mesh),
  tensor parallel (``Shard(0)``/``Shard(1)``, on one or more mesh dimensions), HSDP
  (``(Replicate(), Shard(0))`` on a replicate × shard mesh). The group is the sub-mesh of
  the sharded dimensions through this rank; its ranks hold disjoint boxes that tile X. Mesh
  dimensions with ``Replicate()`` (HSDP's replicas) each do the same work on their own copy:
  no traffic crosses them (they are usually the slow links between nodes).

**Algorithm.** One owner per job for the whole step, across all param groups:
:func:`~polarkernels.optim.owners.assign_owners` balances the polar FLOPs (greedy longest
processing time; owners by count within each param group, as before, left the busiest of 16
ranks with 4.8× the mean work and 10 idle; this gives 1.07×). Jobs are balanced per process
group (one per mesh in practice), since only its ranks see its jobs: every rank then computes
the same assignment without communicating. Jobs are then cut, in order, into buckets of at
most :data:`BUCKET_BYTES` of whole X (a larger job is a bucket alone), and each bucket costs

- replicated: one ``all_gather`` (owners compute from their own copy, everyone gathers all
  results; per-rank payloads padded to the largest);
- sharded: two ``all_to_all_single``: every rank sends its box of X to each job's owner, the
  owner assembles the whole X, runs ``polar`` on all its jobs at once (one batched call per
  shape), and sends every rank its box of each result ("duplicated" semantics for tensor
  parallel: the polar factor of the whole matrix, never of a shard).

X travels in the job's work dtype (the dtype the polar factor is computed in, or X's own if
narrower), results in the dtype ``polar`` returns them; payloads of several
dtypes share one byte buffer per collective. Since ``polar`` sees the same whole matrices as
in one process, the distributed step equals the single-process step bitwise on CPU (the tests
check it on gloo); only batch sizes differ, and batched kernels that round differently by batch
size would break that (on CPU they do not).

**Memory.** Beyond its own parameter pieces, a rank holds, for one bucket at a time: the
whole X of the jobs it owns in the bucket, their results, and send/receive buffers of the same
sizes: about 3× the bytes of the matrices it owns in the bucket (in the work dtype) plus 2× its
own pieces of the bucket. So the bound is 3 × max(:data:`BUCKET_BYTES`, largest matrix), reached
only if one rank owns a whole bucket (owners balance the step's FLOPs, not each bucket's bytes;
typically a rank owns about 1/ranks of each bucket). Replicated buckets also receive every result
of the bucket (the all-gather), as DDP must.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from .owners import assign_owners

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup
    from torch.distributed.device_mesh import DeviceMesh

try:
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # torch built without distributed support: no DTensor can exist
    DTensor = ()  # isinstance(t, ()) is always False

#: Bytes of whole X (in the work dtype) per bucket of collectives; bounds the owners' memory.
BUCKET_BYTES = 256 * 2 ** 20

#: ``polar(indices, xs)``: for whole tensors ``xs`` (of jobs ``indices``), one tuple of result
#: tensors per job. Each result is 0-d or has the parameter's dims, each of size 1 or full.
Polar = Callable[[Sequence[int], list[Tensor]], list[tuple[Tensor, ...]]]

Box = tuple[tuple[int, int], ...]            # (start, length) per tensor dim

_ALIGN = 8                                   # bytes: every payload starts float64-aligned


def local(t: Tensor) -> Tensor:
    """The local tensor of a DTensor (aliasing its storage), or ``t`` itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def mesh_group(t: Tensor) -> ProcessGroup | None:
    """A process group of all the ranks of a DTensor's mesh, or ``None`` for a plain tensor."""
    return _flat_group(t.device_mesh, range(t.device_mesh.ndim)) if isinstance(t, DTensor) else None


@dataclass(frozen=True)
class Layout:
    """Where a parameter lives: ``local``, ``replicated`` or ``sharded`` over ``group``.

    For ``sharded``, ``boxes[k]`` is the box of the parameter that rank k of ``group`` holds.
    """

    kind: str
    group: ProcessGroup | None = None
    boxes: tuple[Box, ...] = ()


LOCAL = Layout("local")


def layout_of(p: Tensor, process_group: ProcessGroup | None) -> Layout:
    """The layout of parameter ``p`` (see the module docstring).

    Plain tensors are ``local``, or ``replicated`` over ``process_group`` when one is given
    (DDP: every rank holds the same all-reduced gradient). DTensor placements must be
    ``Replicate()`` or ``Shard(d)``, each tensor dim sharded on at most one mesh dim; ``Partial``,
    nested shards of one dim and the strided shards of FSDP2 over TP raise ``NotImplementedError``.
    """
    if not isinstance(p, DTensor):
        if process_group is None or dist.get_world_size(process_group) == 1:
            return LOCAL
        return Layout("replicated", process_group)
    mesh, placements = p.device_mesh, tuple(p.placements)
    key = (id(mesh), placements, tuple(p.shape))
    if key not in _DTENSOR_LAYOUTS:               # keyed by the mesh object, which the entry keeps alive
        _DTENSOR_LAYOUTS[key] = (mesh, _dtensor_layout(mesh, placements, tuple(p.shape)))
    return _DTENSOR_LAYOUTS[key][1]


_DTENSOR_LAYOUTS: dict[tuple, tuple[DeviceMesh, Layout]] = {}


def _dtensor_layout(mesh: DeviceMesh, placements: tuple, shape: tuple[int, ...]) -> Layout:
    """:func:`layout_of` a DTensor of ``shape`` with ``placements`` on ``mesh``, uncached."""
    for pl in placements:
        if type(pl) not in (Replicate, Shard):
            raise NotImplementedError(f"DTensor placement {pl} is not supported; expected Replicate() or Shard(d) "
                                      f"(reduce Partial gradients before the step)")
    sharded = [j for j, pl in enumerate(placements) if isinstance(pl, Shard)]
    dims = [placements[j].dim % len(shape) for j in sharded]
    if len(set(dims)) < len(dims):
        raise NotImplementedError(f"placements {placements} shard one tensor dim on several mesh dims; "
                                  f"shard each tensor dim on at most one mesh dim")
    group = _flat_group(mesh, sharded or range(mesh.ndim))
    if dist.get_world_size(group) == 1:
        return LOCAL
    if not sharded:
        return Layout("replicated", group)
    boxes = []
    for k in range(dist.get_world_size(group)):
        coord = (mesh.mesh == dist.get_global_rank(group, k)).nonzero()[0].tolist()
        boxes.append(_box(shape, mesh.shape, coord, placements))
    return Layout("sharded", group, tuple(boxes))


def _flat_group(mesh: DeviceMesh, dims: Sequence[int]) -> ProcessGroup:
    """One process group over mesh dimensions ``dims`` (through this rank)."""
    dims = list(dims)
    if len(dims) == 1:
        return mesh.get_group(dims[0])
    if len(dims) == mesh.ndim:
        return mesh._flatten().get_group()
    if mesh.mesh_dim_names is None:
        raise NotImplementedError(f"parameters sharded on mesh dims {dims} of a {mesh.ndim}-D mesh need "
                                  f"named mesh dims (init_device_mesh(..., mesh_dim_names=...))")
    return mesh[tuple(mesh.mesh_dim_names[j] for j in dims)]._flatten().get_group()


def _box(shape: Sequence[int], mesh_shape: Sequence[int], coord: Sequence[int], placements: Sequence) -> Box:
    """The box that mesh coordinate ``coord`` holds: DTensor's torch.chunk slices of each sharded dim."""
    box = [(0, n) for n in shape]
    for size, c, pl in zip(mesh_shape, coord, placements):
        if isinstance(pl, Shard):
            d = pl.dim % len(shape)
            chunk = math.ceil(shape[d] / size)
            start = min(c * chunk, shape[d])
            box[d] = (start, min(chunk, shape[d] - start))
    return tuple(box)


@dataclass(frozen=True)
class PolarJob:
    """One parameter's polar factor.

    Attributes:
        x: this rank's part of X (the whole of it unless the layout is ``sharded``).
        shape: the whole parameter's shape.
        layout: from :func:`layout_of`.
        cost: FLOPs of its polar factor (owners are balanced on it).
        dtype: the dtype X travels and is orthogonalized in.
        outputs: (shape, dtype) of each result ``polar`` returns for the whole X.
    """

    x: Tensor
    shape: tuple[int, ...]
    layout: Layout
    cost: float
    dtype: torch.dtype
    outputs: tuple[tuple[tuple[int, ...], torch.dtype], ...]


def polar_factors(jobs: Sequence[PolarJob], polar: Polar, bucket_bytes: int = BUCKET_BYTES) -> list[tuple[Tensor, ...]]:
    """This rank's part of ``polar``'s results for every job (see the module docstring).

    Every rank of every group must call this with the same jobs in the same order (as every
    rank steps the same parameters); local jobs go through one ``polar`` call here.
    """
    out: list[tuple[Tensor, ...] | None] = [None] * len(jobs)
    idx = [i for i, job in enumerate(jobs) if job.layout.kind == "local"]
    if idx:
        for i, res in zip(idx, polar(idx, [jobs[i].x.to(jobs[i].dtype) for i in idx])):
            out[i] = _checked(res, jobs[i])
    by_group: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        if job.layout.kind != "local":
            by_group.setdefault(id(job.layout.group), []).append(i)
    for idx in by_group.values():
        group = jobs[idx[0]].layout.group
        owners = assign_owners([jobs[i].cost for i in idx], dist.get_world_size(group)).owners
        owner = dict(zip(idx, owners))
        for kind, run in (("replicated", _replicated_bucket), ("sharded", _sharded_bucket)):
            for bucket in _buckets([i for i in idx if jobs[i].layout.kind == kind], jobs, bucket_bytes):
                run(bucket, jobs, owner, polar, group, out)
    return out  # type: ignore[return-value]


def _buckets(idx: list[int], jobs: Sequence[PolarJob], cap: int) -> list[list[int]]:
    """``idx`` cut in order into runs of at most ``cap`` bytes of whole X (at least one job each)."""
    buckets: list[list[int]] = []
    size = 0
    for i in idx:
        nbytes = math.prod(jobs[i].shape) * jobs[i].dtype.itemsize
        if not buckets or size + nbytes > cap:
            buckets.append([])
            size = 0
        buckets[-1].append(i)
        size += nbytes
    return buckets


def _replicated_bucket(bucket: list[int], jobs: Sequence[PolarJob], owner: dict[int, int], polar: Polar,
                       group: ProcessGroup, out: list) -> None:
    """Owners compute from their own copy; one all-gather of every owner's results."""
    world, me = dist.get_world_size(group), dist.get_rank(group)
    mine = [i for i in bucket if owner[i] == me]
    results = [_checked(res, jobs[i]) for i, res in zip(mine, polar(mine, [jobs[i].x.to(jobs[i].dtype) for i in mine]))]
    specs = [[spec for i in bucket if owner[i] == r for spec in jobs[i].outputs] for r in range(world)]
    width = max(sum(_nbytes(s, d) for s, d in sp) for sp in specs)
    device = jobs[bucket[0]].x.device
    send = torch.zeros(width, dtype=torch.uint8, device=device)
    packed = _pack([t for res in results for t in res], device)
    send[:packed.numel()] = packed
    recv = [torch.empty_like(send) for _ in range(world)]
    dist.all_gather(recv, send, group=group)
    for r in range(world):
        tensors = iter(_unpack(recv[r], specs[r]) if r != me else [t for res in results for t in res])
        for i in bucket:
            if owner[i] == r:
                out[i] = tuple(next(tensors) for _ in jobs[i].outputs)


def _sharded_bucket(bucket: list[int], jobs: Sequence[PolarJob], owner: dict[int, int], polar: Polar,
                    group: ProcessGroup, out: list) -> None:
    """Boxes of X to the owners, whole-X results computed there, boxes of the results back."""
    world, me = dist.get_world_size(group), dist.get_rank(group)
    device = jobs[bucket[0]].x.device
    for i in bucket:
        box = jobs[i].layout.boxes[me]
        if tuple(jobs[i].x.shape) != tuple(n for _, n in box):
            raise RuntimeError(f"local shard of shape {tuple(jobs[i].x.shape)} of a {tuple(jobs[i].shape)} "
                               f"parameter does not follow DTensor's torch.chunk sharding (expected {box})")
    mine = [i for i in bucket if owner[i] == me]
    to_owner = [[jobs[i].x.to(jobs[i].dtype) for i in bucket if owner[i] == r] for r in range(world)]
    from_ranks = _all_to_all(to_owner, [[(_box_shape(jobs[i].layout.boxes[r]), jobs[i].dtype) for i in mine]
                                        for r in range(world)], group, device)
    fulls = []
    for t, i in enumerate(mine):
        full = torch.empty(jobs[i].shape, dtype=jobs[i].dtype, device=device)
        for r in range(world):
            full[_slices(jobs[i].layout.boxes[r])] = from_ranks[r][t]
        fulls.append(full)
    results = [_checked(res, jobs[i]) for i, res in zip(mine, polar(mine, fulls))] if mine else []
    to_ranks = [[_piece(t, jobs[i].shape, jobs[i].layout.boxes[r]) for i, res in zip(mine, results) for t in res]
                for r in range(world)]
    specs = [[(_piece_shape(s, jobs[i].shape, jobs[i].layout.boxes[me]), d) for i in bucket if owner[i] == r
              for s, d in jobs[i].outputs] for r in range(world)]
    from_owners = [iter(ts) for ts in _all_to_all(to_ranks, specs, group, device)]
    for i in bucket:
        out[i] = tuple(next(from_owners[owner[i]]) for _ in jobs[i].outputs)


def _all_to_all(send: list[list[Tensor]], recv_specs: list[list[tuple[tuple[int, ...], torch.dtype]]],
                group: ProcessGroup, device: torch.device) -> list[list[Tensor]]:
    """``send[r]`` to rank r; tensors of ``recv_specs[r]`` from rank r; one byte buffer each way."""
    packed = [_pack(ts, device) for ts in send]
    recv_sizes = [sum(_nbytes(s, d) for s, d in specs) for specs in recv_specs]
    recv = torch.empty(sum(recv_sizes), dtype=torch.uint8, device=device)
    dist.all_to_all_single(recv, torch.cat(packed), recv_sizes, [p.numel() for p in packed], group=group)
    return [_unpack(chunk, specs) for chunk, specs in zip(recv.split(recv_sizes), recv_specs)]


def _nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    return -(-math.prod(shape) * dtype.itemsize // _ALIGN) * _ALIGN


def _pack(tensors: Sequence[Tensor], device: torch.device) -> Tensor:
    """Tensors of any dtypes as one uint8 buffer, each padded to :data:`_ALIGN` bytes."""
    parts = []
    for t in tensors:
        raw = t.contiguous().reshape(-1).view(torch.uint8)
        parts += [raw, raw.new_zeros(_nbytes(t.shape, t.dtype) - raw.numel())]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8, device=device)


def _unpack(buf: Tensor, specs: Sequence[tuple[tuple[int, ...], torch.dtype]]) -> list[Tensor]:
    """Inverse of :func:`_pack` for tensors of ``specs`` (views of ``buf``)."""
    out, offset = [], 0
    for shape, dtype in specs:
        n = math.prod(shape) * dtype.itemsize
        out.append(buf[offset:offset + n].view(dtype).reshape(shape))
        offset += _nbytes(shape, dtype)
    return out


def _box_shape(box: Box) -> tuple[int, ...]:
    return tuple(n for _, n in box)


def _slices(box: Box) -> tuple[slice, ...]:
    return tuple(slice(s, s + n) for s, n in box)


def _piece_shape(shape: Sequence[int], full: Sequence[int], box: Box) -> tuple[int, ...]:
    """Shape of a result's part in ``box``: dims of size 1 broadcast and stay whole."""
    if len(shape) == 0:
        return ()
    return tuple(1 if s == 1 and f != 1 else n for s, f, (_, n) in zip(shape, full, box))


def _piece(t: Tensor, full: Sequence[int], box: Box) -> Tensor:
    """The part of result ``t`` (0-d, or with dims 1 or full) that ``box`` of the parameter needs."""
    if t.ndim == 0:
        return t
    return t[tuple(slice(None) if s == 1 and f != 1 else slice(b, b + n)
                   for s, f, (b, n) in zip(t.shape, full, box))]


def _checked(results: tuple[Tensor, ...], job: PolarJob) -> tuple[Tensor, ...]:
    """``polar``'s results for ``job``, checked against the declared shapes and dtypes."""
    got = tuple((tuple(t.shape), t.dtype) for t in results)
    if got != tuple((tuple(s), d) for s, d in job.outputs):
        raise RuntimeError(f"polar returned {got} for a {job.shape} parameter, declared {job.outputs}")
    for s in got:
        if s[0] and (len(s[0]) != len(job.shape) or any(a not in (1, b) for a, b in zip(s[0], job.shape))):
            raise RuntimeError(f"a result of shape {s[0]} does not broadcast dim by dim to {job.shape}")
    return results
