"""Compute backends run workload tasks: a dask LocalCluster (embedded) or dask-jobqueue (PBS/Slurm)."""

from .base import ComputeBackend, make_backend

__all__ = ["ComputeBackend", "make_backend"]
