"""The multi-tau inner loop compiled with numba: skips zero counts, runs in parallel over pixels.

XPCS frames are sparse (most pixels count 0 photons in a frame): a product
I(t)·I(t-d) is only formed where I(t) is non-zero, which is what makes the
correlator several times faster than the dense numpy product on the same
frames. Integer counts summed in float64 stay exact, so both paths give
bit-identical sums; the numpy path remains for installations without numba.
"""

from __future__ import annotations

import numpy as np

try:
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a dependency; this keeps a broken install usable
    HAVE_NUMBA = False

PIXEL_BLOCK = 4096  # pixels per parallel task: rows of a block stay in cache across delays


def accumulate_dense(history: np.ndarray, block: np.ndarray, delays: np.ndarray, g2_sum: np.ndarray) -> None:
    """g2_sum[i, p] += Σ_t block[t, p] · frame(t - delays[i])[p] over the new frames t that have that partner.

    `history` holds the frames just before `block` (oldest first); frame(s) for s < 0 is history[len + s].
    """
    held = len(history)
    joined = np.concatenate([history, block]) if held else block
    count = len(block)
    for i, d in enumerate(delays):
        begin = max(0, int(d) - held)
        if begin >= count:
            continue
        earlier = joined[held + begin - d: held + count - d]
        g2_sum[i] += np.einsum("tp,tp->p", earlier, block[begin:])


if HAVE_NUMBA:

    @njit(parallel=True, cache=True, nogil=True)
    def _accumulate_sparse(history, block, delays, g2_sum):  # pragma: no cover - compiled
        held = history.shape[0]
        count, pixels = block.shape
        blocks = (pixels + PIXEL_BLOCK - 1) // PIXEL_BLOCK
        for b in prange(blocks):
            lo = b * PIXEL_BLOCK
            hi = min(pixels, lo + PIXEL_BLOCK)
            for t in range(count):
                for p in range(lo, hi):
                    v = block[t, p]
                    if v == 0.0:
                        continue
                    for i in range(delays.shape[0]):
                        s = t - delays[i]
                        if s >= 0:
                            g2_sum[i, p] += v * block[s, p]
                        elif held + s >= 0:
                            g2_sum[i, p] += v * history[held + s, p]


def accumulate(history: np.ndarray, block: np.ndarray, delays: np.ndarray, g2_sum: np.ndarray) -> None:
    if HAVE_NUMBA:
        history = np.ascontiguousarray(history, dtype=np.float64)
        if history.shape[1:] != block.shape[1:]:  # the first block: no history yet
            history = np.zeros((0, block.shape[1]))
        _accumulate_sparse(history, np.ascontiguousarray(block, dtype=np.float64), np.asarray(delays, dtype=np.int64), g2_sum)
    else:
        accumulate_dense(history, block, delays, g2_sum)
