"""Workload plug-ins, discovered through the ``rtlib.workloads`` entry-point group."""

from .base import ProgressFn, Workload, get_workload, validate_params, workload_names

__all__ = ["ProgressFn", "Workload", "get_workload", "validate_params", "workload_names"]
