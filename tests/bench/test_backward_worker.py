"""bench.backward's worker on a tiny input: every route runs, agrees with the reference
gradient, and the saved-tensor accounting tells the analytic rule from autograd through the
iterations. Timings are recorded, never asserted."""

from __future__ import annotations

from bench import backward


def test_worker_runs_every_route_and_accounts_saved_tensors():
    rows = backward._worker([9, 6], "float64", rounds=1, budget_s=0)
    assert [(r["route"], r["method"]) for r in rows] == list(backward.ROUTES)
    factors_bytes = (9 * 6 * 2 + 6 * 6) * 8  # A, U (9×6) and H (6×6) in float64
    loss_bytes = (9 * 6 + 6 * 6) * 8        # G_U and G_H, saved by the loss's products
    spectrum_bytes = (6 * 6 + 6) * 8        # method="svd" also keeps the SVD's V and σ (no eigh in backward)
    for r in rows:
        assert r["finite"] and r["runs"] == 1 and r["median_s"] > 0
        # every route is exact to float64 rounding on a Gaussian 9×6 (κ ≈ 5): ≲ 2e-14 measured
        assert r["rel_err"] < 1e-12, r
        if r["route"] == "analytic":
            spectrum = r["method"] == "svd"
            assert (r["saved_tensors"], r["saved_bytes"]) == (5 + 2 * spectrum,
                                                              factors_bytes + loss_bytes + spectrum * spectrum_bytes), r
        if r["route"] == "iterations":  # every iterate recorded
            assert r["saved_bytes"] > 5 * factors_bytes, r
    table = backward._table(rows)
    assert "| 9×6 | float64 | analytic | svd |" in table and len(table.splitlines()) == 2 + len(rows)
