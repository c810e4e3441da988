"""datadl: publish tabular datasets and download them safely and fast."""

__version__ = "0.1.0"
