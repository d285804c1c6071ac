"""The enhanced tier: one FastStream middleware per concern, composed by `enhanced_stack`."""

__all__: tuple[str, ...] = ()
