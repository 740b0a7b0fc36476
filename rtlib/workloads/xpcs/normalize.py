"""From the correlator's per-pixel sums to g2 per ROI, with each jackknife group of pixels left out.

Every normalisation is a function of sums over cells of pixels: (ROI,
jackknife group) for ``pixel`` and ``roi``, and (ROI, static ROI, jackknife
group) with (static ROI, jackknife group) for ``static``. One compiled pass
over the correlator state forms those sums for every delay at once (threads
over levels); the g2 of the whole ROI and of the ROI with one group left out
then come from the small cell arrays, for all delays together.

Jackknife groups are contiguous runs of each ROI's pixels in raster order,
so that the pixels of one speckle fall in the same group.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import sparse

from .threads import run_tasks, thread_count

try:
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a dependency; this keeps a broken install usable
    HAVE_NUMBA = False

JACKKNIFE_GROUPS = 16  # pixel groups each ROI is cut into for the error bars (leave one out)


def jackknife_groups(roi_of_pixel: np.ndarray, num_rois: int, groups: int = JACKKNIFE_GROUPS) -> np.ndarray:
    """Group 0..groups-1 of every pixel: each ROI's pixels, in the order given (raster order), cut into equal
    contiguous runs."""
    roi = np.asarray(roi_of_pixel, dtype=np.intp)
    order = np.argsort(roi, kind="stable")
    sizes = np.bincount(roi, minlength=num_rois)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty(len(roi), np.intp)
    rank[order] = np.arange(len(roi)) - starts[roi[order]]
    return (rank * groups) // np.maximum(sizes[roi], 1)


def jackknife_error(loo: np.ndarray) -> np.ndarray:
    """Standard error from leave-one-group-out estimates (groups, ...); NaN entries are empty groups."""
    used = np.isfinite(loo).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # every group empty: mean of nothing
        mean = np.nanmean(loo, axis=0)
        spread = np.nansum((loo - mean) ** 2, axis=0)
        err = np.sqrt((used - 1) / np.maximum(used, 1) * spread)
    return np.where(used > 1, err, np.nan)


def _cell_sums_numpy(g2, first, hist, total, frames, row_of, cell0, cell1, n0, n1, ratio_mode, rows):
    levels, keep, _ = g2.shape
    pixels = len(cell0)
    out0, out1, out2 = np.zeros((rows, n0)), np.zeros((rows, n1)), np.zeros((rows, n1))
    for level in range(levels):
        for d in range(1, keep + 1):
            row = row_of[level, d - 1]
            if row < 0:
                continue
            num = (frames[level] - d) * g2[level, d - 1, :pixels]
            past = total[level, :pixels] - hist[level, keep - d:, :pixels].sum(axis=0)
            future = total[level, :pixels] - first[level, :d, :pixels].sum(axis=0)
            if ratio_mode:
                product = past * future
                valid = product > 0
                with np.errstate(invalid="ignore", divide="ignore"):
                    ratio = np.where(valid, num / np.where(valid, product, 1.0), 0.0)
                out0[row] = np.bincount(cell0, weights=ratio, minlength=n0)
                out1[row] = np.bincount(cell1, weights=valid, minlength=n1)
            else:
                out0[row] = np.bincount(cell0, weights=num, minlength=n0)
                out1[row] = np.bincount(cell1, weights=past, minlength=n1)
                out2[row] = np.bincount(cell1, weights=future, minlength=n1)
    return out0, out1, out2


LANES = 4  # partial sums per cell in the compiled cell sums

if HAVE_NUMBA:

    @njit(nogil=True, boundscheck=False, cache=True)
    def _cell_sums_level(g2, first, hist, total, frames, row_of, cell0, cell1, ratio_mode, out0, out1, out2, task,
                         tasks):  # pragma: no cover - compiled
        """Levels task, task + tasks, ...: each writes only its own rows of the outputs."""
        levels, keep, _ = g2.shape
        pixels = cell0.shape[0]
        head = np.zeros(pixels)  # Σ first[:d]: the first d frames
        tail = np.zeros(pixels)  # Σ hist[keep-d:]: the last d frames
        # neighbouring pixels mostly share a cell: adding each into one of LANES copies by pixel index makes
        # LANES independent chains of read-add-write instead of one (each waits for the store before it)
        l0, l1, l2 = np.zeros((LANES, out0.shape[1])), np.zeros((LANES, out1.shape[1])), np.zeros((LANES, out2.shape[1]))
        for level in range(task, levels, tasks):
            head[:] = 0.0
            tail[:] = 0.0
            for d in range(1, keep + 1):
                for p in range(pixels):
                    head[p] += first[level, d - 1, p]
                    tail[p] += hist[level, keep - d, p]
                row = row_of[level, d - 1]
                if row < 0:
                    continue
                pairs = frames[level] - d
                l0[:] = 0.0
                l1[:] = 0.0
                l2[:] = 0.0
                for p in range(pixels):
                    lane = p % LANES
                    num = pairs * g2[level, d - 1, p]
                    past = total[level, p] - tail[p]
                    future = total[level, p] - head[p]
                    if ratio_mode:
                        product = past * future
                        if product > 0:
                            l0[lane, cell0[p]] += num / product
                            l1[lane, cell1[p]] += 1.0
                    else:
                        l0[lane, cell0[p]] += num
                        l1[lane, cell1[p]] += past
                        l2[lane, cell1[p]] += future
                for lane in range(LANES):
                    out0[row] += l0[lane]
                    out1[row] += l1[lane]
                    out2[row] += l2[lane]

    def _cell_sums_compiled(g2, first, hist, total, frames, row_of, cell0, cell1, n0, n1, ratio_mode, rows):
        out0, out1, out2 = np.zeros((rows, n0)), np.zeros((rows, n1)), np.zeros((rows, n1))
        run_tasks(_cell_sums_level, min(thread_count(), g2.shape[0]), g2, first, hist, total,
                  np.asarray(frames, np.int64), row_of, cell0, cell1, ratio_mode, out0, out1, out2)
        return out0, out1, out2


def _cell_sums(*args):
    return _cell_sums_compiled(*args) if HAVE_NUMBA else _cell_sums_numpy(*args)


def estimate(normalization: str, state: tuple, row_of: np.ndarray, rows: int, roi_of_pixel: np.ndarray,
             num_rois: int, smoothing_group: np.ndarray | None,
             part: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """g2 (rows, rois), its leave-one-group-out values (groups, rows, rois; NaN for an empty group), and the bytes
    of the cell sums formed on the way.

    ``state``: the correlator's (g2, first, hist, total, frames per level); ``row_of[level, d-1]``: the output
    row of that level's delay d, or -1 for a delay not reported; ``part``: ``jackknife_groups`` of the pixels, if
    the caller keeps it."""
    k = JACKKNIFE_GROUPS
    roi = np.asarray(roi_of_pixel, dtype=np.intp)
    if part is None:
        part = jackknife_groups(roi, num_rois)
    cell = roi * k + part
    counts = np.bincount(cell, minlength=num_rois * k).reshape(num_rois, k).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if normalization == "pixel":
            sums = _cell_sums(*state, row_of, cell, cell, num_rois * k, num_rois * k, True, rows)
            a, b = sums[0].reshape(rows, num_rois, k), sums[1].reshape(rows, num_rois, k)
            full = a.sum(2) / b.sum(2)
            loo = (a.sum(2)[..., None] - a) / (b.sum(2)[..., None] - b)
            loo = np.where(b > 0, loo, np.nan)
        elif normalization == "roi":
            sums = _cell_sums(*state, row_of, cell, cell, num_rois * k, num_rois * k, False, rows)
            g, ip, if_ = (s.reshape(rows, num_rois, k) for s in sums)
            m = counts[None]

            def combine(g, ip, if_, m):
                return m * g / (ip * if_)
            full = combine(g.sum(2), ip.sum(2), if_.sum(2), m.sum(2))
            loo = combine(*[x.sum(2)[..., None] - x for x in (g, ip, if_, m)])
            loo = np.where(m > 0, loo, np.nan)
        else:
            full, loo, sums = _static(state, row_of, rows, roi, num_rois, part, np.asarray(smoothing_group, np.intp))
    return full, np.moveaxis(loo, -1, 0), sum(s.nbytes for s in sums)


def _static(state, row_of, rows, roi, num_rois, part, smooth):
    """``static``: each pixel normalised by its static ROI's mean IP and IF (the left-out group's pixels left out of
    those means too). Cells are the (ROI, static ROI) pairs that occur, by jackknife group."""
    k = JACKKNIFE_GROUPS
    groups = int(smooth.max()) + 1 if len(smooth) else 0
    pairs, pair_of_pixel = np.unique(roi * groups + smooth, return_inverse=True)
    pair_roi, pair_group = pairs // groups, pairs % groups
    sums = _cell_sums(*state, row_of, pair_of_pixel * k + part, smooth * k + part, len(pairs) * k, groups * k,
                      False, rows)
    top, ip, if_ = sums
    top = top.reshape(rows, len(pairs), k)
    ip, if_ = ip.reshape(rows, groups, k), if_.reshape(rows, groups, k)
    members = np.bincount(smooth * k + part, minlength=groups * k).reshape(groups, k).astype(np.float64)
    members_in = np.bincount(pair_of_pixel * k + part, minlength=len(pairs) * k).reshape(len(pairs), k).astype(float)
    to_roi = sparse.csr_matrix((np.ones(len(pairs)), (pair_roi, np.arange(len(pairs)))), shape=(num_rois, len(pairs)))

    def per_roi(values: np.ndarray) -> np.ndarray:
        """Sum over each ROI's pairs: (rows, pairs, ...) -> (rows, rois, ...)."""
        moved = np.moveaxis(values, 1, 0)
        summed = to_roi @ moved.reshape(len(pairs), -1)
        return np.moveaxis(np.asarray(summed).reshape((num_rois,) + moved.shape[1:]), 0, 1)

    def g2_of(top, ip, if_, members, members_in):
        """top (rows, pairs); ip, if_ (rows, groups); members (groups,); members_in (pairs,)."""
        product = (ip / members) * (if_ / members)
        valid = product > 0
        weight = np.where(valid, 1.0 / np.where(valid, product, 1.0), 0.0)[:, pair_group]
        return per_roi(top * weight) / per_roi(members_in[None] * valid[:, pair_group])

    with np.errstate(invalid="ignore", divide="ignore"):
        full = g2_of(top.sum(2), ip.sum(2), if_.sum(2), members.sum(1), members_in.sum(1))
        present = per_roi(members_in[None])[0] > 0  # (rois, k): the ROI has pixels in the group
        loo = np.full((rows, num_rois, k), np.nan)
        for j in range(k):  # one group at a time: temporaries of (rows, pairs), not (rows, pairs, k)
            loo[:, :, j] = g2_of(top.sum(2) - top[:, :, j], ip.sum(2) - ip[:, :, j], if_.sum(2) - if_[:, :, j],
                                 members.sum(1) - members[:, j], members_in.sum(1) - members_in[:, j])
        loo = np.where(present[None], loo, np.nan)
    return full, loo, sums
