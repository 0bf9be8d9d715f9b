"""Benchmarks: ours against the common baseline, A/B interleaved on the same machine (README: Performance)."""
