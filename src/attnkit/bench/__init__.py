"""Benchmarks: a shared harness (:mod:`attnkit.bench.harness`) and the suites of ``attnkit bench``."""
