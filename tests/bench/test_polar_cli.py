"""The kernel benchmark CLI (``python -m bench.polar``) end to end on tiny workloads.

Times nothing that matters (benchmarks are not tests): it checks that one run writes the JSON
with every row's figures and the environment, the PNG plots, the Markdown table and the
polar()-vs-peers summary, and that the summary's verdicts follow the medians and IQRs.
"""

from __future__ import annotations

import json

import pytest

from bench import polar as bench_polar
from bench import report


def test_cli_writes_table_json_and_plots(tmp_path, capsys):
    argv = ["--device", "cpu", "--sizes", "24,40", "--workloads", "square,batched", "--batches", "3x8",
            "--methods", "auto,svd,polar_express", "--backends", "torch", "--dtypes", "float32",
            "--baselines", "torch_svd,torch_svd_polar,scipy_polar,kj_muon", "--budget-s", "0", "--min-runs", "2",
            "--no-compile", "--out", str(tmp_path)]
    assert bench_polar.main(argv) == 0
    out = capsys.readouterr().out

    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["environment"]["torch"] and payload["environment"]["cpu_count"]
    rows = payload["rows"]
    workloads = {r["workload"] for r in rows}
    assert workloads == {"square 24", "square 40", "batch 3x8x8"}
    for workload in workloads:
        names = {r["candidate"] for r in rows if r["workload"] == workload}
        assert {"polar(auto)", "scipy.linalg.polar", "torch.linalg.svd U Vh", "torch.linalg.svd polar (U, H)",
                "polar(svd, torch)",
                "polar(polar_express, torch)", "KellerJordan quintic",
                "orthogonalize(polar_express, torch)"} <= names
    for r in rows:
        assert r["runs"] >= 2 and r["median_s"] > 0 and r["flops"] > 0
        if r["family"] == "polar":
            # converged float32 factors: ~ε√n from orthogonal; 1e-4 is a wide margin at n ≤ 40
            assert r["orthogonality"] < 1e-4 and r["distance_to_polar"] < 1e-4, r["candidate"]
    auto = [r for r in rows if r["candidate"] == "polar(auto)"]
    assert all(r["method"] == "svd" for r in auto)  # auto = SVD on CPU

    assert (tmp_path / "time_vs_size_float32.png").stat().st_size > 0
    assert any(p.name.startswith("pareto_") for p in tmp_path.glob("*.png"))
    assert "| candidate | dtype | median ms |" in out
    assert "polar() with every default vs its CPU peers" in out
    assert out.count("- square 24 [float32]: polar(auto)") == 1
    assert f"JSON: {tmp_path / 'results.json'}" in out


def _row(candidate: str, median: float, q25: float, q75: float) -> dict:
    return {"workload": "w", "dtype": "float32", "candidate": candidate, "median_s": median,
            "q25_s": q25, "q75_s": q75, "distance_to_polar": 1e-6}


def test_auto_vs_peers_verdicts():
    scipy_row, jax_row = "scipy.linalg.polar", "jax.scipy.linalg.polar (svd)"
    faster = report.auto_vs_peers([_row("polar(auto)", 1.0, 0.9, 1.1), _row(scipy_row, 2.0, 1.9, 2.1)])
    assert len(faster) == 1 and "×2.00, faster" in faster[0]
    slower = report.auto_vs_peers([_row("polar(auto)", 2.0, 1.9, 2.1), _row(scipy_row, 1.0, 0.9, 1.1)])
    assert "×0.50, SLOWER" in slower[0]
    tie = report.auto_vs_peers([_row("polar(auto)", 1.0, 0.8, 1.3), _row(scipy_row, 1.2, 1.1, 1.4)])
    assert "tie (IQRs overlap)" in tie[0]
    assert report.auto_vs_peers([_row("polar(auto)", 1.0, 0.9, 1.1)]) == []  # no peer, no line
    # the verdict is against the fastest peer present; every peer's ratio is listed
    mixed = report.auto_vs_peers([_row("polar(auto)", 1.0, 0.9, 1.1), _row(scipy_row, 3.0, 2.9, 3.1),
                                  _row(jax_row, 0.5, 0.45, 0.55)])
    assert f"fastest peer {jax_row}" in mixed[0] and "×0.50, SLOWER" in mixed[0]
    assert f"{scipy_row} ×3.00" in mixed[0] and f"{jax_row} ×0.50" in mixed[0]


_TINY = ["--device", "cpu", "--sizes", "16", "--workloads", "square,batched", "--batches", "2x8",
         "--methods", "auto", "--backends", "torch", "--dtypes", "float64", "--budget-s", "0",
         "--min-runs", "2", "--no-compile", "--no-plots"]


def test_jax_peer_missing_is_a_skip_note(tmp_path, capsys, monkeypatch):
    from bench import jax_peer

    monkeypatch.setattr(jax_peer, "available", lambda: (False, "JAX is not installed (pip install 'jax[cpu]')"))
    assert bench_polar.main([*_TINY, "--baselines", "scipy_polar,jax_polar", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "- peer jax.scipy.linalg.polar: JAX is not installed" in out
    assert not any(r["candidate"].startswith("jax") for r in json.loads((tmp_path / "results.json").read_text())["rows"])


def test_jax_peer_rows_come_from_their_own_process(tmp_path, capsys):
    from bench import jax_peer

    ok, note = jax_peer.available()
    if not ok:
        pytest.skip(note)
    assert bench_polar.main([*_TINY, "--baselines", "scipy_polar,jax_polar", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    jax_rows = [r for r in rows if r["candidate"].startswith("jax.scipy.linalg.polar")]
    assert {(r["workload"], r["method"]) for r in jax_rows} == {
        (w, m) for w in ("square 16", "batch 2x8x8") for m in ("jax_qdwh", "jax_svd")}
    for r in jax_rows:
        assert r["process"] == "own" and r["runs"] >= 2 and r["median_s"] > 0
        # converged float64 factors of Gaussian 16×16 / 8×8 inputs: a few ε√n, far below 1e-12
        assert r["orthogonality"] < 1e-12 and r["distance_to_polar"] < 1e-12
    assert "fastest peer" in capsys.readouterr().out
