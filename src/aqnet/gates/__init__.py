"""aqnet.gates (see docs/ARCHITECTURE.md)."""
