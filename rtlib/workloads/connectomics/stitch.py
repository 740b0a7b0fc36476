"""Stitching the tiles of one section: pairwise phase correlation, global least squares, feathered fusion.

Each pair of neighbouring tiles is registered on its nominal overlap strip
by phase correlation with sub-pixel refinement (upsampled cross-power
spectrum). The measured pair offsets are then reconciled by weighted least
squares for all tile positions at once (tile 00_00 fixed at the origin, a
weak pull towards the nominal grid for tiles whose overlaps carry no
texture), so that one bad pair cannot tear the mosaic. Tiles are fused by
linear interpolation at their sub-pixel positions, blended with weights
that fall to zero at each tile's border.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.registration import phase_cross_correlation

# Weight of the pull of every tile towards its nominal position, against 1 for a good pair measurement.
_NOMINAL_PULL = 1e-3
# A pair whose overlap has less texture than this (gray-level std) is not measured.
_MIN_TEXTURE_GRAY = 4.0


@dataclass(frozen=True)
class PairOffset:
    a: tuple[int, int]
    b: tuple[int, int]
    offset_px: np.ndarray  # measured position of b minus position of a, (dy, dx)
    weight: float


@dataclass(frozen=True)
class StitchResult:
    positions_px: dict[tuple[int, int], np.ndarray]  # top-left corner of each tile, (y, x), in tile 00_00's frame
    pairs: list[PairOffset]
    residual_px: float  # RMS misfit of the pair measurements after the global solve


def nominal_position(row: int, col: int, tile_px: tuple[int, int], overlap_px: int) -> np.ndarray:
    return np.array([row * (tile_px[0] - overlap_px), col * (tile_px[1] - overlap_px)], dtype=np.float64)


def measure_pair(tile_a: np.ndarray, tile_b: np.ndarray, axis: int, overlap_px: int, upsample: int) -> tuple[np.ndarray, float]:
    """Offset of b relative to its nominal place beside a (b right of a: axis 1; below: axis 0) and a weight."""
    if axis == 1:
        strip_a, strip_b = tile_a[:, -overlap_px:], tile_b[:, :overlap_px]
    else:
        strip_a, strip_b = tile_a[-overlap_px:, :], tile_b[:overlap_px, :]
    strip_a = strip_a.astype(np.float64)
    strip_b = strip_b.astype(np.float64)
    if min(strip_a.std(), strip_b.std()) < _MIN_TEXTURE_GRAY:
        return np.zeros(2), 0.0
    coarse, error, _ = phase_cross_correlation(strip_a - strip_a.mean(), strip_b - strip_b.mean(),
                                               upsample_factor=upsample, normalization=None)
    # Refine on the part both strips really share: the periodic wrap-around of the first estimate
    # pulls it towards zero by up to a tenth of a pixel; after shifting b, no wrap-around is left.
    moved = ndi.shift(strip_b, coarse, order=3, mode="nearest")
    common = tuple(slice(max(0, int(np.ceil(c))) + 1, n + min(0, int(np.floor(c))) - 1) for c, n in zip(coarse, strip_a.shape))
    if all(sl.stop - sl.start >= 8 for sl in common):
        a, b = strip_a[common], moved[common]
        fine, _, _ = phase_cross_correlation(a - a.mean(), b - b.mean(), upsample_factor=4 * upsample, normalization=None)
        coarse = coarse + fine
    weight = float(max(0.0, 1.0 - error))
    return np.asarray(coarse, dtype=np.float64), weight


def solve_positions(grid: tuple[int, int], pairs: list[PairOffset], nominal: dict[tuple[int, int], np.ndarray]) -> tuple[dict, float]:
    """Least-squares tile positions from pair offsets; tile (0, 0) is the origin."""
    keys = [(r, c) for r in range(grid[0]) for c in range(grid[1])]
    index = {k: i for i, k in enumerate(keys[1:])}  # (0, 0) is fixed, not an unknown
    n = len(index)
    positions = {keys[0]: np.zeros(2)}
    if n == 0:
        return positions, 0.0
    rows, rhs, weights = [], [], []
    for p in pairs:
        row = np.zeros(n)
        if p.b in index:
            row[index[p.b]] += 1
        if p.a in index:
            row[index[p.a]] -= 1
        rows.append(row)
        rhs.append(p.offset_px)
        weights.append(p.weight)
    for k, i in index.items():
        row = np.zeros(n)
        row[i] = 1
        rows.append(row)
        rhs.append(nominal[k])
        weights.append(_NOMINAL_PULL)
    a = np.asarray(rows)
    b = np.asarray(rhs)
    sw = np.sqrt(np.asarray(weights))[:, None]
    solution, *_ = np.linalg.lstsq(a * sw, b * sw, rcond=None)
    for k, i in index.items():
        positions[k] = solution[i]
    measured = [p for p in pairs if p.weight > 0]
    if measured:
        misfit = [np.linalg.norm(positions[p.b] - positions[p.a] - p.offset_px) for p in measured]
        residual = float(np.sqrt(np.mean(np.square(misfit))))
    else:
        residual = 0.0
    return positions, residual


def stitch_section(tiles: dict[tuple[int, int], np.ndarray], grid: tuple[int, int], overlap_px: int,
                   upsample: int = 20) -> StitchResult:
    """Tile positions of one section from its tiles ``{(row, col): image}``."""
    tile_px = next(iter(tiles.values())).shape
    nominal = {k: nominal_position(*k, tile_px, overlap_px) for k in tiles}
    pairs = []
    for (r, c), tile in tiles.items():
        for axis, other in ((1, (r, c + 1)), (0, (r + 1, c))):
            if other not in tiles:
                continue
            residual, weight = measure_pair(tile, tiles[other], axis, overlap_px, upsample)
            offset = nominal[other] - nominal[(r, c)] + residual
            pairs.append(PairOffset((r, c), other, offset, weight))
    positions, misfit = solve_positions(grid, pairs, nominal)
    return StitchResult(positions, pairs, misfit)


def _feather(shape: tuple[int, int]) -> np.ndarray:
    """Blending weight of a tile: 1 + distance to its nearest border, 0 outside."""
    y = np.minimum(np.arange(shape[0]), np.arange(shape[0])[::-1]) + 1.0
    x = np.minimum(np.arange(shape[1]), np.arange(shape[1])[::-1]) + 1.0
    return np.minimum(y[:, None], x[None, :])


def fuse(tiles: dict[tuple[int, int], np.ndarray], positions: dict[tuple[int, int], np.ndarray],
         canvas_shape: tuple[int, int], origin_px: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(mosaic float32, covered bool) on a canvas whose pixel (0, 0) sits at ``origin_px`` of the section frame."""
    total = np.zeros(canvas_shape, dtype=np.float64)
    weight = np.zeros(canvas_shape, dtype=np.float64)
    for key, tile in tiles.items():
        pos = positions[key] - np.asarray(origin_px, dtype=np.float64)
        th, tw = tile.shape
        y0, x0 = int(np.floor(pos[0])), int(np.floor(pos[1]))
        ys = slice(max(0, y0), min(canvas_shape[0], y0 + th + 1))
        xs = slice(max(0, x0), min(canvas_shape[1], x0 + tw + 1))
        if ys.start >= ys.stop or xs.start >= xs.stop:
            continue
        yy, xx = np.mgrid[ys, xs].astype(np.float64)
        coords = np.stack([yy - pos[0], xx - pos[1]])
        inside = (coords[0] >= 0) & (coords[0] <= th - 1) & (coords[1] >= 0) & (coords[1] <= tw - 1)
        values = ndi.map_coordinates(tile.astype(np.float64), coords, order=1, mode="nearest")
        w = ndi.map_coordinates(_feather(tile.shape), coords, order=1, mode="constant") * inside
        total[ys, xs] += values * w
        weight[ys, xs] += w
    covered = weight > 0
    mosaic = np.where(covered, total / np.where(covered, weight, 1), 0).astype(np.float32)
    return mosaic, covered
