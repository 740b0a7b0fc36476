"""One pass over each chunk of frames for the summed image and each frame's intensity, and the ROI pixels picked.

The run needs three things from every chunk: the per-pixel sum (for the
time-averaged image), each frame's mean over the good pixels (intensity vs
time) and the dynamic-ROI pixels in frame order (for the correlators).
numpy forms them with two fancy-indexed copies and a reduction, slowly; here
one compiled pass, on threads over blocks of pixels, reads each frame once for
both sums, and the compiled gather (``kernels.gather_add``) picks the ROI
pixels in the frames' own type.
"""

from __future__ import annotations

import numpy as np

from .kernels import gather_add
from .threads import run_tasks, thread_count

try:
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a dependency; this keeps a broken install usable
    HAVE_NUMBA = False

PIXELS_PER_TASK = 8192


if HAVE_NUMBA:

    # reassoc: the per-frame sum vectorises (integer counts add up exactly in any order)
    @njit(nogil=True, boundscheck=False, cache=True, fastmath={"reassoc", "contract"})
    def _pass(flat, good, image_sum, task, tasks):  # pragma: no cover - compiled
        """Pixel blocks task, task + tasks, ...: their sums into image_sum; their good-pixel sum per frame."""
        frames, pixels = flat.shape
        sums = np.zeros(frames)
        for block in range(task, (pixels + PIXELS_PER_TASK - 1) // PIXELS_PER_TASK, tasks):
            lo = block * PIXELS_PER_TASK
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
                sums[t] += s
        return sums


def frame_pass(flat: np.ndarray, good: np.ndarray, picked_index: np.ndarray, image_sum: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Add the chunk ``flat`` (frames, pixels) into ``image_sum`` (float64, per pixel); return each frame's
    summed counts over the ``good`` pixels (a 0/1 float64 mask) and the pixels ``picked_index`` of every frame."""
    flat = np.ascontiguousarray(flat)
    picked = np.zeros((len(flat), len(picked_index)), flat.dtype)
    gather_add(flat, picked_index, np.arange(len(flat)), picked)  # one frame per row: a copy
    if HAVE_NUMBA:
        return np.sum(run_tasks(_pass, thread_count(), flat, good, image_sum), axis=0), picked
    image_sum += flat.sum(axis=0, dtype=np.float64)
    return flat.astype(np.float64) @ good, picked
