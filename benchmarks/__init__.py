"""Benchmarks of heterograd against baselines; run ``python -m benchmarks.run --out DIR``."""
