"""Benchmarks: measured numbers (median, p10, p90), never pass/fail timing tests."""
