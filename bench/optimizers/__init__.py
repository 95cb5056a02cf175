"""Optimizer benchmark: PolarGrad and Muon against AdamW and SGD, each tuned the same way.

``python -m bench.optimizers`` (full protocol) or ``--quick``; see ``bench/OPTIMIZERS.md``.

Modules: :mod:`.problems` (the five problems), :mod:`.optimizers` (the optimizers and their
LR-grid centres), :mod:`.runner` (one training run), :mod:`.sweep` (the tuning protocol),
:mod:`.store` (the resumable JSON of every run), :mod:`.report` (tables and plots).
"""
