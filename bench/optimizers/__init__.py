"""Optimizer benchmark: Muon and PolarGrad against AdamW, the way Wen et al. compare optimizers
(and the Stiefel-manifold optimizers on problems with semi-orthogonal weights).

``python -m bench.optimizers`` (full protocol) or ``--quick``; see ``bench/OPTIMIZERS.md``.

Modules: :mod:`.problems` (the problems), :mod:`.optimizers` (the optimizers and their tuning
starts), :mod:`.manifold` (Riemannian SGD, the manifold baseline), :mod:`.schedules`
(learning-rate schedules), :mod:`.scaling` (model sizes, data/model ratios, the AdamW-equivalent
speedup), :mod:`.runner` (one training run), :mod:`.sweep` (coordinate-descent tuning),
:mod:`.protocol` (the studies and their order), :mod:`.store` (the resumable JSON of every run),
:mod:`.report` (tables and plots), :mod:`.step_cost` (CPU time per step), :mod:`.plan` (a run's
worst-case CPU time, before running it).
"""
