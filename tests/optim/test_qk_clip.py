"""QK-Clip: exactly the heads over τ are rescaled, and their max logit becomes τ."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polarkernels.optim.qk_clip import max_attention_logits, qk_clip_

DIM, HEAD_DIM = 16, 4


def attention_logits(x, wq, wk, heads, kv_heads, bq=None, bk=None):
    """S_max per head of the projections wq, wk on tokens x (batch, seq, DIM), in float64."""
    q = nn.functional.linear(x, wq, bq).unflatten(-1, (heads, HEAD_DIM)).transpose(1, 2)
    k = nn.functional.linear(x, wk, bk).unflatten(-1, (kv_heads, HEAD_DIM)).transpose(1, 2)
    return max_attention_logits(q, k)


def reference_max_logits(q, k):
    """The definition, one head at a time: max over batch, i, j of q_i·k_j / √d."""
    out = []
    for h in range(q.shape[1]):
        kh = k[:, h * k.shape[1] // q.shape[1]]
        out.append(float((q[:, h] @ kh.mT).max()) / q.shape[-1] ** 0.5)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_max_attention_logits_matches_its_definition(heads, kv_heads):
    gen = torch.Generator().manual_seed(60)
    q = torch.randn(2, heads, 5, HEAD_DIM, generator=gen, dtype=torch.float64)
    k = torch.randn(2, kv_heads, 7, HEAD_DIM, generator=gen, dtype=torch.float64)
    # float64 length-4 dot products, summed in another order than the reference's: ~1e-16.
    torch.testing.assert_close(max_attention_logits(q, k), reference_max_logits(q, k), rtol=1e-13, atol=0)


def problem(kv_heads, seed):
    gen = torch.Generator().manual_seed(seed)
    heads = DIM // HEAD_DIM
    x = torch.randn(3, 9, DIM, generator=gen, dtype=torch.float64)
    # Heads 1 and 3 get large weights, so their logits are far above the others'.
    gain = torch.tensor([0.3, 3.0, 0.3, 2.0]).repeat_interleave(HEAD_DIM)[:, None].double()
    wq = torch.randn(heads * HEAD_DIM, DIM, generator=gen, dtype=torch.float64) * gain
    wk = torch.randn(kv_heads * HEAD_DIM, DIM, generator=gen, dtype=torch.float64)
    wk = wk * gain[: kv_heads * HEAD_DIM] if kv_heads == heads else wk
    return x, wq, wk


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_clips_exactly_the_offending_heads(kv_heads):
    heads = DIM // HEAD_DIM
    x, wq, wk = problem(kv_heads, seed=61)
    before = attention_logits(x, wq, wk, heads, kv_heads)
    tau = float(before.sort().values[1:3].mean())         # between the 2nd and 3rd largest
    over = before > tau
    assert over.sum() == 2
    q, k = wq.clone(), wk.clone()
    gamma = qk_clip_(q, k, before, tau, head_dim=HEAD_DIM)
    after = attention_logits(x, q, k, heads, kv_heads)
    # float64 throughout: the rescaled logit is τ up to a few rounding errors of the products.
    torch.testing.assert_close(after[over], torch.full_like(after[over], tau), rtol=1e-13, atol=0)
    assert torch.equal(gamma[over], tau / before[over])
    assert torch.equal(gamma[~over], torch.ones_like(gamma[~over]))
    rows = over.repeat_interleave(HEAD_DIM)
    assert torch.equal(q[~rows], wq[~rows])                # the other heads are not written
    assert torch.equal(after[~over], before[~over])
    if kv_heads == heads:
        assert torch.equal(k[~rows], wk[~rows])
        # MHA: √γ on each side (one float64 product per entry: ratios agree to ~1 ulp).
        torch.testing.assert_close(q[rows] / wq[rows], k[rows] / wk[rows], rtol=1e-15, atol=0)
    else:
        assert torch.equal(k, wk)                          # shared key heads are never touched


def test_fused_qkv_rows_and_biases_are_clipped_in_place():
    heads = DIM // HEAD_DIM
    x, wq, wk = problem(heads, seed=62)
    qkv = nn.Linear(DIM, 3 * DIM).double()
    with torch.no_grad():
        qkv.weight[:DIM], qkv.weight[DIM:2 * DIM] = wq, wk
        qkv.bias.mul_(5)
    v_weight, v_bias = qkv.weight[2 * DIM:].clone(), qkv.bias[2 * DIM:].clone()
    w, b = qkv.weight, qkv.bias
    with torch.no_grad():
        before = attention_logits(x, w[:DIM], w[DIM:2 * DIM], heads, heads, b[:DIM], b[DIM:2 * DIM])
    tau = float(before.max()) / 2
    qk_clip_([w[:DIM], b[:DIM]], [w[DIM:2 * DIM], b[DIM:2 * DIM]], before, tau, head_dim=HEAD_DIM)
    with torch.no_grad():
        after = attention_logits(x, w[:DIM], w[DIM:2 * DIM], heads, heads, b[:DIM], b[DIM:2 * DIM])
    over = before > tau
    # As above: float64 throughout.
    torch.testing.assert_close(after[over], torch.full_like(after[over], tau), rtol=1e-13, atol=0)
    assert torch.equal(after[~over], before[~over])
    assert torch.equal(qkv.weight[2 * DIM:], v_weight) and torch.equal(qkv.bias[2 * DIM:], v_bias)


@pytest.mark.parametrize("kwargs, message", [
    (dict(tau=0.0), r"tau must be a positive number, got 0.0"),
    (dict(head_dim=5), r"does not have 4 heads × head_dim 5 = 20 rows"),
    (dict(key=torch.zeros(12, DIM)), r"4 query heads cannot share 3 key heads"),
])
def test_bad_input_is_named(kwargs, message):
    args = dict(query=torch.zeros(DIM, DIM), key=torch.zeros(DIM, DIM), max_logits=torch.ones(4), tau=1.0,
                head_dim=HEAD_DIM)
    with pytest.raises(ValueError, match=message):
        qk_clip_(**{**args, **kwargs})
