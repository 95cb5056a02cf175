"""Triton kernels for the three primitives of one polynomial step (see ``torch_ref``).

One module per kernel family, each layered ``_name_kernel`` (``@triton.jit``) → launcher (shape
checks, strides, grid, ``out=``):

- :mod:`.gram`   S = X Xᵀ, upper-triangle tiles only, mirrored stores
- :mod:`.poly`   B = b S + c S² on symmetric S, one triangle, mirrored stores
- :mod:`.apply`  X' = a X + B X, the axpy fused into the epilogue

:mod:`.tiles` holds the ``@triton.jit`` helpers they share (tile indexing, the dot, the mirrored
store); :mod:`.launch` the host-side ones (batched views, autotune configs, the interpreter switch).
Importing this package imports ``triton``; :mod:`polarkernels.backends.triton_ops` guards it.
"""
