"""``python -m bench.gpu --dry-run``: the device check's own code paths on a CPU, so it cannot rot
before a GPU runs it. Tiny sizes; the Triton kernels run in the interpreter (conftest sets
TRITON_INTERPRET), the CUDA backend, sanitizer and GPU-only checks are recorded as skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_writes_report_and_passes_its_checks(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])))
    run = subprocess.run([sys.executable, "-m", "bench.gpu", "--dry-run", "--out", str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "cpu_dry_run.json").read_text())
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert "FAIL" not in status.values()
    for dtype in ("bf16", "fp16", "fp32"):  # every dtype, every shape kind, against torch_ref
        for shape in ("wide-9x24", "tall-24x9", "batched-2x8x12"):
            assert status[f"torch orthogonalize {shape} {dtype}"] == "pass"
            if os.environ.get("TRITON_INTERPRET") == "1":
                assert status[f"triton orthogonalize {shape} {dtype}"] == "pass"
    assert status["torch torch.compile(orthogonalize, fullgraph=True)"] == "pass"
    assert status["cuda[ext]: loads"] == status["cuda[cupy]: loads"] == "skipped"  # no GPU here
    assert [s["tool"] for s in report["sanitizer"]] == ["memcheck", "racecheck", "synccheck"]
    cases = {t["case"] for t in report["timings"]}
    assert {"bf16 matmul peak", "orth5 24x24 bf16", "polar fp32 24x24"} <= cases
    assert any(c.startswith("gpt2-small set") for c in cases)
    assert report["headlines"] and report["meta"]["commit"]
    assert (tmp_path / "cpu_dry_run.md").read_text().startswith("# Device check: CPU dry run")
    tail = run.stdout.rstrip().splitlines()
    assert tail[-len(report["headlines"]) - 1] == "== headlines"  # the ratios come last
