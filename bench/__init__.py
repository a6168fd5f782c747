"""Benchmarks: one module per benchmark, each printing one JSON object with ``--json``."""
