"""Judging: validation matrices, HTTP checks, /metrics, benchmarks."""
