"""The benchmark's outputs: environment record, Markdown table, JSON file and PNG plots."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import torch

REPO = Path(__file__).resolve().parent.parent


def _run(cmd: Sequence[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=REPO, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return match.group(1) if match else platform.machine()


def _cpu_mhz() -> list[float]:
    try:
        return [float(v) for v in re.findall(r"^cpu MHz\s*:\s*([\d.]+)$", Path("/proc/cpuinfo").read_text(), re.M)]
    except OSError:
        return []


def _blas_libraries() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("internal_api", "prefix", "version", "num_threads", "architecture")
    return [{k: lib.get(k) for k in keys} for lib in threadpool_info()]


def environment(device: torch.device) -> dict[str, Any]:
    """Device, versions, commit, clocks and load: everything a reader needs to trust a figure."""
    env: dict[str, Any] = {
        "device": device.type,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_mhz": _cpu_mhz(),
        "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "blas_libraries": _blas_libraries(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "git_commit": _run(["git", "rev-parse", "HEAD"]),
        "git_dirty": bool(_run(["git", "status", "--porcelain", "--untracked-files=no"])),
    }
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = props.name
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["cuda"] = torch.version.cuda
        env["gpu_clocks"] = _run(["nvidia-smi", "--query-gpu=clocks.sm,clocks.max.sm,clocks.mem,power.draw,"
                                  "temperature.gpu", "--format=csv,noheader"])
    return env


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "—" if x is None else format(x, spec)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One table per workload; rows ordered by family, then time."""
    header = ("| candidate | dtype | median ms | IQR ms | runs | GFLOP | GFLOP/s | % matmul "
              "| ‖UᵀU−I‖ | ‖U−U₆₄‖ | ×svd | ×muon |")
    rule = "|" + "---|" * 12
    out: list[str] = []
    for workload in dict.fromkeys(r["workload"] for r in rows):
        out += ["", f"**{workload}**", "", header, rule]
        group = sorted((r for r in rows if r["workload"] == workload), key=lambda r: (r["family"], r["median_s"]))
        for r in group:
            out.append(
                f"| {r['candidate']} | {r['dtype']} | {r['median_s'] * 1e3:.3g} | {r['iqr_s'] * 1e3:.2g} "
                f"| {r['runs']} | {_fmt(r['gflop'])} | {_fmt(r['gflop_per_s'])} "
                f"| {_fmt(None if r['matmul_fraction'] is None else 100 * r['matmul_fraction'], '.0f')} "
                f"| {_fmt(r['orthogonality'], '.1e')} | {_fmt(r['distance_to_polar'], '.1e')} "
                f"| {_fmt(r['speedup_vs_svd'], '.2f')} | {_fmt(r['speedup_vs_muon'], '.2f')} |")
    return "\n".join(out)


#: What ``polar(a)`` with every default must not lose to on CPU (issue 12), by row name.
PEERS = ("scipy.linalg.polar", "torch.linalg.svd polar (U, H)", "jax.scipy.linalg.polar (qdwh)",
         "jax.scipy.linalg.polar (svd)")


def auto_vs_peers(rows: list[dict[str, Any]]) -> list[str]:
    """Per workload and dtype: ``polar(a)`` with every default against each peer present
    (:data:`PEERS`), as time ratios (> 1: polar() faster), with a verdict against the fastest
    peer (a tie when the IQRs overlap) and both distances to the float64 factor."""
    def find(workload: str, dtype: str, name: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["workload"] == workload and r["dtype"] == dtype
                     and r["candidate"] == name), None)

    out = []
    for workload, dtype in dict.fromkeys((r["workload"], r["dtype"]) for r in rows):
        auto = find(workload, dtype, "polar(auto)")
        peers = [r for r in (find(workload, dtype, name) for name in PEERS) if r is not None]
        if auto is None or not peers:
            continue
        best = min(peers, key=lambda r: r["median_s"])
        ratio = best["median_s"] / auto["median_s"]
        # IQRs overlapping means the two medians are not distinguishable in this run
        tie = auto["q25_s"] <= best["q75_s"] and best["q25_s"] <= auto["q75_s"]
        verdict = "tie (IQRs overlap)" if tie else ("faster" if ratio > 1 else "SLOWER")
        each = ", ".join(f"{r['candidate']} ×{r['median_s'] / auto['median_s']:.2f}" for r in peers)
        out.append(f"- {workload} [{dtype}]: polar(auto) {auto['median_s'] * 1e3:.3g} ms, fastest peer "
                   f"{best['candidate']} {best['median_s'] * 1e3:.3g} ms: ×{ratio:.2f}, {verdict}; ‖U−U₆₄‖ "
                   f"{auto['distance_to_polar']:.1e} vs {best['distance_to_polar']:.1e} ({each})")
    return out


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=1, default=str))


def plots(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """time vs size per candidate (log-log, one figure per dtype, square workloads) and
    accuracy vs time with the Pareto front (largest square workload, and the model workload)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    squares = [r for r in rows if r["kind"] == "square"]
    for dtype in dict.fromkeys(r["dtype"] for r in squares):
        fig, ax = plt.subplots(figsize=(8, 5.5))
        sub = [r for r in squares if r["dtype"] == dtype]
        names = list(dict.fromkeys(r["candidate"] for r in sub))
        colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(names), 2)))
        for name, color in zip(names, colors):
            pts = sorted((r["size"], r["median_s"]) for r in sub if r["candidate"] == name)
            style = "--" if name.startswith(("torch.", "scipy.", "Keller")) else "-"
            ax.plot(*zip(*pts), style, marker="o", ms=3, color=color, label=name)
        sizes = sorted({r["size"] for r in sub})
        ax.set_xticks(sizes, [str(v) for v in sizes])
        ax.minorticks_off()
        ax.set(xscale="log", yscale="log", xlabel="n (n×n input)", ylabel="median seconds per call",
               title=f"time vs size, {dtype} ({rows[0]['device']})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        path = out_dir / f"time_vs_size_{dtype}.png"
        fig.savefig(path, dpi=80, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    targets = []
    if squares:  # the largest square workload among those with the most candidates measured
        counts = {w: sum(r["workload"] == w for r in squares) for w in dict.fromkeys(r["workload"] for r in squares)}
        targets.append(max(squares, key=lambda r: (counts[r["workload"]], r["size"]))["workload"])
    targets += list(dict.fromkeys(r["workload"] for r in rows if r["kind"] == "model"))
    for workload in targets:
        sub = [r for r in rows if r["workload"] == workload and r["distance_to_polar"] is not None]
        if not sub:
            continue
        fig, ax = plt.subplots(figsize=(8, 5.5))
        for r in sub:
            ax.scatter(r["median_s"], max(r["distance_to_polar"], 1e-17), s=14)
            ax.annotate(f"{r['candidate']} [{r['dtype']}]", (r["median_s"], max(r["distance_to_polar"], 1e-17)),
                        fontsize=6, xytext=(3, 2), textcoords="offset points")
        front = _pareto([(r["median_s"], max(r["distance_to_polar"], 1e-17)) for r in sub])
        ax.step(*zip(*front), where="post", color="k", lw=0.8, label="Pareto front")
        ax.set(xscale="log", yscale="log", xlabel="median seconds per call",
               ylabel="‖U − U_polar(float64)‖_F / √k", title=f"accuracy vs time, {workload}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        path = out_dir / f"pareto_{re.sub(r'[^A-Za-z0-9]+', '_', workload).strip('_')}.png"
        fig.savefig(path, dpi=80, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points not beaten in both time and error, by increasing time."""
    front: list[tuple[float, float]] = []
    for t, e in sorted(points):
        if not front or e < front[-1][1]:
            front.append((t, e))
    return front
