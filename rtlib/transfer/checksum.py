"""Streaming file checksums: a copy becomes visible only when its digest equals the source's."""

from __future__ import annotations

import hashlib
import os

DEFAULT_ALGORITHM = "sha256"
DEFAULT_CHUNK_BYTES = 1 << 20


def new_hasher(algorithm: str = DEFAULT_ALGORITHM):
    """A fresh hashlib object; a clear error for an algorithm hashlib lacks."""
    # shake_* digests have no fixed length, so hexdigest() would need one: not usable here
    if algorithm.lower().startswith("shake_"):
        raise ValueError(f"checksum algorithm {algorithm!r} has no fixed digest length; use e.g. 'sha256' or 'blake2b'")
    try:
        return hashlib.new(algorithm)
    except ValueError:
        allowed = ", ".join(sorted(a for a in hashlib.algorithms_available if not a.startswith("shake_")))
        raise ValueError(f"unknown checksum algorithm {algorithm!r}; available: {allowed}") from None


def file_checksum(path: str | os.PathLike, algorithm: str = DEFAULT_ALGORITHM, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> str:
    """The hex digest of a file, read in chunks of `chunk_bytes` so memory stays flat for 40 GB files."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    hasher = new_hasher(algorithm)
    buf = bytearray(chunk_bytes)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            hasher.update(view[:n])
    return hasher.hexdigest()
