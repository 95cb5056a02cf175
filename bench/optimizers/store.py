"""The resumable record of every run: one JSON file, rewritten atomically after each run.

Layout: ``{"meta": {...provenance...}, "runs": [record, ...]}`` with the records of
:func:`bench.optimizers.runner.run`. Non-finite numbers are written as ``null`` (strict JSON);
a diverged run's final loss therefore reads back as ``None``. A run is identified by
(problem, optimizer, lr, decay, seed, steps, adamw): rerunning the benchmark skips every run
already recorded, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def run_key(problem: str, optimizer: str, lr: float, decay: float, seed: int, steps: int,
            adamw: dict | None) -> str:
    """The identity of a run (learning rates compared to 6 significant digits)."""
    aw = "-" if adamw is None else f"{adamw['lr']:.6g}/{adamw['decay']:.6g}"
    return f"{problem}|{optimizer}|{lr:.6g}|{decay:.6g}|{seed}|{steps}|{aw}"


def _strict(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no inf or NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return value


class RunStore:
    """Every run of one benchmark mode, persisted to ``path``."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.meta = meta
        self.runs: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            # a run on a subset of the problems keeps the provenance of the others
            self.meta["problems"] = {**saved["meta"].get("problems", {}), **meta.get("problems", {})}
            for record in saved["runs"]:
                self.runs[self._key(record)] = record

    @staticmethod
    def _key(record: dict[str, Any]) -> str:
        return run_key(record["problem"], record["optimizer"], record["lr"], record["decay"],
                       record["seed"], record["steps"], record["adamw"])

    def get(self, key: str) -> dict[str, Any] | None:
        return self.runs.get(key)

    def add(self, record: dict[str, Any]) -> dict[str, Any]:
        """Record a run and rewrite the file (write to a temporary file, then rename)."""
        record = _strict(record)
        self.runs[self._key(record)] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": self.meta, "runs": list(self.runs.values())},
                                  separators=(",", ":"), allow_nan=False))
        os.replace(tmp, self.path)
        return record
