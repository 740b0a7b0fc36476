"""Intensity normalisation: per tile (gain and offset matched across the overlaps) and per section (percentiles).

EM tiles of one section differ in gain and offset (the detector, charging,
beam current), and sections differ in contrast (section thickness, stain);
no later step may depend on absolute grey levels. Two corrections, in order:

* *per tile*: once the tiles are stitched, each overlap shows the same
  tissue in two tiles, so their (smoothed) means and spreads there must
  agree; a gain and an offset per tile are fitted to every overlap at once
  by least squares (log gains first, then offsets), their means pinned to
  1 and 0 so the section keeps its overall level. One bright tile cannot
  shift its neighbours, as a percentile of each tile alone would when a
  vessel lumen fills part of one tile only.
* *per section*: the aligned section is mapped so that its median (the
  cytoplasm of dense neuropil) lands on ``MEDIAN_GRAY`` and its dark
  percentile (membranes, ``DARK_PERCENTILE``) ``SPREAD_GRAY`` below it.
  Bright objects (lumens, resin) lie above the median and do not move
  these anchors while they cover less than half the section.

The network reads the normalised 8-bit section; what it was trained on
passed through the same ``normalize_section``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

MEDIAN_GRAY = 150.0
SPREAD_GRAY = 90.0
DARK_PERCENTILE = 3.0
_SMOOTH_PX = 1.0  # strips are compared smoothed: their noise is not their spread


def tile_corrections(tiles: dict[tuple[int, int], np.ndarray], positions_px: dict[tuple[int, int], np.ndarray],
                     min_overlap_px: int = 8) -> dict[tuple[int, int], tuple[float, float]]:
    """{tile: (gain, offset)} so that gain * tile + offset agree with their neighbours across every overlap."""
    keys = sorted(tiles)
    index = {k: i for i, k in enumerate(keys)}
    n = len(keys)
    if n == 1:
        return {keys[0]: (1.0, 0.0)}
    rows = []  # (a, b, mean_a, mean_b, spread_a, spread_b)
    for a in keys:
        for b in ((a[0], a[1] + 1), (a[0] + 1, a[1])):
            if b not in tiles:
                continue
            sa, sb = _overlap(tiles[a], positions_px[a], tiles[b], positions_px[b])
            if sa is None or min(sa.shape) < min_overlap_px:
                continue
            sa = ndi.gaussian_filter(sa.astype(np.float64), _SMOOTH_PX)
            sb = ndi.gaussian_filter(sb.astype(np.float64), _SMOOTH_PX)
            if min(sa.std(), sb.std()) < 1e-3:
                continue
            rows.append((index[a], index[b], sa.mean(), sb.mean(), sa.std(), sb.std()))
    if not rows:
        return {k: (1.0, 0.0) for k in keys}
    # log gains: log g_a + log s_a = log g_b + log s_b; their mean is 0
    A = np.zeros((len(rows) + 1, n))
    y = np.zeros(len(rows) + 1)
    for r, (a, b, _, _, sa, sb) in enumerate(rows):
        A[r, a], A[r, b], y[r] = 1, -1, np.log(sb / sa)
    A[-1] = 1
    log_gain = np.linalg.lstsq(A, y, rcond=None)[0]
    gain = np.exp(log_gain)
    # offsets: g_a m_a + o_a = g_b m_b + o_b; their mean is 0
    B = np.zeros((len(rows) + 1, n))
    z = np.zeros(len(rows) + 1)
    for r, (a, b, ma, mb, _, _) in enumerate(rows):
        B[r, a], B[r, b], z[r] = 1, -1, gain[b] * mb - gain[a] * ma
    B[-1] = 1
    offset = np.linalg.lstsq(B, z, rcond=None)[0]
    # a tile linked to no other keeps its own level
    linked = np.zeros(n, bool)
    for a, b, *_ in rows:
        linked[a] = linked[b] = True
    return {k: ((float(gain[i]), float(offset[i])) if linked[i] else (1.0, 0.0)) for k, i in index.items()}


def _overlap(tile_a, pos_a, tile_b, pos_b):
    """The two tiles' pixels over their common area (whole-pixel registration: enough for statistics)."""
    oa, ob = np.rint(np.asarray(pos_a)).astype(int), np.rint(np.asarray(pos_b)).astype(int)
    lo = np.maximum(oa, ob)
    hi = np.minimum(oa + np.array(tile_a.shape), ob + np.array(tile_b.shape))
    if np.any(hi <= lo):
        return None, None
    return (tile_a[lo[0] - oa[0]:hi[0] - oa[0], lo[1] - oa[1]:hi[1] - oa[1]],
            tile_b[lo[0] - ob[0]:hi[0] - ob[0], lo[1] - ob[1]:hi[1] - ob[1]])


def correct_tiles(tiles: dict[tuple[int, int], np.ndarray], corrections: dict) -> dict[tuple[int, int], np.ndarray]:
    """float32 tiles with their gain and offset applied."""
    return {k: (t.astype(np.float32) * np.float32(corrections[k][0]) + np.float32(corrections[k][1])) for k, t in tiles.items()}


def section_anchors(section: np.ndarray, valid: np.ndarray | None = None) -> tuple[float, float]:
    """(median, dark percentile) of the section's valid pixels."""
    values = section[valid] if valid is not None and valid.any() else section.ravel()
    if values.size == 0:
        return 128.0, 0.0
    median, dark = np.percentile(values.astype(np.float64), [50.0, DARK_PERCENTILE])
    return float(median), float(dark)


def normalize_section(section: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """uint8 section with its median at MEDIAN_GRAY and its dark percentile SPREAD_GRAY below."""
    median, dark = section_anchors(section, valid)
    scale = SPREAD_GRAY / max(median - dark, 1.0)
    out = MEDIAN_GRAY + (section.astype(np.float64) - median) * scale
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def normalize_volume(volume: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    return np.stack([normalize_section(s, None if valid is None else valid[i]) for i, s in enumerate(volume)])
