"""The TransferBackend contract shared by the local and Globus backends.

The agent calls ``transfer_batch`` from a worker thread with the items of
one or more jobs; the backend copies them (retrying transient failures
itself), verifies checksums, and returns one outcome per request, in order.
A destination file becomes visible only complete and verified.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class TransferRequest:
    item_id: int
    src_endpoint: str
    src_path: str  # relative to the endpoint root
    dst_endpoint: str
    dst_path: str  # relative to the endpoint root
    size_bytes: int = 0
    beamline: str | None = None  # the job's beamline: whose service account moves the file (Globus)


@dataclass(frozen=True)
class TransferOutcome:
    item_id: int
    ok: bool
    bytes: int = 0
    checksum: str | None = None  # hex digest of the verified copy
    attempts: int = 1
    error: str | None = None  # a sentence a person can act on
    permanent: bool = False  # True when retrying cannot help (missing file, path outside root)


ProgressCallback = Callable[[int], None]  # called with bytes copied since the last call
OutcomeCallback = Callable[[TransferOutcome], None]  # called as each item of a batch finishes


class TransferBackend(ABC):
    @abstractmethod
    def list_files(self, endpoint: str, path: str) -> list[tuple[str, int]]:
        """The files at `path` (a file, or a directory walked recursively) as (relative path, size).

        Raises EndpointError / PathOutsideRoot / InputDataError (missing path) with a clear message.
        """

    @abstractmethod
    def transfer_batch(self, requests: list[TransferRequest], progress: ProgressCallback | None = None) -> list[TransferOutcome]:
        """Copy every request; never raises for a single item's failure: it is in its outcome."""

    def local_path(self, endpoint: str, path: str):
        """The local filesystem path of `path` on `endpoint`, for backends that have one."""
        raise NotImplementedError(f"{type(self).__name__} has no local paths")

    def close(self) -> None:
        pass
