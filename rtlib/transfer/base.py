"""The TransferBackend contract shared by the local and Globus backends.

The agent calls ``transfer_batch`` from a worker thread with the items of
one or more jobs; the backend copies them (retrying transient failures
itself), verifies checksums, and returns one outcome per request, in order.
A destination file becomes visible only complete and verified.
"""

from __future__ import annotations

import errno
import os
import secrets
from abc import ABC, abstractmethod
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

TEMP_MARKER = ".rtlib-tmp-"


def temp_name(final_name: str) -> str:
    """The hidden name an unfinished file is written under; the pid lets a cleaner tell a dead process's leftovers."""
    return f".{final_name[:100]}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(6)}"


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

    def read_small_text(self, endpoint: str, path: str, max_bytes: int = 4096) -> str | None:
        """The text of a small bookkeeping file (a marker, never data), or None when there is none.

        Through `local_path`: NotImplementedError / EndpointError where the endpoint has none here."""
        full = Path(self.local_path(endpoint, path))
        try:
            with open(full, "rb") as f:
                data = f.read(max_bytes + 1)
        except FileNotFoundError:
            return None
        return data[:max_bytes].decode("utf-8", errors="replace")

    def create_small_text(self, endpoint: str, path: str, text: str) -> bool:
        """Create a small file holding `text`, complete or not at all; False (nothing written) if one is there."""
        full = Path(self.local_path(endpoint, path))
        full.parent.mkdir(parents=True, exist_ok=True)
        tmp = full.parent / temp_name(full.name)
        try:
            with open(tmp, "x", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, full)  # atomic, and fails where a file already is
            except FileExistsError:
                return False
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK):
                    raise
                with open(full, "x", encoding="utf-8") as f:  # a file system without hard links
                    f.write(text)
            return True
        except FileExistsError:
            return False
        finally:
            with suppress(OSError):
                os.unlink(tmp)

    def close(self) -> None:
        pass
