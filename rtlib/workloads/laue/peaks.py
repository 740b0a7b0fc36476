"""Peaks in the depth-resolved stack: background subtraction, local maxima, centroids, integrated intensities.

A peak is a local maximum of the background-subtracted stack over
``2 * separation + 1`` depths by ``2 * window_px + 1`` pixels square, where
``separation`` is the depth resolution in bins (``depth_resolution_bins``,
at least one): so two maxima along depth more than the depth resolution
apart are two peaks, in the same pixel or in neighbouring ones, where the
depth profile of the weaker one's 3 x 3 pixel neighbourhood dips between
them to below half its value (a source spreads over the depth one wire step
sweeps, and noise can put two maxima on it: ``_separate_in_depth``). This
is the case depth-resolved Laue exists for: two grains on the beam whose
spots fall on the same pixels.

The background of each depth slice is its median. The noise is judged
locally: a bright spot's own counting noise lands at the depths its pixels
were unblocked (differences of two noisy images), and is small where the
wire already blocked them; so a maximum must stand ``threshold_sigma`` times
above the RMS of its own pixel at nearby depths, and above the robust sigma
of the whole stack. The nearby depths are taken on each side of the maximum
separately, its own peak left out, and the quieter side counts: another
source in the same pixel a few bins away lies on one side only, and must not
pass for noise (``noise_levels``). The integrated intensity must stand
``threshold_sigma`` times above the noise of a sum over its box (the voxel
noises added in quadrature), which keeps single noise spikes out.

The centroid and the integrated intensity are taken over the peak's box,
``2 * window_depth_bins + 1`` depths by ``2 * window_px + 1`` pixels, from
the background-subtracted values (the centroid from those clearly above the
noise); where another peak's box overlaps it further than the depth
resolution away, the depth extent stops half way to it, so that neither
peak takes the other's counts.
"""

from __future__ import annotations

import math

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
# Two maxima near each other in (row, col) are separate peaks only if the depth profile between them falls below
# this fraction of the weaker one (over its 3 x 3 pixel neighbourhood).
_DIP_FRACTION = 0.5
# The local noise is computed this many bytes of float64 working arrays at a time.
_NOISE_BLOCK_BYTES = 64 * 2**20


def subtract_background(stack: np.ndarray) -> np.ndarray:
    """float32 stack minus each depth slice's median."""
    sample = stack[:, ::_SAMPLE_STRIDE, ::_SAMPLE_STRIDE]
    background = np.median(sample.reshape(stack.shape[0], -1), axis=1).astype(np.float32)
    return stack.astype(np.float32) - background[:, None, None]


def noise_levels(signal: np.ndarray, core_bins: int, reach_bins: int) -> tuple[np.ndarray, float]:
    """(local noise sigma (depths, y, x) float32, robust sigma of the whole stack).

    The local noise of a voxel is the RMS of its pixel's values at the
    depths ``core_bins + 1`` to ``reach_bins`` away from it, on the quieter
    of its two sides (a side counts when it has at least half its depths
    inside the stack; with neither, both together). Leaving out the
    ``core_bins`` nearest keeps a peak out of its own noise estimate; one
    side alone keeps a second source a few bins away out of it.
    """
    depths, height, width = signal.shape
    local = np.empty(signal.shape, dtype=np.float32)
    k = np.arange(depths)
    # cumulative-sum indices of each side's window [lo, hi)
    left_lo, left_hi = np.clip(k - reach_bins, 0, depths), np.clip(k - core_bins, 0, depths)
    right_lo, right_hi = np.clip(k + core_bins + 1, 0, depths), np.clip(k + reach_bins + 1, 0, depths)
    n_left, n_right = (left_hi - left_lo).astype(np.float64), (right_hi - right_lo).astype(np.float64)
    enough = max(1, (reach_bins - core_bins) // 2)
    shape = (depths, 1, 1)
    rows = max(1, _NOISE_BLOCK_BYTES // (8 * 4 * (depths + 1) * width))
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        cumulative = np.zeros((depths + 1, r1 - r0, width), dtype=np.float64)
        np.cumsum(np.square(signal[:, r0:r1], dtype=np.float64), axis=0, out=cumulative[1:])
        left = cumulative[left_hi] - cumulative[left_lo]
        right = cumulative[right_hi] - cumulative[right_lo]
        with np.errstate(invalid="ignore", divide="ignore"):
            both = np.sqrt(np.clip(left + right, 0.0, None) / np.maximum(n_left + n_right, 1.0).reshape(shape))
            left = np.where((n_left >= enough).reshape(shape), np.sqrt(np.clip(left, 0.0, None) / n_left.reshape(shape)), np.inf)
            right = np.where((n_right >= enough).reshape(shape), np.sqrt(np.clip(right, 0.0, None) / n_right.reshape(shape)), np.inf)
        quieter = np.minimum(left, right)
        local[:, r0:r1] = np.where(np.isfinite(quieter), quieter, both)
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
    depth_resolution_bins: float = 1.0,
    max_peaks: int = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """(peaks, profiles): a PEAK_DTYPE table, brightest first, and each peak's intensity against depth.

    ``stack`` is (depths, y, x) and ``depth_um`` the depth of each slice.
    Maxima more than ``depth_resolution_bins`` apart in depth are separate
    peaks. A profile is the background-subtracted intensity summed over the
    peak's pixel box at every depth.
    """
    signal = subtract_background(stack)
    local, overall = noise_levels(signal, window_depth_bins, _NOISE_REACH_FACTOR * window_depth_bins)
    limit = threshold_sigma * np.maximum(local, np.float32(overall))
    del local
    limit_squared = np.square(limit)
    separation = max(1, int(math.floor(depth_resolution_bins + 1e-9)))
    size = (2 * separation + 1, 2 * window_px + 1, 2 * window_px + 1)
    is_max = (ndimage.maximum_filter(signal, size=size, mode="constant", cval=-np.inf) == signal) & (signal > limit)
    candidates = np.argwhere(is_max)
    del is_max
    heights = signal[tuple(candidates.T)]
    order = np.argsort(-heights, kind="stable")
    candidates = candidates[order]
    depths, height, width = signal.shape
    # A plateau of equal maxima yields one candidate: the first, the others within its maximum window dropped.
    kept = np.ones(len(candidates), dtype=bool)
    for i in range(len(candidates)):
        if kept[i]:
            near = np.all(np.abs(candidates[i + 1:] - candidates[i]) <= (separation, window_px, window_px), axis=1)
            kept[i + 1:] &= ~near
    candidates = _separate_in_depth(signal, candidates[kept], separation, window_px)
    # First which maxima are significant (their boxes cut against the brighter peaks already accepted), then
    # every accepted peak's box cut against all the others, so that no peak keeps another's counts.
    accepted: list[tuple[int, int, int]] = []
    for k, r, c in candidates.tolist():
        if len(accepted) >= max_peaks:
            break
        box = _box(accepted, k, r, c, window_depth_bins, window_px, separation, signal.shape)
        intensity = float(signal[box].sum(dtype=np.float64))
        # The sum must be significant too: threshold_sigma times the noise of a sum over the box.
        if intensity >= max(min_intensity, float(np.sqrt(limit_squared[box].sum(dtype=np.float64)))):
            accepted.append((k, r, c))
    rows: list[tuple] = []
    profiles: list[np.ndarray] = []
    for k, r, c in accepted:
        box = _box(accepted, k, r, c, window_depth_bins, window_px, separation, signal.shape)
        values = signal[box].astype(np.float64)
        intensity = float(values.sum())
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


def _separate_in_depth(signal: np.ndarray, candidates: np.ndarray, separation: int, window_px: int) -> np.ndarray:
    """The candidates (brightest first) that are peaks of their own: a maximum near a brighter one in (row, col)
    and further than ``separation`` from it in depth counts only where the depth profile of its pixel
    neighbourhood dips between the two to below ``_DIP_FRACTION`` of its own value; otherwise it is the
    brighter one's noisy flank (a source spreads over the depth one wire step sweeps)."""
    depths, height, width = signal.shape
    kept: list[int] = []
    for i, (k, r, c) in enumerate(candidates.tolist()):
        brighter = candidates[kept] if kept else np.empty((0, 3), dtype=candidates.dtype)
        near = brighter[np.all(np.abs(brighter[:, 1:] - (r, c)) <= window_px, axis=1)]
        if near.size:
            profile = signal[:, max(0, r - 1):r + 2, max(0, c - 1):c + 2].sum(axis=(1, 2), dtype=np.float64)
            own = profile[k]
            for other in near[:, 0].tolist():
                low, high = sorted((k, other))
                if high - low > 1 and profile[low + 1:high].min() >= _DIP_FRACTION * own:
                    break
            else:
                kept.append(i)
            continue
        kept.append(i)
    return candidates[kept]


def _box(peaks: list[tuple[int, int, int]], k: int, r: int, c: int, half_depth: int, window_px: int, separation: int,
         shape: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    """A peak's box: ``half_depth`` either side of ``k`` and ``window_px`` of ``(r, c)``; in depth it stops short
    of half way to any of the other ``peaks`` more than ``separation`` away in depth whose pixel box overlaps."""
    depths, height, width = shape
    k0, k1 = max(0, k - half_depth), min(depths, k + half_depth + 1)
    if peaks:
        others = np.array(peaks)
        gap = others[np.all(np.abs(others[:, 1:] - (r, c)) <= 2 * window_px, axis=1), 0] - k
        deeper, shallower = gap[gap > separation], -gap[gap < -separation]
        if deeper.size:
            k1 = min(k1, k + (int(deeper.min()) - 1) // 2 + 1)
        if shallower.size:
            k0 = max(k0, k - (int(shallower.min()) - 1) // 2)
    return (slice(k0, k1), slice(max(0, r - window_px), min(height, r + window_px + 1)),
            slice(max(0, c - window_px), min(width, c + window_px + 1)))
