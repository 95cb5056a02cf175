"""Test inputs with known spectra, and an error report that names what it measured."""

from __future__ import annotations

import numpy as np
import torch


def with_singular_values(m: int, n: int, sigma: np.ndarray, *, rng: np.random.Generator,
                         batch: tuple[int, ...] = (), complex: bool = False) -> np.ndarray:
    """Random float64 (or complex128) matrices P diag(σ) Qᴴ with Haar-random P (m×k), Q (n×k),
    k = min(m, n)."""
    k = min(m, n)
    sigma = np.asarray(sigma, dtype=np.float64)
    assert sigma.shape == (k,), (sigma.shape, k)
    out = np.empty((*batch, m, n), dtype=np.complex128 if complex else np.float64)
    for idx in np.ndindex(*batch):
        p, _ = np.linalg.qr(_gaussian(rng, (m, k), complex))
        q, _ = np.linalg.qr(_gaussian(rng, (n, k), complex))
        out[idx] = (p * sigma) @ q.conj().T
    return out


def _gaussian(rng: np.random.Generator, shape: tuple[int, int], complex: bool) -> np.ndarray:
    g = rng.standard_normal(shape)
    return g + 1j * rng.standard_normal(shape) if complex else g


def geometric_spectrum(k: int, cond: float) -> np.ndarray:
    """k singular values from 1 down to 1/cond, geometrically spaced (1 when k = 1)."""
    if k == 1:
        return np.ones(1)
    return np.geomspace(1.0, 1.0 / cond, k)


def conditioned(m: int, n: int, cond: float, *, seed: int, batch: tuple[int, ...] = (),
                complex: bool = False) -> np.ndarray:
    """Random float64 (complex128) m×n matrices with condition number ``cond`` (geometric spectrum)."""
    rng = np.random.default_rng(seed)
    return with_singular_values(m, n, geometric_spectrum(min(m, n), cond), rng=rng, batch=batch,
                                complex=complex)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """float64, or complex128 for complex tensors."""
    return t.to(torch.complex128) if t.is_complex() else t.double()


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖_F / ‖expected‖_F in float64 (max over a batch)."""
    a, e = _wide(actual), _wide(expected)
    num = torch.linalg.matrix_norm(a - e)
    den = torch.linalg.matrix_norm(e).clamp_min(torch.finfo(torch.float64).tiny)
    return float((num / den).max())


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, what: str = "") -> None:
    """Assert relative Frobenius error ≤ rtol; the message reports max-abs and relative errors."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = _wide(actual), _wide(expected)
    assert torch.isfinite(a).all(), f"{what}: non-finite values in result"
    err = rel_err(a, e)
    max_abs = float((a - e).abs().max()) if a.numel() else 0.0
    assert err <= rtol, f"{what}: relative Frobenius error {err:.3e} > rtol {rtol:.1e} (max abs {max_abs:.3e})"
