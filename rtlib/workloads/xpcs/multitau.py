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
averaged over the ROI's pixels, with the standard error of that mean as the
error bar, where IP and IF are either

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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kernels import accumulate


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


class _Level:
    """One level's state: its last frames, its first frames, the per-pixel total and G2."""

    def __init__(self, index: int, delays_per_level: int, pixels: int):
        self.index = index
        self.delays = level_delays(index, delays_per_level)
        self.keep = delays_per_level - 1  # the longest delay: how many past frames a new one pairs with
        self.history = np.zeros((0, pixels))
        self.first = np.zeros((0, pixels))
        self.total = np.zeros(pixels)
        self.g2_sum = np.zeros((len(self.delays), pixels))
        self.frames = 0
        self.unpaired: np.ndarray | None = None  # a frame waiting for its partner in the next level

    def add(self, block: np.ndarray) -> None:
        count = len(block)
        accumulate(self.history, block, self.delays, self.g2_sum)  # each new frame with its partners d frames back
        if self.frames < self.keep + 1:
            self.first = np.concatenate([self.first, block[: self.keep + 1 - self.frames]])
        self.total += block.sum(axis=0, dtype=np.float64)
        self.frames += count
        if count >= self.keep:  # the last `keep` frames pair with the next block; only they are copied
            self.history = block[count - self.keep:].astype(np.float64)  # a copy, and float64 whatever came in
        else:
            self.history = np.concatenate([self.history, block])[-self.keep:]

    def binned(self, block: np.ndarray) -> np.ndarray | None:
        """Frames of the next level made from this level's new frames: sums of consecutive pairs, in float64.

        Level-0 frames may be raw counts (uint16): each pair is added in float64 (exact, cannot wrap) straight
        into the half-length result, so the full-length block is never copied."""
        lead = 1 if self.unpaired is not None and len(block) else 0  # the waiting frame pairs with block[0]
        rest = block[lead:]
        pairs = len(rest) // 2
        out = np.empty((lead + pairs,) + block.shape[1:])
        if lead:
            np.add(self.unpaired, block[0], out=out[0], dtype=np.float64)
        np.add(rest[0: 2 * pairs: 2], rest[1: 2 * pairs: 2], out=out[lead:], dtype=np.float64)
        if len(rest) % 2:
            self.unpaired = rest[-1].astype(np.float64)
        elif lead:
            self.unpaired = None
        return out if len(out) else None


@dataclass(frozen=True)
class MultiTauResult:
    delay_frames: np.ndarray  # (delays,) in original frames
    g2: np.ndarray  # (delays, rois)
    g2_err: np.ndarray  # (delays, rois)
    pairs: np.ndarray  # (delays,) frame pairs averaged at each delay, at its level


class MultiTau:
    """Feed frames of the ROI pixels in order with ``add``; read ``result`` at any point after."""

    def __init__(self, roi_of_pixel: np.ndarray, num_rois: int, frames_total: int, delays_per_level: int = 16,
                 max_levels: int | None = None):
        if delays_per_level < 2 or delays_per_level % 2:
            raise ValueError(f"delays_per_level must be even and >= 2, got {delays_per_level}")
        self.roi_of_pixel = np.asarray(roi_of_pixel, dtype=np.intp)
        self.num_rois = num_rois
        self.pixels = len(self.roi_of_pixel)
        self.delays_per_level = delays_per_level
        count = levels_for(frames_total, delays_per_level, max_levels)
        self.levels = [_Level(i, delays_per_level, self.pixels) for i in range(count)]

    def add(self, block: np.ndarray) -> None:
        """Frames (n, pixels) of the ROI pixels, next in time order.

        Integer counts go to level 0 as they are (the kernel reads them into float64 itself, exactly): no
        float64 copy of the whole block is made for the finest level, the one that costs most."""
        current: np.ndarray | None = np.asarray(block)
        if current.dtype.kind not in "uif":
            current = current.astype(np.float64)
        for i, level in enumerate(self.levels):
            if current is None:
                break
            level.add(current)
            current = level.binned(current) if i + 1 < len(self.levels) else None

    def state_bytes(self) -> int:
        return sum(lv.history.nbytes + lv.first.nbytes + lv.total.nbytes + lv.g2_sum.nbytes for lv in self.levels)

    def result(self, normalization: str = "pixel", smoothing_group: np.ndarray | None = None) -> MultiTauResult:
        """g2 per ROI. ``static`` needs ``smoothing_group``: a group index per pixel (its static ROI)."""
        if normalization not in ("pixel", "roi", "static"):
            raise ValueError(f"normalization is 'pixel', 'roi' or 'static', got {normalization!r}")
        if normalization == "static":
            if smoothing_group is None:
                raise ValueError("static normalisation needs the static ROI of every pixel")
            group = np.asarray(smoothing_group, dtype=np.intp)
            members = np.bincount(group).astype(np.float64)

            def smooth(values: np.ndarray) -> np.ndarray:
                with np.errstate(invalid="ignore", divide="ignore"):
                    return (np.bincount(group, weights=values, minlength=len(members)) / members)[group]
        pixels_per_roi = np.bincount(self.roi_of_pixel, minlength=self.num_rois).astype(np.float64)
        delays, g2_rows, err_rows, pairs_list = [], [], [], []
        for level in self.levels:
            n = level.frames
            for i, d in enumerate(level.delays):
                pairs = n - d
                if pairs < 1:
                    continue
                future = level.total - level.first[:d].sum(axis=0)  # frames d..n-1
                past = level.total - level.history[len(level.history) - d:].sum(axis=0)  # frames 0..n-d-1
                g2_sum = level.g2_sum[i]
                if normalization == "static":
                    past, future = smooth(past), smooth(future)
                with np.errstate(invalid="ignore", divide="ignore"):
                    product = past * future
                    valid = product > 0
                    per_pixel = np.where(valid, pairs * g2_sum / np.where(valid, product, 1.0), 0.0)
                    counted = np.bincount(self.roi_of_pixel, weights=valid, minlength=self.num_rois)
                    mean = np.bincount(self.roi_of_pixel, weights=per_pixel, minlength=self.num_rois) / counted
                    spread = per_pixel - mean[self.roi_of_pixel]
                    squares = np.bincount(self.roi_of_pixel, weights=np.where(valid, spread * spread, 0.0),
                                          minlength=self.num_rois)
                    err = np.sqrt(squares / np.maximum(counted - 1, 1) / counted)
                    if normalization == "roi":
                        sums = [np.bincount(self.roi_of_pixel, weights=w, minlength=self.num_rois)
                                for w in (g2_sum, past, future)]
                        mean = pixels_per_roi * pairs * sums[0] / (sums[1] * sums[2])
                err = np.where(counted > 1, err, np.nan)
                delays.append(d * 2**level.index)
                g2_rows.append(mean)
                err_rows.append(err)
                pairs_list.append(pairs)
        return MultiTauResult(
            delay_frames=np.asarray(delays, dtype=np.int64),
            g2=np.array(g2_rows).reshape(len(delays), self.num_rois),
            g2_err=np.array(err_rows).reshape(len(delays), self.num_rois),
            pairs=np.asarray(pairs_list, dtype=np.int64),
        )
