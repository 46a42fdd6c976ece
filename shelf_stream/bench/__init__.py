"""Benchmarks behind ``shelf-bench``: they print figures, they never assert timings."""
