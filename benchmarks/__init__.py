"""Benchmarks for sbkernels: microbenchmarks (pytest-benchmark), the comparison report, the step benchmark."""
