"""Runnable examples of alpha-streaming; each one is executed by `tests/integration/test_examples.py`."""
