"""polarkernels: fast, exact-enough matrix polar decomposition A = U H, and optimizers on it.

    u, h = polarkernels.polar(a)                 # drop-in for scipy.linalg.polar, batched, any kind
    u = polarkernels.orthogonalize(g)            # optimizer fast path (Polar Express, 5 steps)
    us = polarkernels.orthogonalize_many([g1, g2, ...])
"""

from .api import orthogonalize, orthogonalize_many, polar
from .remez import polar_express_schedule

__all__ = ["polar", "orthogonalize", "orthogonalize_many", "polar_express_schedule", "__version__"]
__version__ = "0.1.0"
