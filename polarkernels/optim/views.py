"""A parameter's matrix view: the matrices the polar update sees in a tensor.

The polar factor is defined for a matrix, but weights come in other shapes. A
:class:`MatrixView` says, once, how a parameter maps to a list of matrices and back; every
optimizer and the distributed path use it, so none reshapes on its own:

========================  =====================================  =========================
weight                    view                                   matrices
========================  =====================================  =========================
Linear ``(out, in)``      ``MatrixView()``                       the weight itself
Conv ``(out, in, *k)``    ``MatrixView()`` ("flatten")           ``(out, in·∏k)``
experts ``(E, out, in)``  ``MatrixView("batch")``                E matrices ``(out, in)``
                          (any number of leading batch dims)
fused QKV ``(3d, d)``     ``MatrixView(blocks=("q", "k", "v"))``  Q, K, V: three ``(d, d)``
GQA QKV                   ``MatrixView(blocks=("q", "k", "v"),   blocks of 512, 128, 128
``(768, d)``              sizes=(512, 128, 128))``               rows
per head                  ``head_dim=64`` (with or without        every block cut into
                          blocks; ``axis=1`` splits columns,      64-row (or column) heads
                          e.g. an output projection)
========================  =====================================  =========================

Defaults (:func:`view_for`): a view the module declares for the parameter in its
``matrix_views`` attribute (``{"weight": MatrixView(...)}``: a model says once how its fused
weights split, e.g. ``self.qkv.matrix_views = {"weight": MatrixView(blocks=("q", "k", "v"))}``);
else 2-D weights as they are; weights of ``nn.Conv*`` modules flattened; ≥ 3-D weights of other
(user) modules are expert stacks. A bare ≥ 3-D tensor
with no module known (``PolarGrad(model.parameters())``) is flattened as a conv kernel (the
behaviour before views existed); :func:`~polarkernels.optim.split_params` knows the modules
and sends expert stacks to a ``"batch"`` group. ≥ 3-D weights of other ``torch.nn`` modules
(e.g. ``nn.Bilinear``) raise: give them a view.

A param group carries its view as plain data (``group["view"]``: ``None`` for the default
by shape, else :meth:`MatrixView.spec`), so checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

FLATTEN = "flatten"
BATCH = "batch"
LAYOUTS = (FLATTEN, BATCH)


@dataclass(frozen=True)
class MatrixView:
    """How a parameter of any shape maps to 2-D matrices (see the module docstring).

    Attributes:
        layout: "flatten": ``(d₀, d₁, …, d_k)`` → one ``(d₀, d₁·…·d_k)`` matrix;
            "batch": ``(…, m, n)`` → ∏… matrices ``(m, n)`` (expert stacks).
        blocks: names of the blocks each matrix is split into along ``axis`` (fused Q, K, V);
            ``()`` for no split.
        sizes: the blocks' lengths along ``axis``; ``None`` for equal parts.
        axis: 0 splits rows (the output dimension of ``nn.Linear``), 1 splits columns.
        head_dim: cut every block (or the whole matrix) further into heads of this length.
    """

    layout: str = FLATTEN
    blocks: tuple[str, ...] = ()
    sizes: tuple[int, ...] | None = None
    axis: int = 0
    head_dim: int | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if not all(isinstance(b, str) for b in self.blocks) or len(set(self.blocks)) != len(self.blocks):
            raise ValueError(f"blocks must be distinct names (str), got {self.blocks!r}")
        if self.sizes is not None:
            object.__setattr__(self, "sizes", tuple(self.sizes))
            if len(self.sizes) != len(self.blocks) or not all(_positive_int(s) for s in self.sizes):
                raise ValueError(f"sizes must be {len(self.blocks)} positive ints, one per block "
                                 f"{self.blocks}, got {self.sizes!r}")
        if self.axis not in (0, 1) or isinstance(self.axis, bool):
            raise ValueError(f"axis must be 0 (rows) or 1 (columns), got {self.axis!r}")
        if self.head_dim is not None and not _positive_int(self.head_dim):
            raise ValueError(f"head_dim must be a positive int or None, got {self.head_dim!r}")

    @property
    def is_default(self) -> bool:
        """True for the default view by shape (a matrix as is, an N-d weight flattened)."""
        return self == MatrixView()

    def spec(self) -> dict[str, Any]:
        """The view as plain data (what a param group stores); :meth:`from_spec` inverts it."""
        return asdict(self)

    @classmethod
    def from_spec(cls, spec: MatrixView | Mapping[str, Any] | None) -> MatrixView:
        """A view from :meth:`spec`'s dict, a view (returned as is), or ``None`` (the default)."""
        if spec is None:
            return cls()
        if isinstance(spec, MatrixView):
            return spec
        if not isinstance(spec, Mapping):
            raise TypeError(f"a view is a MatrixView, its spec() dict or None, got {type(spec).__name__}")
        unknown = set(spec) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown view field(s) {sorted(unknown)}; expected {list(cls.__dataclass_fields__)}")
        return cls(**spec)

    def batch_shape(self, shape: Sequence[int], what: str = "parameter") -> tuple[int, int, int]:
        """(B, m, n): the parameter as B matrices before any block split."""
        shape = tuple(shape)
        if len(shape) < 2:
            raise ValueError(f"{what} of shape {shape} has no matrix view (it needs ≥ 2 dimensions)")
        if self.layout == BATCH:
            return math.prod(shape[:-2]), shape[-2], shape[-1]
        return 1, shape[0], math.prod(shape[1:])

    def parts(self, shape: Sequence[int], what: str = "parameter") -> list[int]:
        """Lengths along ``axis`` of the pieces one matrix is cut into (blocks, then heads)."""
        _, m, n = self.batch_shape(shape, what)
        length = (m, n)[self.axis]
        where = f"{what} of shape {tuple(shape)} ({'rows' if self.axis == 0 else 'columns'}: {length})"
        if self.blocks and self.sizes is not None:
            if sum(self.sizes) != length:
                raise ValueError(f"{where}: block sizes {dict(zip(self.blocks, self.sizes))} sum to "
                                 f"{sum(self.sizes)}, not {length}")
            blocks = list(self.sizes)
        elif self.blocks:
            if length % len(self.blocks):
                raise ValueError(f"{where} does not split into {len(self.blocks)} equal blocks {self.blocks}; "
                                 f"give sizes=")
            blocks = [length // len(self.blocks)] * len(self.blocks)
        else:
            blocks = [length]
        if self.head_dim is None:
            return blocks
        if any(b % self.head_dim for b in blocks):
            raise ValueError(f"{where}: head_dim {self.head_dim} does not divide the block lengths {blocks}")
        return [self.head_dim for b in blocks for _ in range(b // self.head_dim)]

    def matrix_shapes(self, shape: Sequence[int], what: str = "parameter") -> list[tuple[int, int]]:
        """(m, n) of every matrix :meth:`to_matrices` returns, in order (validates ``shape``)."""
        batch, m, n = self.batch_shape(shape, what)
        one = [(p, n) if self.axis == 0 else (m, p) for p in self.parts(shape, what)]
        return one * batch

    def to_matrices(self, t: Tensor) -> list[Tensor]:
        """The matrices of ``t`` (views of it where the layout allows), batch-major."""
        batch, m, n = self.batch_shape(t.shape)
        parts = self.parts(t.shape)
        base = t.reshape(batch, m, n)
        if len(parts) == 1:
            return list(base.unbind(0))
        return [piece for mat in base.unbind(0) for piece in mat.split(parts, dim=self.axis)]

    def from_matrices(self, mats: Sequence[Tensor], shape: Sequence[int]) -> Tensor:
        """Inverse of :meth:`to_matrices`: the tensor of ``shape`` whose matrices are ``mats``."""
        batch, m, n = self.batch_shape(shape)
        k = len(self.parts(shape))
        if len(mats) != batch * k:
            raise ValueError(f"expected {batch * k} matrices for shape {tuple(shape)}, got {len(mats)}")
        if batch * k == 1:
            return mats[0].reshape(shape)
        rows = mats if k == 1 else [torch.cat(mats[b * k:(b + 1) * k], dim=self.axis) for b in range(batch)]
        return torch.stack(rows).reshape(shape)


def _positive_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


#: Module types whose N-d weights are kernels, flattened to (out, in·∏k).
CONV_MODULES = (nn.modules.conv._ConvNd,)


def view_for(param: Tensor, name: str | None = None, module: nn.Module | None = None,
             override: MatrixView | Mapping[str, Any] | None = None) -> MatrixView:
    """The view of ``param``: ``override`` if given, else the default by module type and shape.

    Defaults: the view ``module.matrix_views`` declares under the last component of ``name``;
    else 2-D → as is; ``nn.Conv*`` weights → flattened; ≥ 3-D weights of modules defined
    outside ``torch.nn`` → expert stacks (``"batch"``); a ≥ 3-D tensor without ``module`` →
    flattened (see the module docstring); ≥ 3-D weights of other ``torch.nn`` modules raise
    ``ValueError``. The view is checked against the shape (a bad split raises, naming ``name``).
    """
    what = f"parameter {name!r}" if name else "parameter"
    declared = getattr(module, "matrix_views", {}).get(name.rsplit(".", 1)[-1]) if name else None
    if override is not None or declared is not None:
        view = MatrixView.from_spec(override if override is not None else declared)
    elif param.ndim <= 2 or module is None or isinstance(module, CONV_MODULES):
        view = MatrixView()
    elif type(module).__module__.startswith("torch."):
        raise ValueError(f"{what} of shape {tuple(param.shape)} belongs to {type(module).__name__}, whose "
                         f"{param.ndim}-D weight is neither a conv kernel nor an expert stack; give it a "
                         f"MatrixView (split_params(model, views={{pattern: view}})) or an 'adamw' group")
    else:
        view = MatrixView(BATCH)
    view.matrix_shapes(param.shape, what)
    return view
