"""Benchmarks of polarkernels (not part of the installed package).

    python -m bench.polar --quick          # kernel benchmark, ~1 minute on CPU (see bench/polar.py)
    pytest bench/ --benchmark-only         # the same cases as a pytest-benchmark suite

Latest figures: bench/RESULTS.md.
"""
