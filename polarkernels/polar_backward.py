"""The derivative of the polar decomposition: one analytic rule for every method.

``polar()`` computes its factors without recording the iterations (under ``torch.no_grad()``)
and hands them to :func:`attach`, whose :class:`PolarFunction` gives U and H the derivative of
the exact factors. The rule depends only on the converged (U, H), so every method (SVD, QDWH,
the polynomial iterations) gets the same gradient, memory does not grow with the step count,
and a backward costs one k×k Hermitian eigendecomposition (k = min(m, n); none when the SVD
route hands over its singular vectors, see :func:`attach`), three m×k by k×k products and
eight k×k ones.

Derivation (tall or square A, m ≥ k = n; A = U H, UᴴU = I, H = (AᴴA)^½ Hermitian PSD).
Differentiating A = U H and UᴴU = I:

    dA = dU H + U dH,      Ω := Uᴴ dU = −Ωᴴ (skew-Hermitian),      K := Uᴴ dA = Ω H + dH.

K − Kᴴ = ΩH + HΩ, a Sylvester (Lyapunov) equation for Ω [N. J. Higham, Functions of Matrices
(SIAM 2008), ch. 8, §8.2 on the sensitivity of the polar factors; C. Kenney and A. J. Laub,
"Polar decomposition and matrix sign function condition estimates", SIAM J. Sci. Stat. Comput.
12(3), 1991]. With H = V Σ Vᴴ and X̃ := Vᴴ X V:

    Ω̃ᵢⱼ = (K̃ − K̃ᴴ)ᵢⱼ / (σᵢ + σⱼ)                                                      (1)
    dH  = V [ herm(K̃) + ½ (σᵢ − σⱼ) Ω̃ᵢⱼ ] Vᴴ         (dH = K − ΩH, written Hermitian)   (2)
    dU  = U Ω + (I − UUᴴ) dA H⁻¹                    ((I − UUᴴ) dA = (I − UUᴴ) dU H)      (3)

(1) divides by σᵢ + σⱼ, not by σᵢ² − σⱼ² as the SVD's derivative does, so it is finite and
exact at repeated singular values, where the polar factors are smooth. The pullback (VJP) is
the adjoint of (1)–(3) in the real inner product ⟨X, Y⟩ = Re tr(XᴴY): with gH ← herm(gH),

    C̃ᵢⱼ = [ (UᴴgU − gUᴴU)~ᵢⱼ + (σᵢ − σⱼ) g̃Hᵢⱼ ] / (σᵢ + σⱼ) + g̃Hᵢⱼ                     (4)
    gA  = U V C̃ Vᴴ + (I − UUᴴ) gU H⁻¹

the same as MatrixAlgebraKit.jl's ``left_polar_pullback!`` (src/pullbacks/polar.jl:
C = sylvester(P, P, Mᴴ − M) + ΔP with M = WᴴΔW − ΔP P). For complex A this is torch's
convention for complex gradients ("Autograd for Complex Numbers": the gradient of a real loss L
is ∂L/∂Re z + i ∂L/∂Im z, propagated by the Re⟨·,·⟩-adjoint of each linear map), the one
``torch.linalg.svd``'s backward follows. The backward is written in torch operations on the
saved input and outputs, so it is itself differentiable (second order through
``torch.linalg.eigh``'s derivative: exact on distinct singular values, NaN where eigh's is).

Other shapes and sides reduce to (1)–(4):
- wide A (m < n): Aᴴ = Uᴴ Hₗ is the tall case with factor Uᴴ and Hₗ = (AAᴴ)^½ (m×m);
- the other side's factor is Uc Hc Ucᴴ for the tall orientation Ac = Uc Hc (side="left" on a
  tall A: H' = U H Uᴴ; side="right" on a wide A: H = Uᴴ Hₗ U), by the product rule.

Singular H (rank-deficient A). The factor is not differentiable at such A in every direction,
and U is not unique for the SVD. Singular values σ ≤ tol := max(m, n) · ε · σ_max (the rank
tolerance of ``numpy.linalg.matrix_rank``) are treated as exactly zero: pairs with σᵢ = σⱼ = 0
get weight 0 in (1) and (4), and H⁻¹ is the pseudo-inverse H⁺. The result is the derivative of
the returned factor along perturbations that keep A's rank, with the undetermined part (rotations
within the null spaces, and for complex A the phase of each null direction) set to zero: for the
partial isometry the polynomial methods return (zero singular values stay zero) it is that
factor's derivative; for the orthonormal U of the SVD and of QDWH (which lifts rounding-level
singular values to 1) it is the derivative with the null-space completion held fixed.
Gradients are finite for every input.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import forward_ad

SIDES = ("right", "left")


def needs_derivative(a: Tensor) -> bool:
    """Whether ``a`` carries a derivative that :func:`attach` should propagate: it requires grad
    with grad mode on (reverse mode, ``torch.func.grad``) or carries a forward-mode tangent."""
    if torch.is_grad_enabled() and a.requires_grad:
        return True
    return forward_ad.unpack_dual(a).tangent is not None


def attach(a: Tensor, u: Tensor, h: Tensor, side: str = "right",
           spectrum: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """(u, h) unchanged in value, as functions of ``a`` with the analytic polar derivative.

    Args:
        a: ``(..., m, n)`` real or complex, the matrix the factors were computed from.
        u: ``(..., m, n)``, its polar factor, computed without autograd.
        h: its Hermitian factor, ``(..., n, n)`` (side="right", a = u h) or ``(..., m, m)``
            (side="left", a = h u), computed without autograd.
        side: "right" or "left".
        spectrum: optionally (V, σ) with (A A^H)^½ = V diag(σ) V^H for wide A, (A^H A)^½ for
            tall or square A (k = min(m, n): the right singular vectors of the tall orientation,
            as an SVD gives them, in any order). A first-order backward then skips its
            eigendecomposition; second derivatives and forward mode still compute their own.
    """
    if side not in SIDES:
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    m, n = a.shape[-2:]
    k = n if side == "right" else m
    if u.shape != a.shape or h.shape != (*a.shape[:-2], k, k):
        raise ValueError(f"factors of shapes {tuple(u.shape)}, {tuple(h.shape)} do not belong to a "
                         f"{tuple(a.shape)} input with side={side!r}")
    if u.dtype != a.dtype or h.dtype != a.dtype:
        raise TypeError(f"a, u and h must share one dtype, got {a.dtype}, {u.dtype}, {h.dtype}")
    if spectrum is not None:
        v, sigma = spectrum
        kc = min(m, n)
        if v.shape != (*a.shape[:-2], kc, kc) or sigma.shape != (*a.shape[:-2], kc):
            raise ValueError(f"spectrum of shapes {tuple(v.shape)}, {tuple(sigma.shape)} does not belong to a "
                             f"{tuple(a.shape)} input (expected V k×k and σ of length k = {kc})")
        spectrum = (v.detach(), sigma.detach().to(a.real.dtype))
    return PolarFunction.apply(a, u, h, side, spectrum)


class PolarFunction(torch.autograd.Function):
    """``(a, u, h, side) ↦ (u, h)``: the identity on the precomputed factors, with the
    derivative (1)–(4) of the module docstring in both modes. Prefer :func:`attach`."""

    generate_vmap_rule = True

    @staticmethod
    def forward(a: Tensor, u: Tensor, h: Tensor, side: str,
                spectrum: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        return u.detach(), h.detach()  # new tensors sharing memory: no copy, no autograd view

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        a, _, _, side, spectrum = inputs
        ctx.side = side
        ctx.save_for_backward(a, *output, *(spectrum or ()))
        ctx.save_for_forward(a, *output)

    @staticmethod
    def backward(ctx, grad_u: Tensor, grad_h: Tensor) -> tuple[Tensor, None, None, None, None]:
        a, u, h, *spectrum = ctx.saved_tensors
        # The given (V, σ) carry no derivative: a backward that is itself differentiated
        # (create_graph, grad mode on here) takes eigh's instead.
        given = tuple(spectrum) if spectrum and not torch.is_grad_enabled() else None
        return _vjp(a, u, h, grad_u, grad_h, ctx.side, given), None, None, None, None

    @staticmethod
    def jvp(ctx, da: Tensor, du_in: Tensor | None, dh_in: Tensor | None, _side, _spectrum) -> tuple[Tensor, Tensor]:
        a, u, h = ctx.saved_tensors
        return _jvp(a, u, h, da, ctx.side)


# --- orientation: reduce every shape and side to the tall right-side core ------------------------

def _herm(x: Tensor) -> Tensor:
    return (x + x.mH) / 2


def _core(a: Tensor, u: Tensor, h: Tensor, side: str) -> tuple[bool, bool, Tensor, Tensor, Tensor]:
    """(wide, core_h, ac, uc, hc): the tall orientation ac = uc hc (ac = aᴴ when wide), and
    whether the returned h is hc itself (else it is uc hc ucᴴ, the other side's factor)."""
    wide = a.shape[-2] < a.shape[-1]
    ac, uc = (a.mH, u.mH) if wide else (a, u)
    core_h = (side == "right") != wide
    hc = h if core_h else _herm(uc.mH @ ac)
    return wide, core_h, ac, uc, hc


def _spectrum(hc: Tensor, m: int, given: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """V of H = V diag(σ) Vᴴ (``given`` as (V, σ), else from eigh) and, with σ ≤ tol set to 0,
    the weights 1/(σᵢ + σⱼ) (0 where σᵢ = σⱼ = 0), the differences σᵢ − σⱼ and the
    pseudo-inverse's diagonal 1/σ (0 where σ = 0)."""
    if given is None:
        sigma, v = torch.linalg.eigh(hc)
    else:
        v, sigma = given
    k = hc.shape[-1]
    tol = max(m, k) * torch.finfo(sigma.dtype).eps * sigma.amax(dim=-1, keepdim=True).clamp_min(0)
    sigma = torch.where(sigma > tol, sigma, torch.zeros_like(sigma))
    pair_sum = sigma[..., :, None] + sigma[..., None, :]
    positive = pair_sum > 0
    # the safe denominators keep the masked branch finite, so second derivatives stay finite too
    weight = torch.where(positive, 1 / torch.where(positive, pair_sum, torch.ones_like(pair_sum)),
                         torch.zeros_like(pair_sum))
    diff = sigma[..., :, None] - sigma[..., None, :]
    nonzero = sigma > 0
    inv = torch.where(nonzero, 1 / torch.where(nonzero, sigma, torch.ones_like(sigma)), torch.zeros_like(sigma))
    return v, weight, diff, inv


def _pinv(v: Tensor, inv: Tensor) -> Tensor:
    """H⁺ = V diag(1/σ) Vᴴ."""
    return (v * inv[..., None, :]) @ v.mH


def _vjp(a: Tensor, u: Tensor, h: Tensor, gu: Tensor, gh: Tensor, side: str,
         given: tuple[Tensor, Tensor] | None = None) -> Tensor:
    wide, core_h, ac, uc, hc = _core(a, u, h, side)
    guc = gu.mH if wide else gu
    if core_h:
        ghc = gh
    else:  # h = uc hc ucᴴ:  guc += (gh + ghᴴ) uc hc,  ghc = ucᴴ gh uc
        gh_uc = gh @ uc
        guc = guc + (gh_uc + gh.mH @ uc) @ hc
        ghc = uc.mH @ gh_uc
    v, weight, diff, inv = _spectrum(hc, ac.shape[-2], given)
    ug = uc.mH @ guc                                                   # UᴴgU
    skew = v.mH @ (ug - ug.mH) @ v                                     # (UᴴgU − gUᴴU)~
    gh_t = v.mH @ _herm(ghc) @ v                                       # g̃H
    c = (skew + diff * gh_t) * weight + gh_t                           # (4)
    pinv = _pinv(v, inv)
    gac = uc @ (v @ c @ v.mH - ug @ pinv) + guc @ pinv                # U C + (I − UUᴴ) gU H⁺
    return gac.mH if wide else gac


def _jvp(a: Tensor, u: Tensor, h: Tensor, da: Tensor, side: str) -> tuple[Tensor, Tensor]:
    wide, core_h, ac, uc, hc = _core(a, u, h, side)
    dac = da.mH if wide else da
    v, weight, diff, inv = _spectrum(hc, ac.shape[-2])
    k_full = uc.mH @ dac                                               # K = Uᴴ dA
    k_t = v.mH @ k_full @ v
    omega_t = (k_t - k_t.mH) * weight                                  # (1)
    dhc = v @ (_herm(k_t) + diff * omega_t / 2) @ v.mH                 # (2)
    pinv = _pinv(v, inv)
    duc = uc @ (v @ omega_t @ v.mH - k_full @ pinv) + dac @ pinv       # (3)
    if core_h:
        dh = dhc
    else:  # d(uc hc ucᴴ) = T + Tᴴ + uc dhc ucᴴ,  T = duc hc ucᴴ
        t = duc @ (hc @ uc.mH)
        dh = t + t.mH + uc @ dhc @ uc.mH
    return (duc.mH if wide else duc), dh
