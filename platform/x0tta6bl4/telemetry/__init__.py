"""Telemetry frames, the eBPF source actor and the procfs fallback."""
