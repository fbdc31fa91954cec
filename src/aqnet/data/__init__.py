"""aqnet.data (see docs/ARCHITECTURE.md)."""
