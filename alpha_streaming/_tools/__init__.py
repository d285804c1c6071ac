"""Operator tools: topic selection, log and DLQ reading, DLQ replay. Public names: `alpha_streaming`."""
