"""aqnet: a ClimaX-style air-quality forecaster with TopoFlow physics priors, and the pipeline
that fine-tunes it safely (cache -> gates -> short validation -> fine-tune -> report)."""

__version__ = "0.1.0"
