"""Peaks in the depth-resolved stack: background subtraction, local maxima, centroids, integrated intensities.

A peak is a local maximum of the background-subtracted stack over a box of
``2 * window_depth_bins + 1`` depths by ``2 * window_px + 1`` pixels square.
The background of each depth slice is its median. The noise is judged locally:
a bright spot's own counting noise lands at the depths its pixels were
unblocked (differences of two noisy images), and is small where the wire
already blocked them; so a maximum must stand ``threshold_sigma`` times
above the RMS of its own pixel at nearby depths (its own peak left out, see
``noise_levels``), and above the robust sigma of the whole stack; and its
integrated intensity must stand ``threshold_sigma`` times above the noise of
a sum over its box (the voxel noises added in quadrature), which keeps single
noise spikes out. The centroid and the integrated intensity are taken over
the same box, from the background-subtracted values (the centroid from
those clearly above the noise).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

PEAK_DTYPE = np.dtype([
    ("depth_um", "f8"), ("x_px", "f8"), ("y_px", "f8"), ("intensity", "f8"),
    ("height", "f8"), ("depth_index", "i8"), ("row", "i8"), ("col", "i8"),
])
_MAD_TO_SIGMA = 1.4826
# Pixels sampled (every n-th along each axis) to estimate slice backgrounds and the global noise.
_SAMPLE_STRIDE = 4
# The local noise is judged over this many peak half-heights in depth on either side.
_NOISE_REACH_FACTOR = 5
# Voxels below this many overall sigmas are left out of a centroid.
_CENTROID_FLOOR_SIGMA = 3.0


def subtract_background(stack: np.ndarray) -> np.ndarray:
    """float32 stack minus each depth slice's median."""
    sample = stack[:, ::_SAMPLE_STRIDE, ::_SAMPLE_STRIDE]
    background = np.median(sample.reshape(stack.shape[0], -1), axis=1).astype(np.float32)
    return stack.astype(np.float32) - background[:, None, None]


def noise_levels(signal: np.ndarray, core_bins: int, reach_bins: int) -> tuple[np.ndarray, float]:
    """(local noise sigma (depths, y, x), robust sigma of the whole stack).

    The local noise of a voxel is the RMS of its pixel's values within
    ``reach_bins`` depths of it, leaving out the ``core_bins`` nearest (so a
    peak does not hide itself in its own noise estimate).
    """
    squares = np.square(signal, dtype=np.float32)
    wide, core = 2 * reach_bins + 1, 2 * core_bins + 1
    total = ndimage.uniform_filter1d(squares, wide, axis=0, mode="nearest") * np.float32(wide)
    inner = ndimage.uniform_filter1d(squares, core, axis=0, mode="nearest") * np.float32(core)
    local = np.sqrt(np.clip(total - inner, 0.0, None) / np.float32(wide - core))
    sample = signal[:, ::_SAMPLE_STRIDE, ::_SAMPLE_STRIDE].ravel()
    overall = _MAD_TO_SIGMA * float(np.median(np.abs(sample - np.median(sample))))
    if overall == 0.0:
        overall = float(sample.std())
    return local, overall


def find_peaks(
    stack: np.ndarray,
    depth_um: np.ndarray,
    *,
    threshold_sigma: float = 6.0,
    min_intensity: float = 0.0,
    window_px: int = 4,
    window_depth_bins: int = 3,
    max_peaks: int = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """(peaks, profiles): a PEAK_DTYPE table, brightest first, and each peak's intensity against depth.

    ``stack`` is (depths, y, x) and ``depth_um`` the depth of each slice. A
    profile is the background-subtracted intensity summed over the peak's
    pixel box at every depth.
    """
    signal = subtract_background(stack)
    local, overall = noise_levels(signal, window_depth_bins, _NOISE_REACH_FACTOR * window_depth_bins)
    limit = threshold_sigma * np.maximum(local, overall)
    del local
    limit_squared = np.square(limit)
    size = (2 * window_depth_bins + 1, 2 * window_px + 1, 2 * window_px + 1)
    is_max = (ndimage.maximum_filter(signal, size=size, mode="constant", cval=-np.inf) == signal) & (signal > limit)
    candidates = np.argwhere(is_max)
    heights = signal[tuple(candidates.T)]
    order = np.argsort(-heights, kind="stable")
    depths, height, width = signal.shape
    rows: list[tuple] = []
    profiles: list[np.ndarray] = []
    taken = np.zeros(signal.shape, dtype=bool)  # a plateau of equal maxima yields one peak
    for i in order:
        if len(rows) >= max_peaks:
            break
        k, r, c = (int(v) for v in candidates[i])
        if taken[k, r, c]:
            continue
        box = (slice(max(0, k - window_depth_bins), min(depths, k + window_depth_bins + 1)),
               slice(max(0, r - window_px), min(height, r + window_px + 1)),
               slice(max(0, c - window_px), min(width, c + window_px + 1)))
        taken[box] = True
        values = signal[box].astype(np.float64)
        intensity = float(values.sum())
        # The sum must be significant too: threshold_sigma times the noise of a sum over the box.
        if intensity < max(min_intensity, float(np.sqrt(limit_squared[box].sum(dtype=np.float64)))):
            continue
        # Only voxels clearly above the noise weigh in: clipped noise alone would pull the centroid to the box centre.
        weights = np.where(values > _CENTROID_FLOOR_SIGMA * overall, values, 0.0)
        total = weights.sum()
        kk, rr, cc = (np.arange(s.start, s.stop, dtype=np.float64) for s in box)
        k_c = float((weights.sum(axis=(1, 2)) * kk).sum() / total)
        r_c = float((weights.sum(axis=(0, 2)) * rr).sum() / total)
        c_c = float((weights.sum(axis=(0, 1)) * cc).sum() / total)
        depth_c = float(np.interp(k_c, np.arange(depths), depth_um))
        rows.append((depth_c, c_c, r_c, intensity, float(signal[k, r, c]), k, r, c))
        profiles.append(signal[:, box[1], box[2]].sum(axis=(1, 2), dtype=np.float64))
    peaks = np.array(rows, dtype=PEAK_DTYPE)
    profile_array = np.array(profiles, dtype=np.float64).reshape(len(profiles), depths)
    return peaks, profile_array
