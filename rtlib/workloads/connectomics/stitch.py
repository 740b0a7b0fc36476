"""Stitching the tiles of one section: pairwise phase correlation, global least squares, feathered fusion.

Each pair of neighbouring tiles is registered on its nominal overlap strip
by phase correlation with sub-pixel refinement (upsampled cross-power
spectrum). The measured pair offsets are then reconciled by weighted least
squares for all tile positions at once (tile 00_00 fixed at the origin, a
weak pull towards the nominal grid for tiles whose overlaps carry no
texture), so that one bad pair cannot tear the mosaic. Tiles are fused by
linear interpolation at their sub-pixel positions, blended with weights
that fall to zero at each tile's border.

A bad fit fails loudly rather than giving a torn mosaic. Strips are judged
on their correlation band-passed (imaging noise and shading removed); when
the highest phase-correlation peak is not a match, the next peaks (and their
periodic twins) are tried. A textured pair that still does not match is
dropped from the solve, and so is a pair that disagrees with the solved
positions while the others still link its tiles. A tile cut off from tile
00_00 by pairs with too little in common, or pairs that still disagree after
the solve, are an InputDataError naming the section and the pairs; a tile
with no texture, or none that matches, keeps its nominal place with a
warning. Offsets up to +-d px need an overlap of about 4d px (two tiles can
differ by 2d, and the strips must still share half their width: on less,
texture matches somewhere by chance); the synthetic default, +-15 px in a
64-px overlap, does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.registration import phase_cross_correlation

# Weight of the pull of every tile towards its nominal position, against 1 for a good pair measurement.
_NOMINAL_PULL = 1e-3
# A pair whose overlap has less texture than this (gray-level std of the strip smoothed by _TEXTURE_SIGMA_PX,
# less its shading at _SHADING_SIGMA_PX) is not measured.
_MIN_TEXTURE_GRAY = 5.0
_TEXTURE_SIGMA_PX = 1.5
_SHADING_SIGMA_PX = 5.0
# Right matches of textured strips correlate above this; below it, the phase correlation's other peaks are tried.
_SURE_MATCH = 0.9
# Two strips registered at their offset share at least half of each strip (and this many px) ...
_MIN_COMMON_PX = 8
# ... and correlate (Pearson, on the common part) at least this well; a wrong match on EM texture correlates far less.
MIN_PAIR_CORRELATION = 0.88
# After the global solve, the measured pairs disagree with the positions by at most this (RMS), px.
MAX_RESIDUAL_PX = 1.0
# A pair that disagrees with the solved positions by more than this is dropped (while the tiles stay linked), px.
OUTLIER_PX = 2.0


@dataclass(frozen=True)
class PairOffset:
    a: tuple[int, int]
    b: tuple[int, int]
    offset_px: np.ndarray  # measured position of b minus position of a, (dy, dx)
    weight: float  # 0: not used in the solve (no texture, or rejected)
    correlation: float = float("nan")  # of the band-passed strips at the offset; NaN: not measured (no texture); -1: too little in common

    @property
    def name(self) -> str:
        return f"tile_{self.a[0]:02d}_{self.a[1]:02d} / tile_{self.b[0]:02d}_{self.b[1]:02d}"


@dataclass(frozen=True)
class StitchResult:
    positions_px: dict[tuple[int, int], np.ndarray]  # top-left corner of each tile, (y, x), in tile 00_00's frame
    pairs: list[PairOffset]
    residual_px: float  # RMS misfit of the pair measurements after the global solve
    warnings: tuple[str, ...] = ()  # what the solve could not measure (tiles left at their nominal place, pairs dropped)


def nominal_position(row: int, col: int, tile_px: tuple[int, int], overlap_px: int) -> np.ndarray:
    return np.array([row * (tile_px[0] - overlap_px), col * (tile_px[1] - overlap_px)], dtype=np.float64)


def measure_pair(tile_a: np.ndarray, tile_b: np.ndarray, axis: int, overlap_px: int, upsample: int) -> tuple[np.ndarray, float, float]:
    """Offset of b relative to its nominal place beside a (b right of a: axis 1; below: axis 0), a weight, and the
    correlation (Pearson) of the two strips, band-passed (``_band``), on their common part at that offset.

    A pair without texture is not measured (weight 0, correlation NaN). A correlation of ``-1.0`` means the
    offset leaves less than half of each strip in common (``_common_part``): the overlap is too small for it."""
    if axis == 1:
        strip_a, strip_b = tile_a[:, -overlap_px:], tile_b[:, :overlap_px]
    else:
        strip_a, strip_b = tile_a[-overlap_px:, :], tile_b[:overlap_px, :]
    strip_a = strip_a.astype(np.float64)
    strip_b = strip_b.astype(np.float64)
    # texture, not noise: imaging noise (a few gray levels per pixel) is smoothed away, membranes and grain are not
    band_a, band_b = _band(strip_a), _band(strip_b)
    if min(band_a.std(), band_b.std()) < _MIN_TEXTURE_GRAY:
        return np.zeros(2), 0.0, float("nan")
    coarse, error, _ = phase_cross_correlation(strip_a - strip_a.mean(), strip_b - strip_b.mean(),
                                               upsample_factor=upsample, normalization=None)
    if _match(band_a, band_b, coarse) < _SURE_MATCH:
        # the highest peak can be a wrong one (a large offset leaves little in common, and the
        # correlation is periodic): try the next peaks and their wrapped twins, keep the best match
        candidates = [np.asarray(coarse, dtype=np.float64), *_candidate_shifts(strip_a, strip_b)]
        coarse = max(candidates, key=lambda shift: _match(band_a, band_b, shift))
    # Refine on the part both strips really share: the periodic wrap-around of the first estimate
    # pulls it towards zero by up to a tenth of a pixel; after shifting b, no wrap-around is left.
    common = _common_part(coarse, strip_a.shape)
    if common is None:
        return np.asarray(coarse, dtype=np.float64), 0.0, -1.0
    moved = ndi.shift(strip_b, coarse, order=3, mode="nearest")
    a, b = strip_a[common], moved[common]
    fine, _, _ = phase_cross_correlation(a - a.mean(), b - b.mean(), upsample_factor=4 * upsample, normalization=None)
    offset = np.asarray(coarse + fine, dtype=np.float64)
    common = _common_part(offset, strip_a.shape)
    if common is None:
        return offset, 0.0, -1.0
    # judged on the band-passed strips: imaging noise lowers a right match's correlation, and smooth shading
    # (a vessel, the tissue's edge) correlates at any offset; the membranes and grain between decide
    correlation = _match(band_a, band_b, offset)
    weight = float(max(0.0, 1.0 - error))
    return offset, weight, correlation


def _band(strip: np.ndarray) -> np.ndarray:
    """The strip's texture: smoothed against pixel noise, less its shading (a difference of Gaussians)."""
    return ndi.gaussian_filter(strip, _TEXTURE_SIGMA_PX) - ndi.gaussian_filter(strip, _SHADING_SIGMA_PX)


def _candidate_shifts(strip_a: np.ndarray, strip_b: np.ndarray, peaks: int = 6) -> list[np.ndarray]:
    """Integer shifts of b onto a at the highest peaks of their phase correlation, each with its periodic twins,
    that leave at least half of each strip in common."""
    fa, fb = np.fft.fft2(strip_a - strip_a.mean()), np.fft.fft2(strip_b - strip_b.mean())
    cross = fa * fb.conj()
    surface = np.fft.ifft2(cross / np.maximum(np.abs(cross), 1e-12)).real
    shape = np.array(surface.shape)
    out = []
    for flat in np.argsort(surface.ravel())[::-1][:peaks]:
        peak = np.array(np.unravel_index(flat, surface.shape))
        for dy in (peak[0], peak[0] - shape[0]):
            for dx in (peak[1], peak[1] - shape[1]):
                shift = np.array([dy, dx], dtype=np.float64)
                if _common_part(shift, tuple(shape)) is not None:
                    out.append(shift)
    return out


def _match(strip_a: np.ndarray, strip_b: np.ndarray, shift) -> float:
    """Pearson correlation of a and b shifted by ``shift`` on their common part (-1: too little in common)."""
    common = _common_part(shift, strip_a.shape)
    if common is None:
        return -1.0
    moved = ndi.shift(strip_b, shift, order=1, mode="nearest")
    return float(np.corrcoef(strip_a[common].ravel(), moved[common].ravel())[0, 1])


def _common_part(offset, shape) -> tuple[slice, slice] | None:
    """The part of strip a that strip b, moved by ``offset``, covers (a pixel in from each cut), if it holds at least
    half of the strip each way: on less, smoothed texture can match somewhere by chance."""
    common = tuple(slice(max(0, int(np.ceil(c))) + 1, n + min(0, int(np.floor(c))) - 1) for c, n in zip(offset, shape))
    return common if all(sl.stop - sl.start >= max(_MIN_COMMON_PX, n // 2) for sl, n in zip(common, shape)) else None


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
        misfit = [_disagreement(positions, p) for p in measured]
        residual = float(np.sqrt(np.mean(np.square(misfit))))
    else:
        residual = 0.0
    return positions, residual


def stitch_section(tiles: dict[tuple[int, int], np.ndarray], grid: tuple[int, int], overlap_px: int,
                   upsample: int = 20, *, section: str = "the section", min_correlation: float = MIN_PAIR_CORRELATION,
                   max_residual_px: float = MAX_RESIDUAL_PX) -> StitchResult:
    """Tile positions of one section from its tiles ``{(row, col): image}``.

    A textured pair whose strips do not match at the measured offset (band-passed correlation below
    ``min_correlation``, or less than half of each strip left in common) is dropped from the solve, and so,
    one at a time, is a pair that disagrees with the solved positions by more than ``OUTLIER_PX`` while the
    other pairs still link its tiles. It is an InputDataError, naming ``section`` and the pairs, when a tile
    is cut off from tile 00_00 by pairs with too little in common (the overlap is too small for the offsets),
    or when the pairs kept disagree with the solved positions by more than ``max_residual_px`` (RMS): the
    mosaic would be torn. A tile whose overlaps have no texture, or none that matches (the tissue's edge),
    keeps its nominal place; the result's ``warnings`` say so, as they list every dropped pair."""
    from ...errors import InputDataError

    tile_px = next(iter(tiles.values())).shape
    nominal = {k: nominal_position(*k, tile_px, overlap_px) for k in tiles}
    pairs, rejected = [], []
    for (r, c), tile in tiles.items():
        for axis, other in ((1, (r, c + 1)), (0, (r + 1, c))):
            if other not in tiles:
                continue
            residual, weight, correlation = measure_pair(tile, tiles[other], axis, overlap_px, upsample)
            offset = nominal[other] - nominal[(r, c)] + residual
            pair = PairOffset((r, c), other, offset, weight, correlation)
            if not np.isnan(correlation) and correlation < min_correlation:
                pair = PairOffset((r, c), other, offset, 0.0, correlation)
                rejected.append(pair)
            pairs.append(pair)
    positions, misfit = solve_positions(grid, pairs, nominal)
    pairs, positions, misfit, outliers = _drop_outliers(tiles, grid, pairs, nominal, positions, misfit)
    placed = _reachable_from_origin(tiles, [p for p in pairs if p.weight > 0])
    unplaced = sorted(set(tiles) - placed)
    advice = (f"the tiles are likely further from their nominal places than the {overlap_px}-px overlap allows "
              f"(offsets up to +-d px need an overlap of about 4d px); re-acquire with more overlap "
              "or correct overlap_px in layout.json")

    def describe(p: PairOffset) -> str:
        why = "too little in common" if p.correlation == -1.0 else f"correlation {p.correlation:.2f} < {min_correlation:g}"
        return f"{p.name} ({why})"

    # a tile cut off because its pairs share too little is the overlap's fault: the whole section is suspect
    if unplaced and any((p.a in unplaced or p.b in unplaced) and p.correlation == -1.0 for p in rejected):
        names = ", ".join(f"tile_{r:02d}_{c:02d}" for r, c in unplaced)
        raise InputDataError(f"stitching {section} failed: {names} cannot be placed, their overlaps do not match: "
                             f"{'; '.join(describe(p) for p in rejected)}; {advice}")
    if misfit > max_residual_px:
        worst = sorted((p for p in pairs if p.weight > 0),
                       key=lambda p: -_disagreement(positions, p))[:3]
        raise InputDataError(f"stitching {section} failed: the tile pairs disagree by {misfit:.2f} px RMS after the "
                             f"least-squares solve (more than {max_residual_px:g} px), worst {', '.join(p.name for p in worst)}; "
                             f"{advice}")
    warnings = [f"{section}: pair {describe(p)} dropped from the solve" for p in rejected]
    warnings += [f"{section}: pair {p.name} dropped from the solve (it disagreed with the other pairs by {miss:.1f} px)"
                 for p, miss in outliers]
    if unplaced:  # no texture, or texture too weak to match (e.g. at the tissue's edge): placed where nominal
        warnings.append(f"{section}: {', '.join(f'tile_{r:02d}_{c:02d}' for r, c in unplaced)} left at the nominal "
                        "position (their overlaps have no texture to register, or none that matches)")
    return StitchResult(positions, pairs, misfit, tuple(warnings))


def _disagreement(positions: dict, p: PairOffset) -> float:
    """How far, px, the solved positions of a pair's tiles are from its measured offset."""
    return float(np.linalg.norm(positions[p.b] - positions[p.a] - p.offset_px))


def _drop_outliers(tiles, grid, pairs: list[PairOffset], nominal, positions, misfit):
    """Drop, one at a time, the pair that disagrees most with the solved positions (a match at a wrong peak that
    still correlated), while it disagrees by more than OUTLIER_PX and every tile stays linked to tile 00_00.

    Returns the pairs (the dropped ones with weight 0), the positions and misfit solved from them, and the
    dropped pairs with their disagreement."""
    outliers = []
    while True:
        kept = [p for p in pairs if p.weight > 0]
        if not kept:
            return pairs, positions, misfit, outliers
        miss = [_disagreement(positions, p) for p in kept]
        worst = int(np.argmax(miss))
        if miss[worst] <= OUTLIER_PX:
            return pairs, positions, misfit, outliers
        trial = [PairOffset(p.a, p.b, p.offset_px, 0.0, p.correlation) if p is kept[worst] else p for p in pairs]
        if _reachable_from_origin(tiles, [p for p in trial if p.weight > 0]) != _reachable_from_origin(tiles, kept):
            return pairs, positions, misfit, outliers  # the only link of a tile: the misfit check decides
        pairs = trial
        outliers.append((kept[worst], miss[worst]))
        positions, misfit = solve_positions(grid, pairs, nominal)


def _reachable_from_origin(tiles, pairs: list[PairOffset]) -> set[tuple[int, int]]:
    """Tiles joined to tile (0, 0) through measured pairs."""
    neighbours: dict[tuple[int, int], list] = {k: [] for k in tiles}
    for p in pairs:
        neighbours[p.a].append(p.b)
        neighbours[p.b].append(p.a)
    seen, todo = {(0, 0)}, [(0, 0)]
    while todo:
        for n in neighbours.get(todo.pop(), []):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen & set(tiles)


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
