"""Depth reconstruction: the intensity each wire step removes (or gives back), put at the depth the wire edge swept.

Between steps ``i`` and ``i+1`` the leading edge of the wire sweeps, for a
given pixel, the depths between its edge depths at the two steps; what the
pixel lost, ``I_i - I_{i+1}``, came from sources in that depth interval. The
trailing edge gives the same with the opposite sign (what the pixel gained
as the wire uncovered it). Each difference is shared among the depth bins
its interval overlaps, in proportion to the overlap, so the reconstruction
conserves intensity inside the depth range.

Every pixel is independent, so the detector is cut into blocks of rows
(``reconstruct_rows``), each block reconstructed from all steps of its own
rows; ``reconstruct_file`` runs the blocks in turn, or over a dask client.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from .geometry import EDGES, ScanGeometry

EdgeChoice = Literal["leading", "trailing", "both"]

# Pixels handled per pass: every temporary array then stays under 128 KiB, which glibc serves from
# its heap, not from a fresh mmap (dask workers pin malloc's thresholds, and there each larger
# temporary costs page faults: four times slower), and which stays in cache.
PIXELS_PER_PASS = 8192
# The images of one block of rows (all wire steps, as float64) take at most this many bytes: the declared
# shape of a crafted file is never trusted to fit (as the saxs and xpcs readers cap a chunk of frames).
BLOCK_BUDGET_BYTES = 256 * 2**20


@dataclass(frozen=True)
class DepthBins:
    start_um: float
    step_um: float
    count: int

    @classmethod
    def from_range(cls, start_um: float, end_um: float, step_um: float) -> "DepthBins":
        if not step_um > 0:
            raise ValueError(f"depth step must be > 0 um, got {step_um}")
        if not end_um > start_um:
            raise ValueError(f"depth end ({end_um} um) must be greater than depth start ({start_um} um)")
        count = max(1, math.ceil((end_um - start_um) / step_um - 1e-9))
        return cls(float(start_um), float(step_um), int(count))

    @property
    def edges_um(self) -> np.ndarray:
        return self.start_um + self.step_um * np.arange(self.count + 1, dtype=np.float64)

    @property
    def centres_um(self) -> np.ndarray:
        return self.start_um + self.step_um * (np.arange(self.count, dtype=np.float64) + 0.5)


def edges_of(choice: EdgeChoice) -> tuple[str, ...]:
    return EDGES if choice == "both" else (choice,)


def reconstruct_block(
    images: np.ndarray,
    pixel_um: np.ndarray,
    geometry: ScanGeometry,
    bins: DepthBins,
    edge: EdgeChoice = "leading",
) -> np.ndarray:
    """(depths, rows, cols) depth-resolved intensity of the pixels at ``pixel_um`` (rows, cols, 3).

    ``images``: (steps, rows, cols) counts of those pixels at every wire step.
    With ``edge="both"`` the result is the mean of the two edges' reconstructions.
    """
    steps, rows, cols = images.shape
    npix = rows * cols
    pixel_2d = geometry.project(pixel_um.reshape(npix, 3))
    out = np.zeros((bins.count, npix), dtype=np.float64)
    flat = images.reshape(steps, npix)
    chosen = edges_of(edge)
    for p0 in range(0, npix, PIXELS_PER_PASS):
        p1 = min(npix, p0 + PIXELS_PER_PASS)
        for name in chosen:
            sign = 1.0 if name == "leading" else -1.0
            before = geometry.edge_depth_projected_um(pixel_2d[p0:p1], 0, name)
            for i in range(1, steps):
                after = geometry.edge_depth_projected_um(pixel_2d[p0:p1], i, name)
                lost = sign * (flat[i - 1, p0:p1].astype(np.float64) - flat[i, p0:p1])
                deposit(out[:, p0:p1], before, after, lost, bins)
                before = after
    if len(chosen) == 2:
        out *= 0.5
    return out.reshape(bins.count, rows, cols)


def deposit(out: np.ndarray, depth_a_um: np.ndarray, depth_b_um: np.ndarray, value: np.ndarray, bins: DepthBins) -> None:
    """Add ``value`` of each pixel to ``out`` (bins, pixels), spread over the bins between its two depths.

    Each pass adds to one bin per pixel, so the scatter-add never meets a
    repeated index; pixels whose interval spans more bins stay for more passes.
    """
    fa = (np.minimum(depth_a_um, depth_b_um) - bins.start_um) / bins.step_um
    fb = (np.maximum(depth_a_um, depth_b_um) - bins.start_um) / bins.step_um
    with np.errstate(invalid="ignore"):
        usable = np.isfinite(fa) & np.isfinite(fb) & (fb >= 0) & (fa < bins.count) & (value != 0)
    pix = np.nonzero(usable)[0]
    if pix.size == 0:
        return
    fa, fb, value = fa[pix], fb[pix], value[pix]
    length = fb - fa
    point = length <= 1e-12  # the edge did not move in depth: all of it into the one bin
    # Bins outside the range take nothing: start at bin 0 and stop at the last bin.
    first = np.maximum(np.floor(fa), 0).astype(np.int64)
    span = np.minimum(np.floor(fb).astype(np.int64), bins.count - 1) - first
    per_unit = np.where(point, 0.0, value / np.where(point, 1.0, length))
    j = 0
    while pix.size:
        k = first + j
        share = np.where(point, value, per_unit * (np.minimum(fb, k + 1) - np.maximum(fa, k)))
        out[k, pix] += share
        more = span > j
        if not more.all():
            pix, fa, fb, value, first, span, per_unit, point = (
                a[more] for a in (pix, fa, fb, value, first, span, per_unit, point))
        j += 1


def row_blocks(height: int, rows_per_block: int) -> list[tuple[int, int]]:
    return [(r, min(height, r + rows_per_block)) for r in range(0, height, rows_per_block)]


def reconstruct_rows(
    path: str,
    dataset_path: str,
    geometry: ScanGeometry,
    bins: DepthBins,
    edge: EdgeChoice,
    row_start: int,
    row_stop: int,
    staged: tuple[str, ...] = (),
) -> np.ndarray:
    """One block of detector rows, read from the scan file itself (so that a dask worker needs only the path;
    ``staged``: the job's input files, which alone the file may lead to)."""
    from .reader import read_rows

    images = read_rows(path, dataset_path, row_start, row_stop, staged)
    pixel_um = geometry.detector.pixel_positions_um(rows=slice(row_start, row_stop))
    return reconstruct_block(images, pixel_um, geometry, bins, edge).astype(np.float32)


def reconstruct_file(
    path: str,
    dataset_path: str,
    geometry: ScanGeometry,
    bins: DepthBins,
    edge: EdgeChoice = "leading",
    *,
    rows_per_block: int = 64,
    client=None,
    progress: Callable[[float, str], None] | None = None,
    staged: tuple[str, ...] = (),
) -> np.ndarray:
    """(depths, height, width) float32 depth-resolved stack of a scan file.

    With a dask ``client`` the row blocks run as tasks on its workers; the
    result is the same, to the bit, as running them here. A block holds at
    most ``BLOCK_BUDGET_BYTES`` of images, whatever ``rows_per_block`` asks.
    """
    height, width = geometry.detector.height_px, geometry.detector.width_px
    rows_per_block = max(1, min(rows_per_block, BLOCK_BUDGET_BYTES // (8 * geometry.steps * width)))
    blocks = row_blocks(height, rows_per_block)
    staged = tuple(str(p) for p in staged)
    stack = np.empty((bins.count, height, width), dtype=np.float32)
    report = progress or (lambda fraction, message: None)
    if client is None:
        for n, (r0, r1) in enumerate(blocks, 1):
            stack[:, r0:r1] = reconstruct_rows(str(path), dataset_path, geometry, bins, edge, r0, r1, staged)
            report(n / len(blocks), f"reconstructed rows {r0}..{r1 - 1} of {height}")
        return stack

    from distributed import as_completed

    [geometry_future] = client.scatter([geometry], broadcast=True)
    futures = {
        client.submit(reconstruct_rows, str(path), dataset_path, geometry_future, bins, edge, r0, r1, staged, pure=False): (r0, r1)
        for r0, r1 in blocks
    }
    for n, future in enumerate(as_completed(futures), 1):
        r0, r1 = futures[future]
        stack[:, r0:r1] = future.result()
        report(n / len(blocks), f"reconstructed rows {r0}..{r1 - 1} of {height} on dask")
        future.release()
    return stack


def depth_per_step_um(geometry: ScanGeometry, edge: str = "leading") -> float:
    """Median, over a sample of pixels, of the depth the edge sweeps per wire step: the scan's own depth resolution."""
    det = geometry.detector
    rows = np.linspace(0, det.height_px - 1, min(det.height_px, 16)).astype(int)
    cols = np.linspace(0, det.width_px - 1, min(det.width_px, 16)).astype(int)
    pixel_2d = geometry.project(det.pixel_positions_um(rows=rows, cols=cols).reshape(-1, 3))
    first = geometry.edge_depth_projected_um(pixel_2d, 0, edge)
    last = geometry.edge_depth_projected_um(pixel_2d, geometry.steps - 1, edge)
    per_step = np.abs(last - first) / max(1, geometry.steps - 1)
    per_step = per_step[np.isfinite(per_step)]
    return float(np.median(per_step)) if per_step.size else float("nan")


def reconstruct_pixel_loop(images: np.ndarray, geometry: ScanGeometry, bins: DepthBins, edge: EdgeChoice = "leading") -> np.ndarray:
    """The same reconstruction written pixel by pixel, bin by bin in plain Python.

    Slow by design: the reference the vectorised ``reconstruct_block`` is
    tested and benchmarked against. ``images`` is the whole (steps, y, x) stack.
    """
    steps, height, width = images.shape
    out = np.zeros((bins.count, height, width))
    pixels = geometry.detector.pixel_positions_um()
    chosen = edges_of(edge)
    for row in range(height):
        for col in range(width):
            pixel = pixels[row, col]
            for name in chosen:
                sign = 1.0 if name == "leading" else -1.0
                depths = [float(geometry.edge_depth_um(pixel, i, name)) for i in range(steps)]
                for i in range(1, steps):
                    lost = sign * (float(images[i - 1, row, col]) - float(images[i, row, col]))
                    lo, hi = sorted((depths[i - 1], depths[i]))
                    if lost == 0 or not (math.isfinite(lo) and math.isfinite(hi)):
                        continue
                    for k in range(bins.count):
                        b0 = bins.start_um + k * bins.step_um
                        b1 = b0 + bins.step_um
                        if hi - lo <= 1e-12 * bins.step_um:
                            if b0 <= lo < b1:
                                out[k, row, col] += lost / len(chosen)
                        else:
                            overlap = min(hi, b1) - max(lo, b0)
                            if overlap > 0:
                                out[k, row, col] += lost * overlap / (hi - lo) / len(chosen)
    return out
