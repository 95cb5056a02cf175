"""Matrix views: round trips, defaults by module type, errors, and per-block orthogonal updates."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from polarkernels.optim import Muon, PolarGrad, split_params
from polarkernels.optim.views import MatrixView, view_for

EXACT = dict(method="svd", dtype=torch.float64)   # exact polar factor: singular values exactly 1

QKV = MatrixView(blocks=("q", "k", "v"))
GQA = MatrixView(blocks=("q", "k", "v"), sizes=(8, 4, 4), head_dim=2)
CASES = [
    ((6, 9), MatrixView(), [(6, 9)]),
    ((4, 2, 3, 3), MatrixView(), [(4, 18)]),
    ((3, 5, 7), MatrixView("batch"), [(5, 7)] * 3),
    ((2, 3, 4, 5), MatrixView("batch"), [(4, 5)] * 6),
    ((12, 5), QKV, [(4, 5)] * 3),
    ((16, 6), GQA, [(2, 6)] * 8),
    ((2, 16, 6), MatrixView("batch", ("q", "k", "v"), (8, 4, 4)), [(8, 6), (4, 6), (4, 6)] * 2),
    ((6, 12), MatrixView(axis=1, head_dim=4), [(6, 4)] * 3),
]


@pytest.mark.parametrize("shape, view, mats", CASES, ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(CASES)])
def test_round_trip_is_exact(shape, view, mats):
    t = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    pieces = view.to_matrices(t)
    assert [tuple(m.shape) for m in pieces] == view.matrix_shapes(shape) == mats
    assert torch.equal(view.from_matrices(pieces, shape), t)
    assert all(m._is_view() for m in pieces)      # views of t: no copy on the way in


def test_blocks_cut_rows_in_order():
    t = torch.arange(16 * 3.0).reshape(16, 3)
    q, k, v = MatrixView(blocks=("q", "k", "v"), sizes=(8, 4, 4)).to_matrices(t)
    assert torch.equal(q, t[:8]) and torch.equal(k, t[8:12]) and torch.equal(v, t[12:])
    heads = GQA.to_matrices(t)
    assert torch.equal(heads[4], t[8:10]) and torch.equal(heads[7], t[14:16])


@pytest.mark.parametrize("make, message", [
    (lambda: QKV.matrix_shapes((10, 4)), r"\(10, 4\) \(rows: 10\) does not split into 3 equal blocks"),
    (lambda: GQA.matrix_shapes((17, 4)), r"block sizes \{'q': 8, 'k': 4, 'v': 4\} sum to 16, not 17"),
    (lambda: MatrixView(head_dim=3).matrix_shapes((8, 4)), r"head_dim 3 does not divide the block lengths \[8\]"),
    (lambda: MatrixView().matrix_shapes((5,)), r"shape \(5,\) has no matrix view"),
    (lambda: MatrixView("rows"), r"layout must be one of \('flatten', 'batch'\), got 'rows'"),
    (lambda: MatrixView(blocks=("q", "k"), sizes=(3,)), r"sizes must be 2 positive ints"),
    (lambda: MatrixView(axis=2), r"axis must be 0 \(rows\) or 1 \(columns\), got 2"),
    (lambda: MatrixView.from_spec({"heads": 4}), r"unknown view field\(s\) \['heads'\]"),
])
def test_bad_views_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


class Experts(nn.Module):
    """A mixture-of-experts FFN's weights as two (E, out, in) stacks."""

    def __init__(self, experts=4, dim=8, hidden=16):
        super().__init__()
        self.w_in = nn.Parameter(torch.randn(experts, hidden, dim) / dim**0.5)
        self.w_out = nn.Parameter(torch.randn(experts, dim, hidden) / hidden**0.5)


def test_defaults_by_module_type():
    assert view_for(torch.zeros(4, 5)) == MatrixView()
    assert view_for(nn.Conv1d(3, 4, 5).weight, module=nn.Conv1d(3, 4, 5)) == MatrixView()   # (4, 3, 5) → (4, 15)
    assert view_for(nn.Conv2d(3, 4, 3).weight, module=nn.Conv2d(3, 4, 3)) == MatrixView()
    experts = Experts()
    assert view_for(experts.w_in, module=experts) == MatrixView("batch")
    assert view_for(experts.w_in) == MatrixView()   # no module known: flattened, as documented
    bilinear = nn.Bilinear(3, 4, 5)
    with pytest.raises(ValueError, match=r"'b.weight' of shape \(5, 3, 4\) belongs to Bilinear"):
        view_for(bilinear.weight, "b.weight", bilinear)


class Attention(nn.Module):
    def __init__(self, dim=12, head_dim=4):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.conv = nn.Conv1d(dim, dim, 3)
        self.moe = Experts(dim=dim)


def test_split_params_groups_by_view():
    model = Attention()
    qkv = MatrixView(blocks=("q", "k", "v"), head_dim=4)
    groups = split_params(model, views={"qkv.weight": qkv})
    by_view = {(g["algorithm"], str(g.get("view"))): sorted(n for n, p in model.named_parameters()
                                                              if any(p is q for q in g["params"]))
               for g in groups}
    assert by_view == {("polar", "None"): ["conv.weight", "proj.weight"],
                       ("polar", str(qkv.spec())): ["qkv.weight"],
                       ("polar", str(MatrixView("batch").spec())): ["moe.w_in", "moe.w_out"],
                       ("adamw", "None"): ["conv.bias"]}
    assert [g["algorithm"] for g in groups] == ["polar", "polar", "polar", "adamw"]
    with pytest.raises(ValueError, match=r"view pattern\(s\) \['nope'\] match no polar parameter"):
        split_params(model, views={"nope": qkv})
    with pytest.raises(ValueError, match=r"'qkv.weight' of shape \(36, 12\) \(rows: 36\): head_dim 5"):
        split_params(model, views={"qkv.weight": MatrixView(head_dim=5)})


def singular_value_spread(update: torch.Tensor) -> float:
    """max σ / min σ − 1 of one matrix: 0 for a multiple of a semi-orthogonal matrix."""
    s = torch.linalg.svdvals(update)
    return float(s.max() / s.min() - 1)


@pytest.mark.parametrize("opt_cls", [PolarGrad, Muon])
def test_every_expert_update_is_orthogonal(opt_cls):
    """Issue 13: flattened, a (4, 16, 32) stack gave per-expert σ ratios 0.22–0.25."""
    model = Experts(experts=4, dim=32, hidden=16).double()
    opt = opt_cls(split_params(model), lr=0.1, weight_decay=0.0, **EXACT)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    for p, w in zip(model.parameters(), before):
        for e, update in enumerate(p.detach() - w):
            # float64 SVD polar factor scaled by one ν: σ equal to ~1e-15, minus the rounding of
            # W₁ − W₀ with |W| ≈ 0.2 and |ΔW| ≈ 0.1: ~1e-15 relative; 1e-12 leaves room.
            assert singular_value_spread(update) < 1e-12, f"expert {e} of {tuple(p.shape)}"


@pytest.mark.parametrize("opt_cls", [PolarGrad, Muon])
def test_every_qkv_head_update_is_orthogonal(opt_cls):
    model = Attention(dim=12, head_dim=4).double()
    view = MatrixView(blocks=("q", "k", "v"), head_dim=4)
    opt = opt_cls(split_params(model, views={"qkv.weight": view}), lr=0.1, weight_decay=0.0, **EXACT)
    w0 = model.qkv.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    heads = view.to_matrices(model.qkv.weight.detach() - w0)
    assert len(heads) == 9
    for h, update in enumerate(heads):
        # As above: one float64 SVD polar factor per (4, 12) head.
        assert singular_value_spread(update) < 1e-12, f"head {h}"
    # The whole (36, 12) update is not orthogonal: splitting changed the step.
    assert singular_value_spread(model.qkv.weight.detach() - w0) > 0.1


def test_conv_module_weight_is_stepped_as_its_flattened_matrix():
    """Conv kernels keep today's view: (out, in, k) steps as the (out, in·k) matrix."""
    conv = nn.Conv1d(3, 6, 5, bias=False).double()
    flat = nn.Parameter(conv.weight.detach().reshape(6, 15).clone())
    g = torch.randn(6, 3, 5, dtype=torch.float64)
    a = PolarGrad(split_params(conv), lr=0.05, **EXACT)
    b = PolarGrad([flat], lr=0.05, **EXACT)
    conv.weight.grad, flat.grad = g, g.reshape(6, 15)
    a.step()
    b.step()
    assert torch.equal(conv.weight.detach().reshape(6, 15), flat.detach())


def test_view_group_checkpoint_loads_weights_only():
    model = Attention()
    opt = Muon(split_params(model, views={"qkv.weight": MatrixView(blocks=("q", "k", "v"))}), lr=0.02,
               adamw_lr=3e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer)                          # weights_only=True: views are plain data
    again = Muon(split_params(model, views={"qkv.weight": MatrixView(blocks=("q", "k", "v"))}), lr=0.02,
                 adamw_lr=3e-4)
    again.load_state_dict(state)
    assert [g.get("view") for g in again.param_groups] == [g.get("view") for g in opt.param_groups]


def test_a_group_carries_its_view():
    """A hand-written group takes a MatrixView (stored as plain data); a view that does not fit raises."""
    stack = nn.Parameter(torch.randn(3, 4, 6, dtype=torch.float64))
    opt = PolarGrad([{"params": [stack], "algorithm": "polar", "view": MatrixView("batch")}], lr=0.1, **EXACT)
    assert opt.param_groups[0]["view"] == MatrixView("batch").spec()
    w0 = stack.detach().clone()
    stack.grad = torch.randn_like(stack)
    opt.step()
    for update in stack.detach() - w0:
        # As in test_every_expert_update_is_orthogonal: one float64 SVD polar factor per expert.
        assert singular_value_spread(update) < 1e-12
    with pytest.raises(ValueError, match=r"\(3, 4, 6\) \(rows: 4\) does not split into 3 equal blocks"):
        PolarGrad([{"params": [stack], "algorithm": "polar", "view": MatrixView("batch", ("q", "k", "v"))}])
    with pytest.raises(TypeError, match="a view is a MatrixView, its spec\\(\\) dict or None, got str"):
        PolarGrad([{"params": [stack], "algorithm": "polar", "view": "batch"}])


@pytest.mark.parametrize("polar_first", [False, True], ids=["momentum_first", "polar_first"])
@pytest.mark.parametrize("view, pieces", [
    (MatrixView("batch"), lambda t: list(t.unbind(0))),
    (MatrixView(blocks=("q", "k", "v"), sizes=(4, 2, 2)), lambda t: [t[0, :4], t[0, 4:6], t[0, 6:]]),
], ids=["experts", "gqa_blocks"])
def test_view_steps_exactly_as_separate_parameters(view, pieces, polar_first):
    """Each matrix of a view takes the step it would take as a parameter of its own (its own ν,
    its own momentum), bit for bit: same matrices, same batched calls."""
    gen = torch.Generator().manual_seed(5)
    shape = (3, 8, 5) if view.layout == "batch" else (1, 8, 5)
    w0 = torch.randn(shape, generator=gen, dtype=torch.float64)
    grads = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3)]
    whole = nn.Parameter(w0.clone() if view.layout == "batch" else w0[0].clone())
    parts = [nn.Parameter(p.clone()) for p in pieces(w0)]
    hp = dict(lr=0.1, weight_decay=0.1, momentum=0.9, nesterov=True, polar_first=polar_first, **EXACT)
    a = PolarGrad([{"params": [whole], "algorithm": "polar", "view": view}], **hp)
    b = PolarGrad(parts, **hp)
    for g in grads:
        whole.grad = g if view.layout == "batch" else g[0]
        for p, gp in zip(parts, pieces(g)):
            p.grad = gp.clone()
        a.step()
        b.step()
    got = view.to_matrices(whole.detach())
    assert all(torch.equal(x, p.detach()) for x, p in zip(got, parts))
