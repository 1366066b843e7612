"""Benchmarks run by hand (never timed assertions in tests). See benchmarks/README.md."""
