"""The resumable record of every run: one JSON file, rewritten atomically after each run.

Layout: ``{"meta": {...provenance...}, "runs": [record, ...], "tunings": {cell: {optimizer:
tuning}}}`` with the records of :func:`bench.optimizers.runner.run` and the coordinate-descent
outcomes of :mod:`bench.optimizers.sweep`. Non-finite numbers are written as ``null`` (strict
JSON); a diverged run's final loss therefore reads back as ``None``. A run is identified by
(problem, optimizer, setting, seed, steps, schedule, AdamW's setting for the hybrids):
rerunning the benchmark skips every run already recorded, so an interrupted sweep resumes
where it stopped.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _canonical(value: Any) -> Any:
    """Floats to 6 significant digits, so that keys of reruns match exactly."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in sorted(value.items())}
    return value


def run_key(problem: str, optimizer: str, setting: dict, seed: int, steps: int, schedule: dict,
            adamw: dict | None) -> str:
    """The identity of a run."""
    return json.dumps(_canonical({"problem": problem, "optimizer": optimizer, "setting": setting, "seed": seed,
                                  "steps": steps, "schedule": schedule, "adamw": adamw}), sort_keys=True)


def record_key(record: dict[str, Any]) -> str:
    return run_key(record["problem"], record["optimizer"], record["setting"], record["seed"],
                   record["steps"], record["schedule"], record["adamw"])


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
        self.tunings: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            # a run on a subset of the problems keeps the provenance of the others
            self.meta["problems"] = {**saved["meta"].get("problems", {}), **meta.get("problems", {})}
            # the commit each session of an interrupted run started at
            self.meta["sessions"] = [*saved["meta"].get("sessions", []), *meta.get("sessions", [])]
            self.tunings = saved.get("tunings", {})
            for record in saved["runs"]:
                self.runs[record_key(record)] = record

    def get(self, key: str) -> dict[str, Any] | None:
        return self.runs.get(key)

    def add(self, record: dict[str, Any]) -> dict[str, Any]:
        """Record a run and rewrite the file."""
        record = _strict(record)
        self.runs[record_key(record)] = record
        self.save()
        return record

    def add_tuning(self, cell: str, optimizer: str, tuning: dict[str, Any]) -> None:
        self.tunings.setdefault(cell, {})[optimizer] = _strict(tuning)
        self.save()

    def merge(self, path: Path) -> int:
        """Add the runs and tunings of another results file of the same mode (e.g. a stage run in
        a parallel process with its own ``--out``); returns how many runs were new. A tuning
        there replaces this file's for the same cell and optimizer only if it is newer work, so
        merge the files in the order they were written."""
        saved = json.loads(Path(path).read_text())
        if saved["meta"]["protocol"]["mode"] != self.meta["protocol"]["mode"]:
            raise ValueError(f"{path} holds mode {saved['meta']['protocol']['mode']!r}, "
                             f"not {self.meta['protocol']['mode']!r}")
        new = [r for r in saved["runs"] if record_key(r) not in self.runs]
        for record in new:
            self.runs[record_key(record)] = record
        for cell, tunings in saved.get("tunings", {}).items():
            self.tunings.setdefault(cell, {}).update(tunings)
        known = {(s["started"], s["commit"]) for s in self.meta["sessions"]}
        self.meta["sessions"] += [s for s in saved["meta"].get("sessions", []) if (s["started"], s["commit"]) not in known]
        self.meta["problems"] = {**saved["meta"].get("problems", {}), **self.meta.get("problems", {})}
        self.save()
        return len(new)

    def save(self) -> None:
        """Write to a temporary file, then rename (a crash never leaves a torn file)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": self.meta, "runs": list(self.runs.values()), "tunings": self.tunings},
                                  separators=(",", ":"), allow_nan=False))
        os.replace(tmp, self.path)
