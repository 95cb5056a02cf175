r"""QK-Clip (Kimi Team, "Kimi K2: Open Agentic Intelligence", arXiv 2507.20534, §2.1; MuonClip).

Muon lets attention logits grow without bound in large runs. After each optimizer step, every
head h whose largest logit over the batch exceeds a threshold τ has its query and key
projections shrunk so that the same inputs would give the logit τ:

.. math::
   S^h_{\max} = \frac{1}{\sqrt d} \max_{X \in B} \max_{i, j} q^h_i \cdot k^h_j, \qquad
   \gamma_h = \min\bigl(1, \tau / S^h_{\max}\bigr), \qquad
   W^h_q \leftarrow \sqrt{\gamma_h}\, W^h_q, \quad W^h_k \leftarrow \sqrt{\gamma_h}\, W^h_k

Heads at or under τ are not touched (per-head clipping: the paper's fix for clipping every head
of a layer when one misbehaves). The model reports :math:`S^h_{\max}` (it has Q and K in the
forward pass; :func:`max_attention_logits` computes it from them); the clip itself needs no
gradients and runs outside autograd.

A key head shared by several query heads (grouped-query attention) cannot be shrunk for one of
them alone; as the paper does for MLA's shared rotary key, such keys are left untouched and the
query head takes the whole factor, :math:`W^h_q \leftarrow \gamma_h W^h_q` (the logit still
scales by exactly γ_h).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: Kimi K2's threshold.
KIMI_K2_TAU = 100.0


def max_attention_logits(q: Tensor, k: Tensor, scale: float | None = None) -> Tensor:
    """S_max per query head: max over batch, queries and keys of scale · q·k.

    Args:
        q: queries ``(batch, heads, q_len, head_dim)``.
        k: keys ``(batch, kv_heads, k_len, head_dim)``; ``heads`` must be a multiple of ``kv_heads``
            (query head h reads key head h // (heads / kv_heads)).
        scale: the logit scale; default 1/√head_dim.

    Returns:
        ``(heads,)`` tensor in float32 (float64 for float64 q), without masking: pass only the keys a query may see, or
        compute S_max in the model where the mask is known.
    """
    if q.ndim != 4 or k.ndim != 4 or q.shape[-1] != k.shape[-1] or q.shape[1] % k.shape[1]:
        raise ValueError(f"expected q (batch, heads, q_len, d) and k (batch, kv_heads, k_len, d) with kv_heads "
                         f"dividing heads, got {tuple(q.shape)} and {tuple(k.shape)}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    wide = torch.promote_types(q.dtype, torch.float32)
    logits = torch.einsum("bhid,bhjd->bhij", q.to(wide), k.to(wide)) * scale
    return logits.amax(dim=(0, 2, 3))


@torch.no_grad()
def qk_clip_(query: Tensor | Sequence[Tensor], key: Tensor | Sequence[Tensor], max_logits: Tensor,
             tau: float = KIMI_K2_TAU, *, head_dim: int) -> Tensor:
    """Rescale, in place, the query and key projections of the heads whose logit exceeds ``tau``.

    Args:
        query: the query projection's weight, or its weight and bias, as tensors whose dim 0 is
            ``heads × head_dim`` rows, head-major (``nn.Linear`` layout). For a fused QKV weight
            pass its rows, e.g. ``qkv.weight[:d]``: a slice is a view, so the clip lands in it.
        key: the same for the key projection (``kv_heads × head_dim`` rows).
        max_logits: ``(heads,)`` S_max per query head, as :func:`max_attention_logits` gives.
        tau: the threshold τ > 0.
        head_dim: d, rows per head.

    Returns:
        γ per query head (1 where nothing was done), in float32 (float64 for float64 ``max_logits``).
    """
    queries = [query] if isinstance(query, Tensor) else list(query)
    keys = [key] if isinstance(key, Tensor) else list(key)
    if not (isinstance(tau, float | int) and not isinstance(tau, bool) and tau > 0):
        raise ValueError(f"tau must be a positive number, got {tau!r}")
    if not (isinstance(head_dim, int) and head_dim > 0):
        raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
    heads = max_logits.shape[0] if max_logits.ndim == 1 else -1
    kv_heads = keys[0].shape[0] // head_dim if keys else 0
    for name, ts, n in (("query", queries, heads), ("key", keys, kv_heads)):
        for t in ts:
            if t.shape[0] != n * head_dim:
                raise ValueError(f"{name} tensor of shape {tuple(t.shape)} does not have {n} heads × head_dim "
                                 f"{head_dim} = {n * head_dim} rows (max_logits has shape {tuple(max_logits.shape)})")
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot share {kv_heads} key heads")
    s_max = max_logits.to(torch.promote_types(max_logits.dtype, torch.float32))
    gamma = (tau / s_max).clamp(max=1.0)                               # γ_h = min(1, τ / S_max^h)
    clipped = s_max > tau
    shared = heads != kv_heads
    q_factor = torch.where(clipped, gamma if shared else gamma.sqrt(), torch.ones_like(gamma))
    for t in queries:
        _scale_heads_(t, q_factor, clipped, head_dim)
    if not shared:
        for t in keys:
            _scale_heads_(t, q_factor, clipped, head_dim)
    return torch.where(clipped, gamma, torch.ones_like(gamma))


def _scale_heads_(t: Tensor, factor: Tensor, clipped: Tensor, head_dim: int) -> None:
    """Multiply the rows of the clipped heads of ``t`` by their factor; other rows are not written."""
    rows = t.view(factor.shape[0], head_dim, *t.shape[1:])           # (heads, head_dim, ...)
    idx = clipped.nonzero().flatten().to(t.device)
    wide = torch.promote_types(t.dtype, factor.dtype)                 # half precision scales in float32
    f = factor.to(t.device, wide)[idx].reshape(-1, *([1] * (rows.ndim - 1)))
    rows[idx] = (rows[idx].to(wide) * f).to(t.dtype)
