"""Benchmarks, run with ``make bench`` (``python -m benchmarks``); never part of the tests."""
