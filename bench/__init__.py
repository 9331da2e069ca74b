"""Benchmark harness, CLI, data sources and training engine."""
