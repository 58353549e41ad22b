"""Benchmarks of ray_s3ft against the physical limit and peer implementations (BENCHMARKS.md)."""
