"""Test support, not used at run time: random-weight pipelines built from config, for the
tests and the benchmarks (nothing is downloaded)."""
