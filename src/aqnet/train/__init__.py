"""aqnet.train (see docs/ARCHITECTURE.md)."""
