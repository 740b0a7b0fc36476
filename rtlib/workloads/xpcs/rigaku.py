"""Frames from a Rigaku XSPA-500k photon-event file (``.bin``), as APS 8-ID-I's detector writes them.

The file is a sequence of little-endian 64-bit words, one per pixel with counts in a frame, in frame order:
bits 40–63 hold the frame index, bits 16–36 the pixel index (row-major on the 512 × 1024 module), bits 0–11
the count. The frame count is the last word's frame index + 1 (trailing frames without a photon are not
recorded, so a record that ends dark is shorter by those frames — as for every reader of this format).
There is no metadata: the frame time and the geometry come from the job's parameters (or the q-map file).

Events are read one block at a time and scattered into dense chunks of ``frames_per_chunk`` frames; the file
is never held whole. A word outside the module, a frame index that goes back, or a size that is not a
whole number of words stops the run, naming the word.

A Rigaku 3M record is six such files, ``NAME.bin.000`` … ``NAME.bin.005``, one per 512 × 1024 module (a
module may store its pixel indices offset by 2^20). The modules sit in 3 rows × 2 columns with gaps of 70 rows
and 52 columns between them (1676 × 2100 pixels, the gaps never counting); row by row, left to right, the
positions hold files 005, 000, 004, 001, 003, 002 — the arrangement APS 8-ID-I's own correlator (boost_corr)
uses. The record has the frame count of its longest module. Naming any one of the six files reads all six,
from the same folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import InputDataError
from ..saxs.reader import CHUNK_BUDGET_BYTES

SHAPE = (512, 1024)
MODULE_INDEX_OFFSET = 2**20
MODULE_FILES_BY_POSITION = (5, 0, 4, 1, 3, 2)  # 3M: the file of each position, row by row
MODULE_GAP = (70, 52)
SHAPE_3M = (3 * SHAPE[0] + 2 * MODULE_GAP[0], 2 * SHAPE[1] + MODULE_GAP[1])
WORD = np.dtype("<u8")
BLOCK_WORDS = 1 << 20
# A record claims its frame count in its last word. A real one, even at 1e-5 photons per pixel and frame, has ~5
# events per frame on a module; one event per this many frames is a damaged or crafted file that would make the
# run correlate millions of empty 512 x 1024 frames.
MAX_FRAMES_PER_EVENT = 1000
SIX_MODULE_SUFFIXES = tuple(f".bin.{i:03d}" for i in range(6))


def is_rigaku(path: Path) -> bool:
    return path.name.lower().endswith((".bin", *SIX_MODULE_SUFFIXES))


def open_rigaku(path: Path) -> "RigakuFrames | Rigaku3MFrames":
    return Rigaku3MFrames(path) if path.name.lower().endswith(SIX_MODULE_SUFFIXES) else RigakuFrames(path)


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
        if last_frame + 1 > MAX_FRAMES_PER_EVENT * len(self.words):
            raise InputDataError(
                f"{path}: its last event is in frame {last_frame}, but the file holds only {len(self.words)} events "
                f"(fewer than one per {MAX_FRAMES_PER_EVENT} frames): the record is damaged or crafted; check the file "
                "against the detector's own record of the series")
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
                    pending[1][pending[1] >= MODULE_INDEX_OFFSET] -= MODULE_INDEX_OFFSET
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


class Rigaku3MFrames:
    """A (frames, 1676, 2100) uint16 stack over the six module files of a Rigaku 3M record."""

    dtype = np.dtype(np.uint16)
    name = "photon events (Rigaku 3M)"

    def __init__(self, path: Path):
        stem = path.name[:-len(".000")]
        files = [path.with_name(f"{stem}.{n:03d}") for n in MODULE_FILES_BY_POSITION]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise InputDataError(f"{path.name} is one module of a Rigaku 3M record, but {', '.join(sorted(missing))} "
                                 f"is not beside it; stage all six module files {stem}.000 … {stem}.005 together")
        self.modules = [RigakuFrames(f) for f in files]
        total = max(m.shape[0] for m in self.modules)
        for module in self.modules:  # a module whose last frames are dark ends early: it runs to the record's end
            module.shape = (total, *SHAPE)
        self.path = path
        self.shape = (total, *SHAPE_3M)

    def chunks(self, frames_per_chunk: int) -> Iterator[tuple[int, int, np.ndarray]]:
        # the 256 MiB budget of the HDF5 reader, in the float64 the correlators widen a chunk to
        frames_per_chunk = max(1, min(frames_per_chunk, CHUNK_BUDGET_BYTES // (8 * SHAPE_3M[0] * SHAPE_3M[1])))
        streams = [m.chunks(frames_per_chunk) for m in self.modules]
        for parts in zip(*streams):
            start, stop = parts[0][0], parts[0][1]
            canvas = np.zeros((stop - start, *SHAPE_3M), dtype=self.dtype)
            for position, (_, _, block) in enumerate(parts):
                row = position // 2 * (SHAPE[0] + MODULE_GAP[0])
                col = position % 2 * (SHAPE[1] + MODULE_GAP[1])
                canvas[:, row:row + SHAPE[0], col:col + SHAPE[1]] = block
            yield start, stop, canvas
