"""Benchmarks (not tests): `python -m bench [direct|enhanced|all]`; see bench/README.md."""
