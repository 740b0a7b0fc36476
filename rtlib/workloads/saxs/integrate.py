"""Time-averaging frames and azimuthally averaging the image into q bins.

The bins are equal-width in q between the smallest and the largest pixel q,
so every pixel falls in exactly one bin. A bin's intensity is the mean of the
time-averaged pixels in it. Its error is the standard error of that mean
from the frame-to-frame scatter of those pixels: it is right for any
detector (photon counting or integrating, corrected or not) and, unlike
the spread of pixels around the ring, is not inflated by I(q) changing
across a wide bin. A single frame has no scatter; then the spread around
the ring stands in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RadialBins:
    edges_inv_angstrom: np.ndarray  # (num_bins + 1,)
    pixel_bin: np.ndarray  # (height * width,) the bin of each pixel, C order
    pixels_per_bin: np.ndarray  # (num_bins,)

    @classmethod
    def from_q_map(cls, q_map: np.ndarray, num_bins: int) -> "RadialBins":
        q = q_map.ravel()
        q_min, q_max = float(q.min()), float(q.max())
        if q_max <= q_min:  # one pixel, or all at one q: give the bins a width so the maths below holds
            q_max = q_min + max(abs(q_min), 1.0) * 1e-9
        edges = np.linspace(q_min, q_max, num_bins + 1)
        pixel_bin = np.floor((q - q_min) * (num_bins / (q_max - q_min))).astype(np.intp)
        np.clip(pixel_bin, 0, num_bins - 1, out=pixel_bin)  # q_max itself belongs to the last bin
        return cls(edges, pixel_bin, np.bincount(pixel_bin, minlength=num_bins))

    @property
    def num_bins(self) -> int:
        return self.pixels_per_bin.size

    @property
    def centres_inv_angstrom(self) -> np.ndarray:
        return 0.5 * (self.edges_inv_angstrom[:-1] + self.edges_inv_angstrom[1:])


class FrameSum:
    """Running per-pixel sums of frames and of their squares, in float64.

    float64 holds integer counts and their squares exactly (up to 2**53), so
    for integer detectors the sums, and every result after them, do not
    depend on how the frames were chunked.
    """

    def __init__(self, height: int, width: int):
        self.total = np.zeros((height, width), dtype=np.float64)
        self.total_squares = np.zeros((height, width), dtype=np.float64)
        self.frames = 0

    def add(self, block: np.ndarray) -> None:
        # Frame by frame: a float64 copy of a whole chunk would be 4x the raw chunk in memory.
        scratch = np.empty_like(self.total)
        for frame in block:
            np.copyto(scratch, frame)
            self.total += scratch
            scratch *= scratch
            self.total_squares += scratch
        self.frames += block.shape[0]

    def mean_image(self) -> np.ndarray:
        return self.total / self.frames

    def variance_image(self) -> np.ndarray | None:
        """Each pixel's frame-to-frame variance (unbiased); None for a single frame."""
        if self.frames < 2:
            return None
        centred = self.total_squares - self.total * self.total / self.frames
        return np.maximum(centred, 0.0) / (self.frames - 1)  # max: rounding must not give a negative variance


def azimuthal_average(frame_sum: FrameSum, bins: RadialBins) -> tuple[np.ndarray, np.ndarray]:
    """(mean, standard error) per bin, counts per pixel per frame; NaN where a bin has no pixels."""
    mean_image = frame_sum.mean_image().ravel()
    n = bins.pixels_per_bin.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.bincount(bins.pixel_bin, weights=mean_image, minlength=bins.num_bins) / n, np.nan)
        variance = frame_sum.variance_image()
        if variance is not None:
            # Var(bin mean) = sum over its pixels of Var(pixel) / frames, over n².
            summed = np.bincount(bins.pixel_bin, weights=variance.ravel(), minlength=bins.num_bins)
            stderr = np.where(n > 0, np.sqrt(summed / frame_sum.frames) / n, np.nan)
        else:
            # Two passes (deviations from the bin mean), not a sum of squares: no cancellation.
            deviation = mean_image - mean[bins.pixel_bin]
            squares = np.bincount(bins.pixel_bin, weights=deviation * deviation, minlength=bins.num_bins)
            stderr = np.where(n > 1, np.sqrt(squares / (n - 1) / n), np.nan)
    return mean, stderr
