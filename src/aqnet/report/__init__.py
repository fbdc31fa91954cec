"""aqnet.report (see docs/ARCHITECTURE.md)."""
