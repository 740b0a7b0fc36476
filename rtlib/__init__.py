"""rtlib: near-real-time analysis of experimental science data on a supercomputer."""

__version__ = "0.1.0"
