"""Transfer backends move files between endpoints: local.py (embedded) and globus.py."""

from .base import TransferBackend, TransferOutcome, TransferRequest

__all__ = ["TransferBackend", "TransferOutcome", "TransferRequest"]
