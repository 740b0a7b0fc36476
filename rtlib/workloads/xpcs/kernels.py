"""The two-time product from each pixel's non-zero counts, compiled with numba and run in parallel.

XPCS frames are sparse (most pixels count 0 photons in a frame): when they
are sparse enough, Σ_p I_p(t1) I_p(t2) formed from the non-zeros alone is
cheaper than the dense matrix product. Integer counts summed in float64 stay
exact, so it equals the BLAS product bit for bit. (The multi-tau update is in
``multitau_update``.)
"""

from __future__ import annotations

import numpy as np

from .threads import thread_count

try:
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a dependency; this keeps a broken install usable
    HAVE_NUMBA = False

PIXEL_BLOCK = 256  # pixels per parallel task


# What one scattered multiply-add of the non-zero path costs in float32 syrk multiply-adds. It depends on the
# machine (400 on an AMD EPYC, 140-200 on a Xeon with AVX-512, both seen here), so it is measured on first use; set a number
# to fix it.
SPARSE_ADVANTAGE: float | None = None
GATHER_COLUMNS = 2048  # selected pixels per parallel task when they are picked out of the frames


if HAVE_NUMBA:

    @njit(parallel=True, cache=True, nogil=True, boundscheck=False)
    def _gather_add(block, selected, steps, store):  # pragma: no cover - compiled
        """store[steps[t], i] += block[t, selected[i]]: each task owns a range of columns (no shared writes)."""
        frames = block.shape[0]
        columns = selected.shape[0]
        for task in prange((columns + GATHER_COLUMNS - 1) // GATHER_COLUMNS):
            lo = task * GATHER_COLUMNS
            hi = min(columns, lo + GATHER_COLUMNS)
            for t in range(frames):
                src = block[t]
                dst = store[steps[t]]
                for i in range(lo, hi):
                    dst[i] += src[selected[i]]


def gather_add(block: np.ndarray, selected: np.ndarray, steps: np.ndarray, store: np.ndarray) -> None:
    """Add the selected pixels of each frame of ``block`` into row ``steps[t]`` of ``store``."""
    if HAVE_NUMBA:
        _gather_add(np.ascontiguousarray(block), selected, steps, store)
        return
    picked = np.asarray(block[:, selected], dtype=store.dtype)
    firsts = np.r_[0, np.flatnonzero(np.diff(steps)) + 1]  # frames of one step are adjacent
    store[steps[firsts]] += np.add.reduceat(picked, firsts, axis=0)


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
            counted = ptr[lo + 1: hi + 1]
            for t in range(steps):
                row = cols[t, lo:hi]
                for p in range(hi - lo):
                    counted[p] += row[p] != 0.0  # branch-free: the count vectorises
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
    if sparse_advantage() * float(np.dot(per_pixel, per_pixel)) >= float(steps) * steps * pixels:
        return None
    upper = _sparse_upper_gram(ptr, idx, vals, steps, _bands(steps, 4 * thread_count()))
    return upper + np.triu(upper, 1).T


def sparse_advantage() -> float:
    """SPARSE_ADVANTAGE, measured the first time it is needed (about 0.3 s, once a process)."""
    global SPARSE_ADVANTAGE
    if SPARSE_ADVANTAGE is None:
        SPARSE_ADVANTAGE = _measure_sparse_advantage()
    return SPARSE_ADVANTAGE


def _measure_sparse_advantage(steps: int = 512, pixels: int = 16384) -> float:
    """Seconds per scattered multiply-add over seconds per float32 syrk multiply-add, on sparse counts."""
    import time

    from scipy.linalg import blas

    cols = np.random.default_rng(0).poisson(0.05, (steps, pixels)).astype(np.float32)
    ptr, idx, vals = _nonzeros_by_pixel(cols)
    bands = _bands(steps, 4 * thread_count())

    def best(fn) -> float:
        fn()  # compiled and warm before it counts
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return max(min(times), 1e-9)

    sparse_s = best(lambda: _sparse_upper_gram(ptr, idx, vals, steps, bands))
    dense_s = best(lambda: blas.ssyrk(1.0, cols.T, trans=1, lower=0))
    per_pixel = np.diff(ptr).astype(np.float64)
    return (sparse_s / float(np.dot(per_pixel, per_pixel))) / (dense_s / (float(steps) * steps * pixels))
