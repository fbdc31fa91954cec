"""aqnet.model (see docs/ARCHITECTURE.md)."""
