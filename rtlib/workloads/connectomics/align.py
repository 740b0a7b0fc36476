"""Aligning each section to the one before: patch-wise correlation, an elastic mesh fit, and warping.

Section ``z`` is first warped with the field found for section ``z - 1``
(drift is mostly a slow random walk, so that field is a good start), then
cut into overlapping square patches; the residual shift of each textured
patch against the already-aligned previous sections is measured by
phase correlation (sub-pixel, refined on the patches' common part). The
measurements are fitted by a coarse mesh of node displacements, bilinear
between nodes, by least squares with a second-difference (bending)
penalty: the result is smooth, bridges patches without texture and lets
no single bad patch tear the section. Fields are in pixels, stored as
``f_z`` with ``aligned_z(p) = mosaic_z(p + f_z(p))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.registration import phase_cross_correlation

_MIN_TEXTURE_GRAY = 6.0  # a patch flatter than this (gray-level std) is not measured


@dataclass(frozen=True)
class AlignSettings:
    patch_px: int = 48
    stride_px: int = 24
    mesh_spacing_px: int = 32
    smoothness: float = 0.5  # weight of the membrane penalty between mesh nodes, against one patch measurement
    max_shift_px: float = 6.0  # a patch residual larger than this (after the first guess) is an outlier
    reference_sections: int = 2  # aligned sections averaged as the reference
    iterations: int = 3  # measure-and-fit rounds per section


def warp(image: np.ndarray, field: np.ndarray, origin_px: tuple[int, int], shape: tuple[int, int], order: int = 1,
         cval: float = 0.0) -> np.ndarray:
    """``image`` (whose pixel 0 sits at ``origin_px`` of the frame) sampled at p + field(p) for p in ``shape``."""
    grid = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    coords = grid + field - np.asarray(origin_px, dtype=np.float64)[:, None, None]
    return ndi.map_coordinates(image, coords, order=order, mode="constant", cval=cval)


def patch_shifts(reference: np.ndarray, moving: np.ndarray, valid: np.ndarray, settings: AlignSettings,
                 upsample: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(centres (n, 2), shifts (n, 2)): moving(p + shift) ~ reference(p) for textured, fully valid patches."""
    size, stride = settings.patch_px, settings.stride_px
    h, w = reference.shape
    centres, shifts = [], []
    for y in _starts(h, size, stride):
        for x in _starts(w, size, stride):
            sl = (slice(y, y + size), slice(x, x + size))
            if not valid[sl].all():
                continue
            ref, mov = reference[sl], moving[sl]
            if min(ref.std(), mov.std()) < _MIN_TEXTURE_GRAY:
                continue
            shift, _, _ = phase_cross_correlation(ref - ref.mean(), mov - mov.mean(), upsample_factor=upsample,
                                                  normalization=None)
            # phase_cross_correlation gives the shift that moves `mov` onto `ref`: mov(p - s) = ref(p).
            centres.append((y + size / 2 - 0.5, x + size / 2 - 0.5))
            shifts.append(-np.asarray(shift))
    return np.asarray(centres, dtype=np.float64).reshape(-1, 2), np.asarray(shifts, dtype=np.float64).reshape(-1, 2)


def _starts(length: int, size: int, stride: int) -> list[int]:
    """Patch origins every ``stride`` px, the last flush with the far edge so the whole frame is measured."""
    last = max(0, length - size)
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def fit_mesh(centres: np.ndarray, shifts: np.ndarray, shape: tuple[int, int], settings: AlignSettings) -> np.ndarray:
    """A smooth field (2, h, w) through the patch measurements; zero where there are none."""
    h, w = shape
    ny = max(2, int(np.ceil((h - 1) / settings.mesh_spacing_px)) + 1)
    nx = max(2, int(np.ceil((w - 1) / settings.mesh_spacing_px)) + 1)
    if len(centres) == 0:
        return np.zeros((2, h, w))
    sy, sx = (h - 1) / (ny - 1), (w - 1) / (nx - 1)
    n = ny * nx
    rows = []
    for cy, cx in centres:
        gy, gx = min(max(cy / sy, 0), ny - 1 - 1e-9), min(max(cx / sx, 0), nx - 1 - 1e-9)
        iy, ix = int(gy), int(gx)
        fy, fx = gy - iy, gx - ix
        row = np.zeros(n)
        for dy, dx, wgt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
            row[(iy + dy) * nx + ix + dx] += wgt
        rows.append(row)
    data = np.asarray(rows)
    penalty = []
    # an elastic membrane: neighbouring nodes are pulled to equal displacement, so nodes without
    # data nearby take the value of their neighbours instead of extrapolating a gradient
    lam = np.sqrt(settings.smoothness)
    for i in range(ny):
        for j in range(nx):
            for di, dj in ((1, 0), (0, 1)):
                if i + di < ny and j + dj < nx:
                    row = np.zeros(n)
                    row[i * nx + j] = -lam
                    row[(i + di) * nx + j + dj] = lam
                    penalty.append(row)
    # a faint pull towards the mean keeps nodes without data (and a lone patch) determined
    anchor = np.eye(n) * 1e-3
    a = np.vstack([data, *(np.asarray(penalty).reshape(-1, n),), anchor])
    out = np.empty((2, h, w))
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float64)
    for axis in range(2):
        mean = float(np.median(shifts[:, axis]))
        b = np.concatenate([shifts[:, axis] - mean, np.zeros(len(a) - len(data))])
        nodes, *_ = np.linalg.lstsq(a, b, rcond=None)
        out[axis] = mean + ndi.map_coordinates(nodes.reshape(ny, nx), [gy / sy, gx / sx], order=1, mode="nearest")
    return out


def robust_fit(centres: np.ndarray, shifts: np.ndarray, shape: tuple[int, int], settings: AlignSettings) -> tuple[np.ndarray, int]:
    """The mesh field after dropping patches far from a first fit (where the tissue itself changed); and patches kept."""
    keep = np.linalg.norm(shifts, axis=1) <= settings.max_shift_px
    centres, shifts = centres[keep], shifts[keep]
    field = fit_mesh(centres, shifts, shape, settings)
    if len(centres) < 4:
        return field, len(centres)
    at = np.stack([ndi.map_coordinates(field[a], centres.T, order=1, mode="nearest") for a in range(2)], axis=1)
    misfit = np.linalg.norm(shifts - at, axis=1)
    good = misfit <= max(0.3, 3.0 * 1.4826 * float(np.median(misfit)))
    if good.all():
        return field, len(centres)
    return fit_mesh(centres[good], shifts[good], shape, settings), int(good.sum())


class SectionAligner:
    """Aligns sections one after the other into the frame of the first."""

    def __init__(self, shape: tuple[int, int], settings: AlignSettings | None = None):
        self.shape = shape
        self.settings = settings or AlignSettings()
        self.field = np.zeros((2, *shape))
        self.references: list[tuple[np.ndarray, np.ndarray]] = []
        self.patches_used: list[int] = []

    def add(self, mosaic: np.ndarray, covered: np.ndarray, origin_px: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(aligned image, aligned coverage, field) of the next section."""
        guess = warp(mosaic, self.field, origin_px, self.shape)
        guess_valid = warp(covered.astype(np.float64), self.field, origin_px, self.shape) > 0.999
        if self.references:
            ref, ref_valid = self._reference()
            # Re-measuring after each update removes the pull of a patch's correlation peak towards
            # zero shift, and follows deformations that vary within one patch.
            for _ in range(self.settings.iterations):
                centres, shifts = patch_shifts(ref, guess, ref_valid & guess_valid, self.settings)
                update, used = robust_fit(centres, shifts, self.shape, self.settings)
                self.field = self.field + update
                guess = warp(mosaic, self.field, origin_px, self.shape)
                guess_valid = warp(covered.astype(np.float64), self.field, origin_px, self.shape) > 0.999
            self.patches_used.append(used)
        else:
            self.patches_used.append(0)
        self.references.append((guess, guess_valid))
        del self.references[:-self.settings.reference_sections]
        return guess, guess_valid, self.field.copy()

    def _reference(self) -> tuple[np.ndarray, np.ndarray]:
        images = np.stack([r[0] for r in self.references])
        valid = np.stack([r[1] for r in self.references])
        return images.mean(axis=0), valid.all(axis=0)
