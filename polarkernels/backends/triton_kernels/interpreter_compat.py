"""Make Triton ≤ 3.6's CPU interpreter run these kernels under NumPy ≥ 2.4.

The interpreter holds every scalar as a NumPy array of shape (1,) and turns a loop bound into a
Python int with ``int(array)``, which NumPy 2.4 refuses ("only 0-dimensional arrays can be
converted to Python scalars"), so every ``for k in range(0, tl.cdiv(K, BLOCK_K))`` failed there.
Triton fixed it upstream by squeezing the array first (triton-lang/triton#9171); :func:`apply`
makes the same one-line change to an older interpreter, only while it interprets a kernel (the
interpreter's own patch scope restores it), and only when the installed interpreter still has the
unsqueezed conversion. Compiled kernels are untouched.
"""

from __future__ import annotations

import inspect

_applied = False


def needed() -> bool:
    """True when the installed interpreter converts loop bounds with the unsqueezed ``int(...)``."""
    from triton.runtime import interpreter

    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None:
        return False
    try:
        source = inspect.getsource(patch)
    except (OSError, TypeError):
        return False
    return "int(self.handle.data))" in source


def apply() -> None:
    """Install the squeezed ``__index__`` into the interpreter's tensor patching (idempotent)."""
    global _applied
    if _applied or not needed():
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope) -> None:
        original(tensor, scope)
        # set after the original, restored before it: the scope undoes changes last-in first-out
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patch_lang_tensor
    _applied = True
