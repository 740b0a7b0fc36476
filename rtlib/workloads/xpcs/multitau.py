"""Multi-tau intensity autocorrelation g2, streamed in chunks, per pixel and vectorised over all ROIs.

The delay grid is the standard multi-tau one (Lumma et al., Rev. Sci.
Instrum. 71, 3274 (2000)) with ``n = delays_per_level`` buffers: level 0
correlates frames at delays 1..n-1; level l >= 1 correlates frames binned by
2^l (pairs of level l-1 frames, added) at delays n/2..n-1 of its own frames,
i.e. (n/2..n-1)·2^l original frames. A delay is reported when its level has
at least one pair of frames that far apart.

For each pixel p, level delay d and N frames at that level, three sums
over the same N - d pairs give the symmetric normalisation::

    G2 = Σ_t I(t) I(t+d)     IP = Σ_t I(t)     IF = Σ_t I(t+d)     (t = 0 .. N-d-1)

Only G2 is accumulated per delay; IP and IF are the total minus the last or
first d frames, which the level keeps. Then g2 = (N-d)·G2/(IP·IF) per pixel,
averaged over the ROI's pixels, where IP and IF are either

* ``pixel``: the pixel's own sums. Exact for long records, but each pixel's
  mean over a record only T/τ correlation times long is itself correlated
  with G2: g2 is biased low by O(τ/T), τ by tens of percent at τ = T/5;
* ``static`` (the default, APS's symmetric smoothing): the averages of IP
  and IF over the pixel's static ROI, a thin q ring of many pixels. The
  bias goes, and intensity varying across a wide dynamic ROI still cancels;
* ``roi`` (scikit-beam's ``multi_tau_auto_corr``): the ratio of the ROI sums
  of G2, IP and IF instead of the mean of per-pixel ratios.

Binning adds rather than averages frames: integer counts stay exact, and g2
is a ratio, so the scale cancels.

Error bars are jackknife errors: each ROI's pixels are cut into 16
contiguous groups (neighbouring pixels see the same speckle, so they go
together) and g2 is recomputed with each group left out, normalisation
included. The left-out curves are kept (``g2_jackknife``) so that the fit can
take the jackknife spread of τ too. With one pixel per group this is the
standard error of the mean of the per-pixel g2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .multitau_update import TILE, copy_with_peak, level_counts, peak_count, update
from .normalize import estimate, jackknife_error, jackknife_groups

BATCH_FRAMES = 512  # frames correlated per pass over the state (the state of every level is read and written once a pass)


def level_delays(level: int, delays_per_level: int) -> np.ndarray:
    """Delays of one level, in frames of that level."""
    first = 1 if level == 0 else delays_per_level // 2
    return np.arange(first, delays_per_level)


def levels_for(frames: int, delays_per_level: int, max_levels: int | None = None) -> int:
    """Levels that have at least one pair of frames at their shortest delay."""
    levels = 1
    while frames // 2**levels > delays_per_level // 2 and (max_levels is None or levels < max_levels):
        levels += 1
    return levels if max_levels is None else min(levels, max_levels)


@dataclass(frozen=True)
class Level:
    index: int
    delays: np.ndarray  # in frames of this level (2^index original frames each)


@dataclass(frozen=True)
class MultiTauResult:
    delay_frames: np.ndarray  # (delays,) in original frames
    g2: np.ndarray  # (delays, rois)
    g2_err: np.ndarray  # (delays, rois)
    pairs: np.ndarray  # (delays,) frame pairs averaged at each delay, at its level
    g2_jackknife: np.ndarray  # (groups, delays, rois): g2 with each jackknife group of pixels left out


class MultiTau:
    """Feed frames of the ROI pixels in order with ``add``; read ``result`` at any point after.

    Frames are gathered into batches of ``batch_frames`` (in their own type: raw counts are not widened) and
    each batch goes through every level in one pass (``multitau_update``)."""

    def __init__(self, roi_of_pixel: np.ndarray, num_rois: int, frames_total: int, delays_per_level: int = 16,
                 max_levels: int | None = None, batch_frames: int = BATCH_FRAMES):
        if delays_per_level < 2 or delays_per_level % 2:
            raise ValueError(f"delays_per_level must be even and >= 2, got {delays_per_level}")
        if batch_frames < 1:
            raise ValueError(f"batch_frames must be >= 1, got {batch_frames}")
        self.roi_of_pixel = np.asarray(roi_of_pixel, dtype=np.intp)
        self.num_rois = num_rois
        self.pixels = len(self.roi_of_pixel)
        self.delays_per_level = delays_per_level
        count = levels_for(frames_total, delays_per_level, max_levels)
        self.levels = [Level(i, level_delays(i, delays_per_level)) for i in range(count)]
        keep = delays_per_level - 1
        padded = -(-self.pixels // TILE) * TILE
        self._hist = np.zeros((count, keep, padded))
        self._first = np.zeros((count, keep, padded))
        self._g2 = np.zeros((count, keep, padded))
        self._total = np.zeros((count, padded))
        self._unpaired = np.zeros((count, padded))
        self._frames = np.zeros(count, np.int64)  # frames each level has had
        self._lead = np.zeros(count, np.int64)  # 1 where a level has a frame waiting for its partner
        self.batch_frames = max(1, min(batch_frames, frames_total))
        self._batch: np.ndarray | None = None
        self._batch_peak = 0.0  # the largest |count| copied into the batch so far
        self._filled = 0
        self._result_bytes = 0  # the cell sums of the last result
        self._peak = 0.0  # the largest |count| so far: bounds every value the levels hold
        self._jackknife_part: np.ndarray | None = None

    def add(self, block: np.ndarray) -> None:
        """Frames (n, pixels) of the ROI pixels, next in time order (any integer or float type)."""
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[1] != self.pixels:
            raise ValueError(f"frames must be (n, {self.pixels}) for this correlator's pixels, got {block.shape}")
        if block.dtype.kind not in "uif":
            block = block.astype(np.float64)
        if self._batch is not None and self._batch.dtype != block.dtype:
            self._correlate_batch()
            self._batch = None
        done = 0
        while done < len(block):
            if self._filled == 0 and len(block) - done >= self.batch_frames:
                rest = block[done:]  # a whole batch or more at once: no copy
                self._correlate(rest, peak_count(rest))
                return
            if self._batch is None:
                self._batch = np.empty((self.batch_frames, self.pixels), block.dtype)
                self._batch_peak = 0.0
            take = min(self.batch_frames - self._filled, len(block) - done)
            peak = copy_with_peak(block[done: done + take], self._batch, self._filled)
            self._batch_peak = max(self._batch_peak, peak)
            self._filled += take
            done += take
            if self._filled == self.batch_frames:
                self._correlate_batch()

    def _correlate_batch(self) -> None:
        if self._filled:
            filled, self._filled = self._filled, 0
            self._correlate(self._batch[:filled], self._batch_peak)
            self._batch_peak = 0.0

    def _correlate(self, frames: np.ndarray, peak: float) -> None:
        """``peak``: the largest |count| in ``frames``."""
        counts, lead_after = level_counts(len(frames), self._lead)
        integral = frames.dtype.kind in "iu" or bool(np.array_equal(frames, np.rint(frames)))
        self._peak = max(self._peak, peak)
        update(frames, self._hist, self._first, self._total, self._g2, self._unpaired, counts, self._frames,
               self._lead, self.delays_per_level, self._peak, integral)
        self._frames += counts
        self._lead = lead_after

    def state_bytes(self) -> int:
        """The correlator's memory: its state, the batch buffer, and the sums its last ``result`` formed."""
        state = (self._hist, self._first, self._g2, self._total, self._unpaired)
        batch = self.batch_frames * self.pixels * (self._batch.dtype.itemsize if self._batch is not None else 8)
        return sum(a.nbytes for a in state) + batch + self._result_bytes

    def result(self, normalization: str = "pixel", smoothing_group: np.ndarray | None = None) -> MultiTauResult:
        """g2 per ROI. ``static`` needs ``smoothing_group``: a group index per pixel (its static ROI)."""
        if normalization not in ("pixel", "roi", "static"):
            raise ValueError(f"normalization is 'pixel', 'roi' or 'static', got {normalization!r}")
        if normalization == "static" and smoothing_group is None:
            raise ValueError("static normalisation needs the static ROI of every pixel")
        self._correlate_batch()
        keep = self.delays_per_level - 1
        row_of = np.full((len(self.levels), keep), -1, np.int64)
        delays, pairs = [], []
        for level in self.levels:
            n = int(self._frames[level.index])
            for d in level.delays:
                if n - d >= 1:
                    row_of[level.index, d - 1] = len(delays)
                    delays.append(d * 2**level.index)
                    pairs.append(n - d)
        state = (self._g2, self._first, self._hist, self._total, self._frames)
        if self._jackknife_part is None:  # the pixels' jackknife groups: fixed by the ROIs, formed once
            self._jackknife_part = jackknife_groups(self.roi_of_pixel, self.num_rois)
        g2, loo, sums_bytes = estimate(normalization, state, row_of, len(delays), self.roi_of_pixel, self.num_rois,
                                       smoothing_group, self._jackknife_part)
        self._result_bytes = sums_bytes + 2 * loo.nbytes
        return MultiTauResult(
            delay_frames=np.asarray(delays, dtype=np.int64),
            g2=g2.reshape(len(delays), self.num_rois),
            g2_err=jackknife_error(loo).reshape(len(delays), self.num_rois),
            pairs=np.asarray(pairs, dtype=np.int64),
            g2_jackknife=loo,
        )
