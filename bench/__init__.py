"""Benchmarks: figures, not assertions (run with `make bench`)."""
