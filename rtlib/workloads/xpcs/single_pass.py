"""One pass over each chunk of frames: the summed image, the mean intensity of every frame, and the ROI pixels.

The run needs three things from every chunk: the per-pixel sum (for the
time-averaged image), each frame's mean over the good pixels (intensity vs
time) and the dynamic-ROI pixels in frame order (for the correlators).
numpy forms them with two fancy-indexed copies and a reduction, three passes
over the chunk; the compiled pass reads each frame once, in parallel over
blocks of pixels, and writes the picked pixels in the frames' own type.
"""

from __future__ import annotations

import numpy as np

try:
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a dependency; this keeps a broken install usable
    HAVE_NUMBA = False

PIXELS_PER_TASK = 8192


if HAVE_NUMBA:

    # reassoc: the per-frame sum vectorises (integer counts add up exactly in any order)
    @njit(parallel=True, nogil=True, boundscheck=False, cache=True, fastmath={"reassoc", "contract"})
    def _pass(flat, good, picked_index, image_sum, picked):  # pragma: no cover - compiled
        frames, pixels = flat.shape
        tasks = (pixels + PIXELS_PER_TASK - 1) // PIXELS_PER_TASK
        partial = np.zeros((tasks, frames))  # each task's good-pixel sum per frame, added up after
        for task in prange(tasks):
            lo = task * PIXELS_PER_TASK
            hi = min(pixels, lo + PIXELS_PER_TASK)
            total = image_sum[lo:hi]
            mask = good[lo:hi]
            for t in range(frames):
                row = flat[t, lo:hi]
                s = 0.0
                for q in range(hi - lo):
                    v = np.float64(row[q])
                    total[q] += v
                    s += v * mask[q]
                partial[task, t] = s
        # The picked pixels: each task copies a range of them (their positions are increasing).
        count = picked_index.shape[0]
        for task in prange((count + PIXELS_PER_TASK - 1) // PIXELS_PER_TASK):
            lo = task * PIXELS_PER_TASK
            hi = min(count, lo + PIXELS_PER_TASK)
            for t in range(frames):
                src = flat[t]
                dst = picked[t]
                for i in range(lo, hi):
                    dst[i] = src[picked_index[i]]
        return partial.sum(axis=0)


def frame_pass(flat: np.ndarray, good: np.ndarray, picked_index: np.ndarray, image_sum: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Add the chunk ``flat`` (frames, pixels) into ``image_sum`` (float64, per pixel); return each frame's
    summed counts over the ``good`` pixels (a 0/1 float64 mask) and the pixels ``picked_index`` of every frame."""
    picked = np.empty((len(flat), len(picked_index)), flat.dtype)
    if HAVE_NUMBA:
        sums = _pass(np.ascontiguousarray(flat), good, picked_index, image_sum, picked)
        return sums, picked
    image_sum += flat.sum(axis=0, dtype=np.float64)
    picked[:] = flat[:, picked_index]
    return flat @ good if flat.dtype.kind == "f" else flat.astype(np.float64) @ good, picked
