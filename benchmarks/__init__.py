"""Throughput and scale benchmarks against local fake servers (see benchmarks/README.md)."""
