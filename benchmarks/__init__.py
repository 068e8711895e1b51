"""Benchmarks of the pipeline (run from the repo root: `python -m benchmarks.bench_convert`)."""
