"""The multi-tau and two-time inner loops compiled with numba: skip zero counts, run in parallel.

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

PIXEL_BLOCK = 256  # pixels per parallel task: their frames, copied pixel-major, stay in cache across delays


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
        span = held + count
        ndel = delays.shape[0]
        blocks = (pixels + PIXEL_BLOCK - 1) // PIXEL_BLOCK
        for b in prange(blocks):
            lo = b * PIXEL_BLOCK
            hi = min(pixels, lo + PIXEL_BLOCK)
            # this block's pixels, pixel-major: one pixel's frames are contiguous and stay in cache
            local = np.empty((hi - lo, span))
            for t in range(held):
                for p in range(lo, hi):
                    local[p - lo, t] = history[t, p]
            for t in range(count):
                for p in range(lo, hi):
                    local[p - lo, held + t] = block[t, p]
            acc = np.empty(ndel)
            for q in range(hi - lo):
                row = local[q]
                acc[:] = 0.0
                for t in range(held, span):
                    v = row[t]
                    if v == 0.0:
                        continue
                    for i in range(ndel):
                        s = t - delays[i]
                        if s >= 0:
                            acc[i] += v * row[s]
                for i in range(ndel):
                    g2_sum[i, lo + q] += acc[i]


def accumulate(history: np.ndarray, block: np.ndarray, delays: np.ndarray, g2_sum: np.ndarray) -> None:
    if HAVE_NUMBA:
        history = np.ascontiguousarray(history, dtype=np.float64)
        if history.shape[1:] != block.shape[1:]:  # the first block: no history yet
            history = np.zeros((0, block.shape[1]))
        # Counts of any numeric type are read into float64 inside the kernel (exact for integers below 2^53).
        _accumulate_sparse(history, np.ascontiguousarray(block), np.asarray(delays, dtype=np.int64), g2_sum)
    else:
        accumulate_dense(np.asarray(history, dtype=np.float64), np.asarray(block, dtype=np.float64), delays, g2_sum)


SPARSE_ADVANTAGE = 400  # a scattered multiply-add (plus finding it) costs about this many float32 syrk ones (measured here)


if HAVE_NUMBA:

    @njit(parallel=True, cache=True, nogil=True)
    def _nonzeros_by_pixel(cols):  # pragma: no cover - compiled
        """CSR of cols.T: for each pixel, the time steps (increasing) and values of its non-zero counts."""
        steps, pixels = cols.shape
        blocks = (pixels + PIXEL_BLOCK - 1) // PIXEL_BLOCK
        ptr = np.zeros(pixels + 1, np.int64)
        for b in prange(blocks):  # each task counts, then fills, its own pixels: no shared writes
            lo = b * PIXEL_BLOCK
            hi = min(pixels, lo + PIXEL_BLOCK)
            for t in range(steps):
                for p in range(lo, hi):
                    if cols[t, p] != 0.0:
                        ptr[p + 1] += 1
        for p in range(pixels):
            ptr[p + 1] += ptr[p]
        idx = np.empty(ptr[pixels], np.int32)
        vals = np.empty(ptr[pixels], np.float64)
        for b in prange(blocks):
            lo = b * PIXEL_BLOCK
            hi = min(pixels, lo + PIXEL_BLOCK)
            fill = ptr[lo:hi].copy()
            for t in range(steps):
                for p in range(lo, hi):
                    v = cols[t, p]
                    if v != 0.0:
                        idx[fill[p - lo]] = t
                        vals[fill[p - lo]] = v
                        fill[p - lo] += 1
        return ptr, idx, vals

    @njit(parallel=True, cache=True, nogil=True)
    def _sparse_upper_gram(ptr, idx, vals, steps, bounds):  # pragma: no cover - compiled
        """Upper triangle of Σ_p x_p x_pᵀ from the non-zeros; each task owns a band of rows (no write races)."""
        out = np.zeros((steps, steps))
        pixels = ptr.shape[0] - 1
        for r in prange(bounds.shape[0] - 1):
            lo = bounds[r]
            hi = bounds[r + 1]
            for p in range(pixels):
                end = ptr[p + 1]
                a = ptr[p] + np.searchsorted(idx[ptr[p]:end], lo)
                while a < end and idx[a] < hi:
                    t1 = idx[a]
                    v1 = vals[a]
                    for b in range(a, end):
                        out[t1, idx[b]] += v1 * vals[b]
                    a += 1
        return out


def _bands(steps: int, count: int) -> np.ndarray:
    """Row bounds splitting the upper triangle into ``count`` bands of about equal area (row t has steps - t cells)."""
    done = np.cumsum(np.arange(steps, 0, -1, dtype=np.float64))
    cuts = np.searchsorted(done, done[-1] * np.arange(1, count) / count)
    return np.unique(np.r_[0, cuts, steps]).astype(np.int64)


def sparse_gram(cols: np.ndarray) -> np.ndarray | None:
    """cols @ cols.T (float64, symmetric) from the non-zeros of cols (steps, pixels), when that is cheaper
    than the dense product; None when it is not (or numba is missing): the caller takes BLAS."""
    if not HAVE_NUMBA or cols.size == 0:
        return None
    steps, pixels = cols.shape
    ptr, idx, vals = _nonzeros_by_pixel(np.ascontiguousarray(cols))
    per_pixel = np.diff(ptr).astype(np.float64)
    if SPARSE_ADVANTAGE * float(np.dot(per_pixel, per_pixel)) >= float(steps) * steps * pixels:
        return None
    from numba import get_num_threads

    upper = _sparse_upper_gram(ptr, idx, vals, steps, _bands(steps, 4 * get_num_threads()))
    return upper + np.triu(upper, 1).T
