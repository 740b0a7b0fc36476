"""Two-time correlation C(t1, t2) per selected ROI, with BLAS matrix products.

For an ROI with pixels p and (binned) frames t::

    C(t1, t2) = <I_p(t1) I_p(t2)>_p / (<I_p(t1)>_p <I_p(t2)>_p)

(Sutton's normalised intensity covariance plus one; its average along a
diagonal t2 - t1 = τ is g2(τ) with the ROI normalisation.) Every (t1, t2)
needs every frame, so the ROI pixels are kept, binned, as float32 (exact for
counts below 2^24) — memory is frames × selected pixels, never the whole
detector.

At the count rates of XPCS most pixels see no photon in most frames: when
that makes it cheaper, the product Σ_p I_p(t1) I_p(t2) is summed from each
pixel's non-zero counts only (``kernels.sparse_gram``, numba, exact).
Otherwise it is a symmetric rank-k update (BLAS ``syrk``:
half the work of a general matrix product) over blocks of pixels, each
block's sum added into a float64 matrix. Photon counts are integers: a
float32 ``ssyrk`` over a block is exact as long as the block's largest
possible sum, pixels × (largest count)², stays below 2^24, so the block width
is chosen for that and the result equals the float64 product exactly at
twice the speed. Non-integer frames, or counts too large for a useful block,
take the float64 ``dsyrk``.
"""

from __future__ import annotations

import numpy as np

from .kernels import gather_add

# Pixels per block of the product: bounds the temporary copy at frames × this × 8 bytes.
_PIXELS_PER_BLOCK = 4096
_FLOAT32_EXACT = 2**24  # integers up to this are exact in float32
_MIN_FLOAT32_BLOCK = 256  # narrower exact blocks are not worth it: use float64


def _symmetric_product(cols: np.ndarray, integral: bool) -> np.ndarray:
    """cols @ cols.T (float64, symmetric) for cols (steps, pixels) float32, by blocks of pixels with BLAS syrk."""
    from scipy.linalg import blas

    from .kernels import sparse_gram

    sparse = sparse_gram(cols)
    if sparse is not None:
        return sparse
    steps, npix = cols.shape
    peak = float(cols.max()) if cols.size else 0.0
    width = _PIXELS_PER_BLOCK
    exact32 = integral and peak >= 0
    if exact32 and peak > 0:
        width = min(_PIXELS_PER_BLOCK, int((_FLOAT32_EXACT - 1) // (peak * peak)))
        exact32 = width >= _MIN_FLOAT32_BLOCK
        if not exact32:
            width = _PIXELS_PER_BLOCK
    upper = np.zeros((steps, steps))
    for b in range(0, npix, width):
        # (steps, width) C-contiguous is (width, steps) F-contiguous: syrk with trans=1 gives block @ block.T
        block = np.ascontiguousarray(cols[:, b: b + width], dtype=np.float32 if exact32 else np.float64)
        syrk = blas.ssyrk if exact32 else blas.dsyrk
        upper += syrk(1.0, block.T, trans=1, lower=0)
    product = np.triu(upper)
    return product + np.triu(product, 1).T


class TwoTime:
    def __init__(self, pixel_groups: list[np.ndarray], frames_total: int, frame_binning: int = 1):
        """``pixel_groups``: for each selected ROI, its positions among the pixels ``add`` receives."""
        self.groups = [np.asarray(g, dtype=np.intp) for g in pixel_groups]
        self.binning = frame_binning
        self.steps = frames_total // frame_binning  # a trailing partial bin is dropped
        columns = sum(len(g) for g in self.groups)
        self.store = np.zeros((self.steps, columns), dtype=np.float32)
        self.offsets = np.cumsum([0] + [len(g) for g in self.groups])
        self.selected = np.concatenate(self.groups) if self.groups else np.zeros(0, np.intp)
        self.frames_seen = 0
        self.integral = True  # every frame so far had integer counts (float32 block products are exact)

    def add(self, block: np.ndarray) -> None:
        """Frames (n, pixels), next in time order."""
        start = self.frames_seen
        self.frames_seen += len(block)
        stop = min(self.frames_seen, self.steps * self.binning)
        if stop <= start:
            return
        frames = block[: stop - start]
        if frames.dtype.kind not in "iub":
            frames = np.asarray(frames, dtype=np.float64)
            picked = frames[:, self.selected]
            self.integral = self.integral and bool(np.array_equal(picked, np.rint(picked)))
        # Frames of one bin may straddle two chunks: they are added in, never assigned.
        gather_add(frames, self.selected, np.arange(start, stop) // self.binning, self.store)

    def state_bytes(self) -> int:
        return self.store.nbytes

    def results(self) -> list[np.ndarray]:
        """C(t1, t2) of each selected ROI, (steps, steps) float64; NaN where a time step has no counts."""
        out = []
        for k in range(len(self.groups)):
            cols = self.store[:, self.offsets[k]: self.offsets[k + 1]]
            npix = cols.shape[1]
            product = _symmetric_product(cols, self.integral)
            mean = cols.sum(axis=1, dtype=np.float64) / max(npix, 1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out.append(product / max(npix, 1) / np.outer(mean, mean))
        return out


def diagonal_average(c2: np.ndarray, max_delay: int) -> np.ndarray:
    """Mean of C(t, t + τ) over t for τ = 0..max_delay (time steps), ignoring NaN."""
    return np.array([np.nanmean(np.diagonal(c2, offset=k)) for k in range(max_delay + 1)])
