"""Two-time correlation C(t1, t2) per selected ROI, with BLAS matrix products.

For an ROI with pixels p and (binned) frames t::

    C(t1, t2) = <I_p(t1) I_p(t2)>_p / (<I_p(t1)>_p <I_p(t2)>_p)

(Sutton's normalised intensity covariance plus one; its average along a
diagonal t2 - t1 = τ is g2(τ) with the ROI normalisation.) Every (t1, t2)
needs every frame, so the ROI pixels are kept, binned, as float32 (exact for
counts below 2^24) — memory is frames × selected pixels, never the whole
detector — and the product is taken in float64 blocks of pixels.
"""

from __future__ import annotations

import numpy as np

# Pixels per float64 block of the product: bounds the temporary copy at frames × this × 8 bytes.
_PIXELS_PER_BLOCK = 4096


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

    def add(self, block: np.ndarray) -> None:
        """Frames (n, pixels), next in time order."""
        start = self.frames_seen
        self.frames_seen += len(block)
        stop = min(self.frames_seen, self.steps * self.binning)
        if stop <= start:
            return
        picked = np.asarray(block[: stop - start][:, self.selected], dtype=np.float32)
        steps = np.arange(start, stop) // self.binning
        if self.binning == 1:
            self.store[start:stop] = picked
            return
        # Frames of one bin may straddle two chunks: add them in, do not assign.
        firsts = np.r_[0, np.flatnonzero(np.diff(steps)) + 1]
        self.store[steps[firsts]] += np.add.reduceat(picked, firsts, axis=0)

    def state_bytes(self) -> int:
        return self.store.nbytes

    def results(self) -> list[np.ndarray]:
        """C(t1, t2) of each selected ROI, (steps, steps) float64; NaN where a time step has no counts."""
        out = []
        for k in range(len(self.groups)):
            cols = self.store[:, self.offsets[k]: self.offsets[k + 1]]
            npix = cols.shape[1]
            product = np.zeros((self.steps, self.steps))
            for b in range(0, npix, _PIXELS_PER_BLOCK):
                block = cols[:, b: b + _PIXELS_PER_BLOCK].astype(np.float64)
                product += block @ block.T
            mean = cols.sum(axis=1, dtype=np.float64) / max(npix, 1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out.append(product / max(npix, 1) / np.outer(mean, mean))
        return out


def diagonal_average(c2: np.ndarray, max_delay: int) -> np.ndarray:
    """Mean of C(t, t + τ) over t for τ = 0..max_delay (time steps), ignoring NaN."""
    return np.array([np.nanmean(np.diagonal(c2, offset=k)) for k in range(max_delay + 1)])
