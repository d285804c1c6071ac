"""The in-memory test kit behind the public `alpha_streaming.testing` module."""
