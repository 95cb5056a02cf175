"""Optimizer benchmark: Muon and PolarGrad against AdamW, the way Wen et al. compare optimizers.

``python -m bench.optimizers`` (full protocol) or ``--quick``; see ``bench/OPTIMIZERS.md``.

Modules: :mod:`.problems` (the problems), :mod:`.optimizers` (the optimizers and their tuning
starts), :mod:`.schedules` (learning-rate schedules), :mod:`.scaling` (model sizes, data/model
ratios, the AdamW-equivalent speedup), :mod:`.runner` (one training run), :mod:`.sweep`
(coordinate-descent tuning), :mod:`.protocol` (the studies and their order), :mod:`.store`
(the resumable JSON of every run), :mod:`.report` (tables and plots).
"""
