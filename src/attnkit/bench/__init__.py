"""Benchmarks: the shared harness (:mod:`attnkit.bench.harness`) and the suites."""
