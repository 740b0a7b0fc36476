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

import warnings
from dataclasses import dataclass

import numpy as np

from .multitau_update import TILE, level_counts, update

JACKKNIFE_GROUPS = 16  # pixel groups each ROI is cut into for the error bars (leave one out)
BATCH_FRAMES = 256  # frames correlated per pass over the state (the state of every level is read and written once a pass)


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
        self._filled = 0

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
                self._correlate(block[done:])  # a whole batch or more at once: no copy
                return
            if self._batch is None:
                self._batch = np.empty((self.batch_frames, self.pixels), block.dtype)
            take = min(self.batch_frames - self._filled, len(block) - done)
            self._batch[self._filled: self._filled + take] = block[done: done + take]
            self._filled += take
            done += take
            if self._filled == self.batch_frames:
                self._correlate_batch()

    def _correlate_batch(self) -> None:
        if self._filled:
            filled, self._filled = self._filled, 0
            self._correlate(self._batch[:filled])

    def _correlate(self, frames: np.ndarray) -> None:
        counts, lead_after = level_counts(len(frames), self._lead)
        integral = frames.dtype.kind in "iu" or bool(np.array_equal(frames, np.rint(frames)))
        update(frames, self._hist, self._first, self._total, self._g2, self._unpaired, counts, self._frames,
               self._lead, self.delays_per_level, integral)
        self._frames += counts
        self._lead = lead_after

    def state_bytes(self) -> int:
        state = (self._hist, self._first, self._g2, self._total, self._unpaired)
        batch = self.batch_frames * self.pixels * (self._batch.dtype.itemsize if self._batch is not None else 8)
        return sum(a.nbytes for a in state) + batch

    def result(self, normalization: str = "pixel", smoothing_group: np.ndarray | None = None) -> MultiTauResult:
        """g2 per ROI. ``static`` needs ``smoothing_group``: a group index per pixel (its static ROI).

        Every estimate is a function of sums over cells (ROI, jackknife group[, smoothing group]), so the
        leave-one-group-out curves cost no more than the full one."""
        if normalization not in ("pixel", "roi", "static"):
            raise ValueError(f"normalization is 'pixel', 'roi' or 'static', got {normalization!r}")
        if normalization == "static" and smoothing_group is None:
            raise ValueError("static normalisation needs the static ROI of every pixel")
        self._correlate_batch()
        estimate = _Estimator(self.roi_of_pixel, self.num_rois, normalization, smoothing_group)
        pixels = self.pixels
        delays, g2_rows, err_rows, loo_rows, pairs_list = [], [], [], [], []
        for level in self.levels:
            n = int(self._frames[level.index])
            total = self._total[level.index, :pixels]
            for d in level.delays:
                pairs = n - d
                if pairs < 1:
                    continue
                future = total - self._first[level.index, :d, :pixels].sum(axis=0)  # frames d..n-1
                past = total - self._hist[level.index, self.delays_per_level - 1 - d:, :pixels].sum(axis=0)  # frames 0..n-d-1
                g2, loo = estimate(pairs * self._g2[level.index, d - 1, :pixels], past, future)
                delays.append(d * 2**level.index)
                g2_rows.append(g2)
                err_rows.append(_jackknife_error(loo))
                loo_rows.append(loo)
                pairs_list.append(pairs)
        count = len(delays)
        return MultiTauResult(
            delay_frames=np.asarray(delays, dtype=np.int64),
            g2=np.array(g2_rows).reshape(count, self.num_rois),
            g2_err=np.array(err_rows).reshape(count, self.num_rois),
            pairs=np.asarray(pairs_list, dtype=np.int64),
            g2_jackknife=np.array(loo_rows).reshape(count, JACKKNIFE_GROUPS, self.num_rois).transpose(1, 0, 2),
        )


def jackknife_groups(roi_of_pixel: np.ndarray, num_rois: int, groups: int = JACKKNIFE_GROUPS) -> np.ndarray:
    """Group 0..groups-1 of every pixel: each ROI's pixels, in the order given (raster order), cut into equal
    contiguous runs, so that neighbouring pixels (one speckle) fall in the same group."""
    roi = np.asarray(roi_of_pixel, dtype=np.intp)
    order = np.argsort(roi, kind="stable")
    sizes = np.bincount(roi, minlength=num_rois)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty(len(roi), np.intp)
    rank[order] = np.arange(len(roi)) - starts[roi[order]]
    return (rank * groups) // np.maximum(sizes[roi], 1)


def _jackknife_error(loo: np.ndarray) -> np.ndarray:
    """Standard error from leave-one-group-out estimates (groups, rois); NaN rows are empty groups."""
    used = np.isfinite(loo).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a ROI with every group empty: mean of nothing
        mean = np.nanmean(loo, axis=0)
        spread = np.nansum((loo - mean) ** 2, axis=0)
        err = np.sqrt((used - 1) / np.maximum(used, 1) * spread)
    return np.where(used > 1, err, np.nan)


class _Estimator:
    """g2 per ROI, and with each jackknife group left out, from one delay's per-pixel sums.

    ``numerator`` is (pairs)·G2 per pixel; ``past`` and ``future`` are IP and IF."""

    def __init__(self, roi_of_pixel: np.ndarray, num_rois: int, normalization: str, smoothing_group):
        self.normalization = normalization
        self.rois = num_rois
        self.k = JACKKNIFE_GROUPS
        part = jackknife_groups(roi_of_pixel, num_rois)
        self.cell = roi_of_pixel * self.k + part  # (roi, group)
        self.cells = num_rois * self.k
        if normalization == "static":
            smooth = np.asarray(smoothing_group, dtype=np.intp)
            self.smooth_count = int(smooth.max()) + 1 if len(smooth) else 0
            self.smooth_cell = smooth * self.k + part  # (smoothing group, jackknife group)
            self.full_cell = roi_of_pixel * (self.smooth_count * self.k) + self.smooth_cell  # (roi, smoothing, group)
            self.members = self._sums(self.smooth_cell, None, self.smooth_count)  # (smoothing, k)
            self.members_in = np.bincount(self.full_cell, minlength=num_rois * self.smooth_count * self.k).reshape(
                num_rois, self.smooth_count, self.k).astype(np.float64)

    def _sums(self, cell: np.ndarray, weights, rows: int) -> np.ndarray:
        return np.bincount(cell, weights=weights, minlength=rows * self.k).reshape(rows, self.k).astype(np.float64)

    def __call__(self, numerator: np.ndarray, past: np.ndarray, future: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.normalization == "pixel":
                product = past * future
                valid = product > 0
                ratio = np.where(valid, numerator / np.where(valid, product, 1.0), 0.0)
                top, bottom = self._sums(self.cell, ratio, self.rois), self._sums(self.cell, valid, self.rois)
                full, loo = _leave_one_out(top, bottom, lambda t, b: t / b)
            elif self.normalization == "roi":
                sums = [self._sums(self.cell, w, self.rois) for w in (numerator, past, future, None)]
                full, loo = _leave_one_out_many(sums, lambda g, p, f, m: m * g / (p * f))
            else:
                return self._static(numerator, past, future)
        return full, loo

    def _static(self, numerator, past, future):
        shape = (self.rois, self.smooth_count, self.k)
        top = np.bincount(self.full_cell, weights=numerator, minlength=np.prod(shape)).reshape(shape)
        ip = self._sums(self.smooth_cell, past, self.smooth_count)
        if_ = self._sums(self.smooth_cell, future, self.smooth_count)

        def g2_of(top_rs, ip_s, if_s, members_s, members_rs):
            with np.errstate(invalid="ignore", divide="ignore"):
                product = (ip_s / members_s) * (if_s / members_s)  # (smoothing,): the smoothed IP·IF
                valid = product > 0
                weight = np.where(valid, 1.0 / np.where(valid, product, 1.0), 0.0)
                return (top_rs @ weight) / (members_rs @ valid)

        full = g2_of(top.sum(2), ip.sum(1), if_.sum(1), self.members.sum(1), self.members_in.sum(2))
        loo = np.full((self.k, self.rois), np.nan)
        for j in range(self.k):
            rest = self.members_in.sum(2) - self.members_in[:, :, j]
            if not rest.any():
                continue
            loo[j] = g2_of(top.sum(2) - top[:, :, j], ip.sum(1) - ip[:, j], if_.sum(1) - if_[:, j],
                           self.members.sum(1) - self.members[:, j], rest)
            loo[j, self.members_in[:, :, j].sum(1) == 0] = np.nan  # a group with no pixels of the ROI
        return full, loo


def _leave_one_out(top: np.ndarray, bottom: np.ndarray, combine) -> tuple[np.ndarray, np.ndarray]:
    return _leave_one_out_many([top, bottom], combine)


def _leave_one_out_many(sums: list[np.ndarray], combine) -> tuple[np.ndarray, np.ndarray]:
    """The estimate from whole (rois, k) sums, and (k, rois) with each group's share taken out (NaN: empty group)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        whole = [s.sum(axis=1) for s in sums]
        full = combine(*whole)
        loo = np.stack([combine(*[w - s[:, j] for w, s in zip(whole, sums)]) for j in range(sums[0].shape[1])])
        empty = (sums[-1] == 0).T  # the last sums count pixels (or valid pixels): none, no group to leave out
        return full, np.where(empty, np.nan, loo)
