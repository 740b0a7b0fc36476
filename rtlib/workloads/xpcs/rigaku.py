"""Frames from a Rigaku XSPA-500k photon-event file (``.bin``), as APS 8-ID-I's detector writes them.

The file is a sequence of little-endian 64-bit words, one per pixel with counts in a frame, in frame order:
bits 40–63 hold the frame index, bits 16–36 the pixel index (row-major on the 512 × 1024 module), bits 0–11
the count. The frame count is the last word's frame index + 1 (trailing frames without a photon are not
recorded, so a record that ends dark is shorter by those frames — as for every reader of this format).
There is no metadata: the frame time and the geometry come from the job's parameters (or the q-map file).

Events are read one block at a time and scattered into dense chunks of ``frames_per_chunk`` frames; the file
is never held whole. A word outside the module, a frame index that goes back, or a size that is not a
whole number of words stops the run, naming the word.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import InputDataError

SHAPE = (512, 1024)
WORD = np.dtype("<u8")
BLOCK_WORDS = 1 << 20
SIX_MODULE_SUFFIXES = tuple(f".bin.{i:03d}" for i in range(6))


def is_rigaku(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(SIX_MODULE_SUFFIXES):
        raise InputDataError(f"{path.name} is one module of a Rigaku 3M six-module record; rtlib reads single-module "
                             "Rigaku .bin files only so far")
    return name.endswith(".bin")


def decode(words: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame index, pixel index, count) of each word."""
    return ((words >> np.uint64(40)).astype(np.int64), ((words >> np.uint64(16)) & np.uint64(2**21 - 1)).astype(np.int64),
            (words & np.uint64(2**12 - 1)).astype(np.uint16))


class RigakuFrames:
    """A (frames, 512, 1024) uint16 stack over the events of one ``.bin`` file."""

    dtype = np.dtype(np.uint16)
    name = "photon events"

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        if size == 0 or size % WORD.itemsize:
            raise InputDataError(f"{path}: {size} bytes is not a whole number of 64-bit Rigaku event words; the file "
                                 "is truncated or not a Rigaku .bin file")
        self.words = np.memmap(path, dtype=WORD, mode="r")
        last_frame = int(decode(self.words[-1:])[0][0])
        self.shape = (last_frame + 1, *SHAPE)

    def chunks(self, frames_per_chunk: int) -> Iterator[tuple[int, int, np.ndarray]]:
        total, pixels = self.shape[0], SHAPE[0] * SHAPE[1]
        cursor, previous = 0, 0
        pending = decode(np.zeros(0, WORD))  # decoded words not yet scattered into a chunk
        for start in range(0, total, frames_per_chunk):
            stop = min(total, start + frames_per_chunk)
            block = np.zeros((stop - start, pixels), dtype=self.dtype)
            while True:
                if not len(pending[0]):
                    if cursor >= len(self.words):
                        break
                    pending = decode(np.asarray(self.words[cursor:cursor + BLOCK_WORDS]))
                    self._check(pending[0], pending[1], previous, cursor)
                    previous = int(pending[0][-1])
                    cursor += len(pending[0])
                frame, pixel, count = pending
                take = int(np.searchsorted(frame, stop))
                np.add.at(block, (frame[:take] - start, pixel[:take]), count[:take])
                pending = (frame[take:], pixel[take:], count[take:])
                if len(pending[0]):
                    break
            yield start, stop, block.reshape(stop - start, *SHAPE)

    def _check(self, frame: np.ndarray, pixel: np.ndarray, previous: int, cursor: int) -> None:
        back = np.flatnonzero(np.diff(frame, prepend=previous) < 0)
        if len(back):
            raise InputDataError(f"{self.path}: word {cursor + int(back[0])} goes back to frame {int(frame[back[0]])}; "
                                 "a Rigaku event file is in frame order (damaged file?)")
        outside = np.flatnonzero(pixel >= SHAPE[0] * SHAPE[1])
        if len(outside):
            raise InputDataError(f"{self.path}: word {cursor + int(outside[0])} names pixel {int(pixel[outside[0]])}, "
                                 f"outside the {SHAPE[0]} x {SHAPE[1]} module")
