"""Benchmarks against the anchors; `python bench/run_all.py` writes docs/benchmarks.md."""
