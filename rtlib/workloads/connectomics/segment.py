"""From boundary and foreground probabilities to 3D neurons: seeds, seeded growth, agglomeration, size filter.

The steps, each of which only ever looks at a bounded neighbourhood (so
that ``blockwise`` can run them block by block with overlaps and get the
very same result as on the whole volume):

1. *Foreground*: neuron-interior probability >= ``foreground_threshold``,
   outside the mask.
2. *Seeds*: confident interior away from membranes (boundary probability
   <= ``seed_boundary_max``), eroded in-plane by ``seed_erosion_px`` (so
   that a gap of a few pixels in a membrane does not join two neurons'
   interiors), cut into 4-connected pieces per section
   (cc3d); pieces of adjacent sections join when they overlap by at least
   ``seed_link_overlap`` of the smaller one. Sections show membranes only
   in-plane: a neurite passing over another in z touches it interior to
   interior, by a sliver, while a neurite's own pieces overlap almost fully.
   Seeds smaller than ``min_seed_voxels`` are dropped.
3. *Growth* (a watershed by flooding levels): seeds grow in-plane into
   foreground, one pixel per step, first through voxels whose boundary
   probability is below the lowest of ``growth_levels``, then the next
   level, ``growth_steps_px`` steps per level. Where two seeds meet, the
   larger label wins, so the result does not depend on the visiting order.
   Growth is in-plane because sections are 2.5x thicker than a pixel and
   seeds already join the sections of a neurite.
4. *Agglomeration*: neighbouring segments whose shared faces are mostly
   not membrane (mean boundary probability below ``merge_threshold``)
   are merged (union-find), repairing neurons split at a mitochondrion;
   so are a segment and the one that encloses it (``enclosed_share`` of its
   surface or more against it: an organelle outlined by the network, never
   a neuron, which meets several neighbours or the background).
5. Objects smaller than ``min_voxels`` are dropped; the rest are numbered
   1..N in the order of their first voxel in the volume (C order).

A plain baseline (Otsu threshold + distance-transform watershed on the raw
image) is here too, to measure the network against.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class SegmentSettings:
    foreground_threshold: float = 0.5
    seed_boundary_max: float = 0.2  # seeds: foreground and boundary probability below this
    min_seed_voxels: int = 30
    # seed pieces of adjacent sections join when they overlap by this share of the smaller: 0.6, as a thin
    # neurite's last small pieces can lie a third over a thicker neighbour's in the next section (seed 8's
    # neuron 5 joined neuron 9 so at 0.3), while a neurite's own pieces overlap almost fully
    seed_link_overlap: float = 0.6
    growth_levels: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9, 1.0)  # boundary probabilities seeds grow through, in turn
    growth_steps_px: int = 4  # growth steps per level (pixels)
    merge_threshold: float = 0.35  # merge two segments when their interface's mean boundary probability is below
    min_voxels: int = 300
    seed_erosion_px: float = 0.0  # seed cores shrink in-plane by this (breaks bridges through gaps in a membrane)
    enclosed_share: float = 0.6  # a segment sharing this much of its surface with one other is part of it (> 1: never)

    @property
    def seed_halo_px(self) -> int:
        return int(np.ceil(self.seed_erosion_px)) + 1 if self.seed_erosion_px > 0 else 0

    @property
    def reach_px(self) -> int:
        """How far (in-plane pixels) a seed can grow: the overlap block-wise growth needs."""
        return len(self.growth_levels) * self.growth_steps_px


def as_probability(values: np.ndarray) -> np.ndarray:
    """float32 probabilities from float data or uint8 (x 255) data, the same way for every block."""
    if values.dtype == np.uint8:
        return values.astype(np.float32) / np.float32(255)
    return values.astype(np.float32, copy=False)


def foreground(foreground_prob: np.ndarray, mask: np.ndarray | None, settings: SegmentSettings) -> np.ndarray:
    fg = as_probability(foreground_prob) >= settings.foreground_threshold
    if mask is not None:
        fg &= ~mask.astype(bool)
    return fg


def seed_mask(boundary_prob: np.ndarray, foreground_prob: np.ndarray, mask: np.ndarray | None,
              settings: SegmentSettings) -> np.ndarray:
    """Bool: confident interior away from membranes, eroded in-plane by ``seed_erosion_px`` (reads that far around)."""
    cores = foreground(foreground_prob, mask, settings) & (as_probability(boundary_prob) <= settings.seed_boundary_max)
    if settings.seed_erosion_px > 0:
        # a membrane the network drew with a gap of a few pixels leaves a narrow bridge between two neurons'
        # interiors: eroded, the bridge is gone, while each interior keeps its core
        for z in range(cores.shape[0]):
            if cores[z].any():
                cores[z] = ndi.distance_transform_edt(cores[z]) > settings.seed_erosion_px
    return cores


def seed_cores(boundary_prob: np.ndarray, foreground_prob: np.ndarray, mask: np.ndarray | None,
               settings: SegmentSettings, inner: tuple[slice, ...] | None = None) -> np.ndarray:
    """Provisional in-plane seed pieces (uint32, 4-connected per section) of one block; numbered from 1 in the block.

    The inputs may hold a halo of ``settings.seed_halo_px`` around the block, whose place in them is ``inner``."""
    cores = seed_mask(boundary_prob, foreground_prob, mask, settings)
    if inner is not None:
        cores = cores[inner]
    out = np.zeros(cores.shape, dtype=np.uint32)
    offset = 0
    for z in range(cores.shape[0]):
        pieces, n = cc3d.connected_components(cores[z], connectivity=4, return_N=True)
        out[z] = np.where(pieces > 0, pieces.astype(np.uint32) + np.uint32(offset), 0)
        offset += int(n)
    return out


def grow(seeds: np.ndarray, boundary_prob: np.ndarray, fg: np.ndarray, settings: SegmentSettings) -> np.ndarray:
    """Seeds grown in-plane through ``fg`` by boundary level; at most ``settings.reach_px`` pixels."""
    labels = seeds.copy()
    boundary = as_probability(boundary_prob)
    footprint = np.ones((1, 3, 3), dtype=bool)
    for level in settings.growth_levels:
        allowed = fg & (boundary <= np.float32(level))
        for _ in range(settings.growth_steps_px):
            free = allowed & (labels == 0)
            if not free.any():
                break
            # the largest neighbouring label wins: an order-free rule, so every block decides alike
            grown = ndi.grey_dilation(labels, footprint=footprint, mode="nearest")
            take = free & (grown > 0)
            if not take.any():
                break
            labels[take] = grown[take]
    return labels


def face_pairs(labels: np.ndarray, axis: int, values: np.ndarray | None = None):
    """(pairs (n, 2) with a < b, counts, sums of ``values``) over faces across ``axis`` between two labels."""
    la = np.moveaxis(labels, axis, 0)
    a, b = la[:-1].ravel(), la[1:].ravel()
    sel = (a != b) & (a > 0) & (b > 0)
    empty = (np.zeros((0, 2), np.uint64), np.zeros(0, np.int64), np.zeros(0, np.float64))
    if not sel.any():
        return empty
    lo = np.minimum(a[sel], b[sel]).astype(np.uint64)
    hi = np.maximum(a[sel], b[sel]).astype(np.uint64)
    stacked = np.stack([lo, hi], axis=1)
    pairs, inverse, counts = np.unique(stacked, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    if values is None:
        sums = np.zeros(len(pairs))
    else:
        va = np.moveaxis(as_probability(values), axis, 0)
        v = 0.5 * (va[:-1].ravel()[sel].astype(np.float64) + va[1:].ravel()[sel])
        sums = np.bincount(inverse, weights=v, minlength=len(pairs))
    return pairs, counts.astype(np.int64), sums


def label_stats(labels: np.ndarray, origin: tuple[int, int, int], volume_shape: tuple[int, int, int]):
    """(labels, voxel counts, first global C-order index) of the non-zero labels of a block at ``origin``."""
    flat = labels.ravel()
    nz = np.flatnonzero(flat)
    if len(nz) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    # np.flatnonzero is in the block's C order, which is also the volume's C order within a box
    ids, first, counts = np.unique(flat[nz], return_index=True, return_counts=True)
    z, y, x = np.unravel_index(nz[first], labels.shape)
    _, h, w = volume_shape
    lin = ((z + origin[0]).astype(np.int64) * h + (y + origin[1])) * w + (x + origin[2])
    return ids.astype(np.uint64), counts.astype(np.int64), lin.astype(np.int64)


def union_find_components(ids: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """For each of ``ids`` (unique, uint64), the index of its component's representative among ``ids``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(ids)
    if n == 0:
        return np.zeros(0, np.int64)
    if len(edges):
        rows = np.searchsorted(ids, edges[:, 0])
        cols = np.searchsorted(ids, edges[:, 1])
        graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    else:
        graph = coo_matrix((n, n))
    _, component = connected_components(graph, directed=False)
    return component


def baseline_segment(image: np.ndarray, mask: np.ndarray | None = None, *, min_voxels: int = 300) -> np.ndarray:
    """Threshold (Otsu) + distance-transform seeded watershed on the raw image: what the network must beat."""
    import fastremap
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    smooth = ndi.gaussian_filter(image.astype(np.float32), (0, 1, 1))
    valid = ~mask if mask is not None else np.ones(image.shape, bool)
    fg = (smooth > threshold_otsu(smooth[valid])) & valid
    distance = ndi.distance_transform_edt(fg, sampling=(2.5, 1, 1))
    peaks = (distance == ndi.maximum_filter(distance, size=(3, 9, 9))) & (distance > 2)
    markers = cc3d.connected_components(peaks, connectivity=26)
    labels = watershed(-distance, markers=markers.astype(np.int64), mask=fg).astype(np.uint32)
    labels = cc3d.dust(cc3d.connected_components(labels, connectivity=26), threshold=min_voxels, connectivity=26)
    labels, _ = fastremap.renumber(labels, in_place=True)
    return labels.astype(np.uint32)


def segment(probabilities: np.ndarray, mask: np.ndarray | None = None, settings: SegmentSettings | None = None) -> np.ndarray:
    """uint32 neurons of a whole in-memory volume from (boundary, foreground) probabilities (float or uint8)."""
    from .blockwise import BlockGrid, segment_blocks

    boundary, fg = probabilities[0], probabilities[1]
    arrays = {"boundary": boundary, "foreground": fg, "mask": mask if mask is not None else np.zeros(boundary.shape, bool)}
    return segment_blocks(arrays, BlockGrid(boundary.shape, boundary.shape), settings or SegmentSettings())
