"""The service layer: builder, built service, orchestrator, health. Public names: `alpha_streaming`."""
