"""Benchmarks: importable so that torch elastic workers can unpickle the benchmark task by reference."""
