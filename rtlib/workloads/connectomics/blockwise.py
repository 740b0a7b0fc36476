"""Block-wise processing of volumes larger than memory: U-Net inference, segmentation and contacts over Zarr.

A volume is cut into a grid of blocks (the Zarr chunks, so two tasks never
write the same chunk). Each step reads its block plus an overlap (*halo*)
as wide as the step's reach, computes, and writes the block's own part;
what has to be decided globally (which seed pieces are one seed, which
segments merge, which objects are too small, the final numbering) is
reduced from small per-block tables by union-find. Every step is exact:
the result is the same voxel for voxel, whatever the blocking, because

* the U-Net's receptive field (+-8 sections, +-22 px) fits in the halo
  (``PREDICT_HALO``) and blocks start on multiples of its pooling (4 px);
* seed pieces are joined across block faces from face tables, growth
  reads a halo of its reach,
  interfaces and contacts count each face in the block of its upper voxel;
* objects are numbered by their first voxel in the volume, not by a block.

Blocks run in turn (``client=None``) or as tasks on a dask client: the
LocalCluster or dask-jobqueue cluster the run is a task of, or any other.
The same functions on in-memory arrays with one block are the whole-volume path.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .unet import CHANNELS
from .segment import SegmentSettings, face_pairs, foreground, grow, label_stats, seed_cores, union_find_components

# U-Net receptive field radius: 8 sections in z, 22 px in-plane (rounded up to the pooling, 4 px)
PREDICT_HALO = (8, 24, 24)
POOLING_PX = 4


def predict_halo(factor: int = 1) -> tuple[int, int, int]:
    """The halo in full-resolution px when the network reads the image ``factor`` times coarser in-plane
    (+1 coarse cell for the bilinear upsampling)."""
    return (PREDICT_HALO[0], (PREDICT_HALO[1] + POOLING_PX) * factor, (PREDICT_HALO[2] + POOLING_PX) * factor) if factor > 1 \
        else PREDICT_HALO

Slices = tuple[slice, slice, slice]


@dataclass(frozen=True)
class BlockGrid:
    shape: tuple[int, int, int]
    block: tuple[int, int, int]

    def __post_init__(self):
        if any(b <= 0 for b in self.block):
            raise ValueError(f"block shape {self.block} must be positive in every axis (sections, px, px)")

    def cores(self) -> list[tuple[int, Slices]]:
        starts = [range(0, s, b) for s, b in zip(self.shape, self.block)]
        return [(i, tuple(slice(o, min(o + b, s)) for o, b, s in zip(origin, self.block, self.shape)))
                for i, origin in enumerate(itertools.product(*starts))]

    def __len__(self) -> int:
        return int(np.prod([-(-s // b) for s, b in zip(self.shape, self.block)]))

    def outer(self, core: Slices, halo: tuple[int, int, int]) -> tuple[Slices, Slices]:
        """(the core grown by ``halo`` and clipped to the volume, the core's place inside it)."""
        outer = tuple(slice(max(0, c.start - h), min(s, c.stop + h)) for c, h, s in zip(core, halo, self.shape))
        inner = tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(core, outer))
        return outer, inner

    def check_predictable(self, factor: int = 1) -> None:
        step = POOLING_PX * factor
        for axis in (1, 2):
            if self.block[axis] < self.shape[axis] and self.block[axis] % step:
                raise ValueError(f"block side {self.block[axis]} px must be a multiple of {step} px (the U-Net's "
                                 f"pooling, {POOLING_PX}, times the in-plane reading factor {factor}) so that blocks and "
                                 "the whole volume see the same pixel grid; choose e.g. 128")


def lower_extended(core: Slices, axis: int) -> Slices:
    """The core and, along ``axis``, the one plane before it: the faces a block owns."""
    return tuple(slice(max(0, s.start - 1), s.stop) if a == axis else s for a, s in enumerate(core))


# -- where the arrays live ------------------------------------------------------------------


class MemoryArrays:
    """Arrays in a dict: the whole-volume path (blocks run in this process only)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = dict(arrays)

    def read(self, name: str, where: Slices) -> np.ndarray:
        return np.asarray(self.arrays[name][where])

    def write(self, name: str, where: Slices, data: np.ndarray) -> None:
        self.arrays[name][where] = data

    def create(self, name: str, shape, dtype, chunks) -> None:
        self.arrays[name] = np.zeros(shape, dtype=dtype)

    def delete(self, name: str) -> None:
        self.arrays.pop(name, None)

    def get(self, name: str) -> np.ndarray:
        return self.arrays[name]


@dataclass(frozen=True)
class ZarrArrays:
    """Arrays of a Zarr group on a filesystem every worker sees; picklable, so tasks open it themselves."""

    path: str

    def _group(self, mode: str = "r+"):
        import zarr

        return zarr.open_group(self.path, mode=mode)

    def read(self, name: str, where: Slices) -> np.ndarray:
        return np.asarray(self._group("r")[name][where])

    def write(self, name: str, where: Slices, data: np.ndarray) -> None:
        self._group()[name][where] = data

    def create(self, name: str, shape, dtype, chunks) -> None:
        self._group("a").create_array(name, shape=shape, dtype=dtype, chunks=tuple(min(c, s) for c, s in zip(chunks, shape)),
                                      fill_value=0, overwrite=True)

    def delete(self, name: str) -> None:
        group = self._group()
        if name in group:
            del group[name]

    def get(self, name: str):
        return self._group("r")[name]


def _store(arrays) -> MemoryArrays | ZarrArrays:
    if isinstance(arrays, (MemoryArrays, ZarrArrays)):
        return arrays
    if isinstance(arrays, (str, Path)):
        return ZarrArrays(str(arrays))
    return MemoryArrays(arrays)


def run_blocks(fn: Callable, calls: list[tuple], client=None) -> list:
    """``fn(*call)`` for every call: in turn here, or as tasks on a dask ``client``."""
    if client is None:
        return [fn(*call) for call in calls]
    futures = [client.submit(fn, *call, pure=False) for call in calls]
    return client.gather(futures)


def _check_client(store, client) -> None:
    if client is not None and isinstance(store, MemoryArrays):
        raise ValueError("block-wise tasks on a dask client need the arrays in a Zarr group (ZarrArrays or a path); "
                         "in-memory arrays run with client=None")


# -- U-Net inference ------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _cached_model(weights: str):
    from .unet import load_model

    return load_model(Path(weights) if weights else None)


def _in_dask_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
        return True
    except (ImportError, ValueError):
        return False


def _predict_block(store, grid: BlockGrid, core: Slices, weights: str, factor: int = 1) -> None:
    from .unet import predict_array

    if _in_dask_worker():
        import torch

        torch.set_num_threads(1)  # one task per worker thread: the cluster, not torch, spreads the work
    outer, inner = grid.outer(core, predict_halo(factor))
    prob = predict_array(_cached_model(weights), store.read("image", outer), factor)
    quantized = quantize(prob[(slice(None), *inner)])
    for channel, name in enumerate(CHANNELS):
        store.write(name, core, quantized[channel])


def quantize(prob: np.ndarray) -> np.ndarray:
    """Probabilities as uint8 x 255: what is stored and what segmentation reads."""
    return np.clip(np.rint(prob * 255), 0, 255).astype(np.uint8)


def predict_blocks(arrays, grid: BlockGrid, weights: str | None = None, client=None, factor: int = 1) -> None:
    """``boundary``, ``foreground`` and ``nontarget`` (uint8 probabilities x 255) from ``image``, block by block; the network
    reads the image ``factor`` times coarser in-plane (``unet.scale_factor``)."""
    store = _store(arrays)
    _check_client(store, client)
    grid.check_predictable(factor)
    for name in CHANNELS:
        store.create(name, grid.shape, np.uint8, grid.block)
    run_blocks(_predict_block, [(store, grid, core, str(weights or ""), factor) for _, core in grid.cores()], client)


# -- masking from the network's output ------------------------------------------------------


def _mask_block(store, grid: BlockGrid, core: Slices, settings) -> None:
    from .mask import network_mask

    outer, inner = grid.outer(core, (0, settings.reach_px, settings.reach_px))
    found = network_mask(store.read("nontarget", outer), settings)[inner]
    store.write("mask", core, store.read("mask", core).astype(bool) | found)


def mask_blocks(arrays, grid: BlockGrid, settings, client=None) -> None:
    """``mask`` |= what the network finds is no neuropil (``mask.network_mask`` of ``nontarget``), block by block."""
    store = _store(arrays)
    _check_client(store, client)
    run_blocks(_mask_block, [(store, grid, core, settings) for _, core in grid.cores()], client)


# -- segmentation ---------------------------------------------------------------------------


def _seed_block(store, grid: BlockGrid, index: int, core: Slices, settings: SegmentSettings):
    halo = settings.seed_halo_px
    outer, inner = grid.outer(core, (0, halo, halo))
    mask = store.read("mask", outer) if _has(store, "mask") else None
    provisional = seed_cores(store.read("boundary", outer), store.read("foreground", outer), mask, settings, inner)
    # globally unique provisional ids: the block's index in the high 32 bits
    ids = provisional.astype(np.uint64)
    ids[provisional > 0] += np.uint64(index + 1) << np.uint64(32)
    store.write("seeds_provisional", core, ids)
    origin = tuple(s.start for s in core)
    return label_stats(ids, origin, grid.shape)


def _has(store, name: str) -> bool:
    if isinstance(store, MemoryArrays):
        return name in store.arrays
    return name in store._group("r")


def _joins_block(store, name: str, core: Slices):
    """(label pairs touching across the in-plane block faces this block owns, (pairs, counts) of z faces it owns)."""
    pairs = []
    for axis in (1, 2):
        if core[axis].start == 0:
            continue
        region = store.read(name, lower_extended(core, axis))
        plane = np.moveaxis(region, axis, 0)[:2]
        p, _, _ = face_pairs(np.moveaxis(plane, 0, axis), axis)
        pairs.append(p)
    in_plane = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.uint64)
    z_pairs, z_counts, _ = face_pairs(store.read(name, lower_extended(core, 0)), 0)
    return in_plane, (z_pairs, z_counts)


def _seed_links(stats: list, joins: list, overlap: float) -> np.ndarray:
    """Edges between provisional seed ids: in-plane pieces cut by block faces, and z overlaps large enough."""
    in_plane = np.concatenate([j[0] for j in joins] + [np.zeros((0, 2), np.uint64)])
    ids = np.unique(np.concatenate([s[0] for s in stats] + [np.zeros(0, np.uint64)]))
    if len(ids) == 0:
        return in_plane
    counts = np.zeros(len(ids), np.int64)
    for s in stats:
        np.add.at(counts, np.searchsorted(ids, s[0]), s[1])
    piece = union_find_components(ids, in_plane)  # one section's piece, whole again across block faces
    area = np.bincount(piece, weights=counts)
    rep = np.zeros(len(area), np.int64)
    rep[piece[::-1]] = np.arange(len(ids))[::-1]  # a provisional id standing for each piece
    z_pairs = np.concatenate([j[1][0] for j in joins] + [np.zeros((0, 2), np.uint64)])
    z_counts = np.concatenate([j[1][1] for j in joins] + [np.zeros(0, np.int64)])
    if len(z_pairs) == 0:
        return in_plane
    pa = piece[np.searchsorted(ids, z_pairs[:, 0])]
    pb = piece[np.searchsorted(ids, z_pairs[:, 1])]
    lo, hi = np.minimum(pa, pb), np.maximum(pa, pb)
    keys, inverse = np.unique(np.stack([lo, hi], 1), axis=0, return_inverse=True)
    shared = np.bincount(inverse.ravel(), weights=z_counts, minlength=len(keys))
    linked = shared >= overlap * np.minimum(area[keys[:, 0]], area[keys[:, 1]])
    z_edges = np.stack([ids[rep[keys[linked, 0]]], ids[rep[keys[linked, 1]]]], 1)
    return np.concatenate([in_plane, z_edges.astype(np.uint64)])


def _canonical_mapping(stats: list, keep_min_voxels: int, edges: np.ndarray) -> dict[int, int]:
    """Provisional id -> final id: joined by ``edges``, dropped under the size, numbered by first voxel."""
    ids = np.concatenate([s[0] for s in stats]) if stats else np.zeros(0, np.uint64)
    if len(ids) == 0:
        return {}
    counts = np.concatenate([s[1] for s in stats])
    first = np.concatenate([s[2] for s in stats])
    order = np.argsort(ids, kind="stable")
    ids, counts, first = ids[order], counts[order], first[order]
    # the same id may come from several blocks (a segment spans them): combine those rows
    unique, start = np.unique(ids, return_index=True)
    counts = np.add.reduceat(counts, start)
    first = np.minimum.reduceat(first, start)
    component = union_find_components(unique, edges)
    n = int(component.max()) + 1
    size = np.bincount(component, weights=counts, minlength=n)
    comp_first = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(comp_first, component, first)
    kept = np.flatnonzero(size >= keep_min_voxels)
    rank = np.zeros(n, np.int64)
    rank[kept[np.argsort(comp_first[kept], kind="stable")]] = np.arange(1, len(kept) + 1)
    return dict(zip(unique.tolist(), rank[component].tolist()))


def _remap(labels: np.ndarray, mapping: dict[int, int], dtype=np.uint32) -> np.ndarray:
    import fastremap

    if labels.size == 0 or not mapping:
        return np.zeros(labels.shape, dtype)
    present = fastremap.unique(labels)
    table = {int(k): int(mapping.get(int(k), 0)) for k in present}
    table[0] = 0
    return fastremap.remap(labels, table, preserve_missing_labels=False).astype(dtype)


def _grow_block(store, grid: BlockGrid, core: Slices, seed_map: dict[int, int], settings: SegmentSettings) -> None:
    reach = settings.reach_px
    outer, inner = grid.outer(core, (0, reach, reach))  # growth is in-plane: no overlap in z
    seeds = _remap(store.read("seeds_provisional", outer), seed_map)
    mask = store.read("mask", outer) if _has(store, "mask") else None
    fg = foreground(store.read("foreground", outer), mask, settings)
    grown = grow(seeds, store.read("boundary", outer), fg, settings)
    store.write("segments", core, grown[inner])


def _interfaces_block(store, core: Slices):
    """(pairs, face counts, boundary sums) over the faces this block owns, per axis, and then
    (labels, surface face counts): every face a segment shares with another label or background."""
    out = []
    surface_ids, surface_counts = [], []
    for axis in range(3):
        where = lower_extended(core, axis)
        segments = store.read("segments", where)
        out.append(face_pairs(segments, axis, store.read("boundary", where)))
        moved = np.moveaxis(segments, axis, 0)
        a, b = moved[:-1].ravel(), moved[1:].ravel()
        differ = a != b
        sides = np.concatenate([a[differ], b[differ]])
        sides = sides[sides > 0]
        ids, counts = np.unique(sides, return_counts=True)
        surface_ids.append(ids.astype(np.uint64))
        surface_counts.append(counts.astype(np.int64))
    out.append((np.concatenate(surface_ids), np.concatenate(surface_counts)))
    return out


def _merge_edges(results: list, threshold: float, enclosed_share: float = 1.1) -> np.ndarray:
    """Pairs to merge: their interface is not membrane (mean boundary below ``threshold``), or one of them is
    enclosed by the other (shares at least ``enclosed_share`` of its whole surface with it: a mitochondrion or
    other organelle the network outlined, never a neuron, which meets several neighbours or background)."""
    surfaces = [block[3] for block in results]
    results = [block[:3] for block in results]
    rows = [p for block in results for p in block if len(p[0])]
    if not rows:
        return np.zeros((0, 2), np.uint64)
    pairs = np.concatenate([r[0] for r in rows])
    counts = np.concatenate([r[1] for r in rows])
    sums = np.concatenate([r[2] for r in rows])
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    total = np.bincount(inverse, weights=sums, minlength=len(unique))
    n = np.bincount(inverse, weights=counts, minlength=len(unique))
    merge = total / n < threshold
    if enclosed_share <= 1.0:
        ids = np.concatenate([s[0] for s in surfaces])
        surface_ids, where = np.unique(ids, return_inverse=True)
        surface = np.bincount(where.ravel(), weights=np.concatenate([s[1] for s in surfaces]), minlength=len(surface_ids))
        of = lambda labels: surface[np.searchsorted(surface_ids, labels)]  # noqa: E731
        merge |= n >= enclosed_share * np.minimum(of(unique[:, 0]), of(unique[:, 1]))
    return unique[merge]


def _object_stats_block(store, grid: BlockGrid, core: Slices):
    return label_stats(store.read("segments", core).astype(np.uint64), tuple(s.start for s in core), grid.shape)


def _finish_block(store, core: Slices, mapping: dict[int, int]) -> None:
    store.write("segmentation", core, _remap(store.read("segments", core), mapping))


def segment_blocks(arrays, grid: BlockGrid, settings: SegmentSettings | None = None, client=None,
                   keep_intermediate: bool = False) -> np.ndarray | None:
    """``segmentation`` (uint32) from ``boundary``, ``foreground`` and optional ``mask``, block by block.

    Returns the segmentation for in-memory arrays; with a Zarr group it is written there as ``segmentation``."""
    settings = settings or SegmentSettings()
    store = _store(arrays)
    _check_client(store, client)
    cores = grid.cores()
    store.create("seeds_provisional", grid.shape, np.uint64, grid.block)
    stats = run_blocks(_seed_block, [(store, grid, i, core, settings) for i, core in cores], client)
    joins = run_blocks(_joins_block, [(store, "seeds_provisional", core) for _, core in cores], client)
    seed_map = _canonical_mapping(stats, settings.min_seed_voxels, _seed_links(stats, joins, settings.seed_link_overlap))

    store.create("segments", grid.shape, np.uint32, grid.block)
    run_blocks(_grow_block, [(store, grid, core, seed_map, settings) for _, core in cores], client)
    interfaces = run_blocks(_interfaces_block, [(store, core) for _, core in cores], client)
    merges = _merge_edges(interfaces, settings.merge_threshold, settings.enclosed_share)
    object_stats = run_blocks(_object_stats_block, [(store, grid, core) for _, core in cores], client)
    final_map = _canonical_mapping(object_stats, settings.min_voxels, merges)

    store.create("segmentation", grid.shape, np.uint32, grid.block)
    run_blocks(_finish_block, [(store, core, final_map) for _, core in cores], client)
    if not keep_intermediate:
        store.delete("seeds_provisional")
        store.delete("segments")
    return store.get("segmentation") if isinstance(store, MemoryArrays) else None


# -- contacts -------------------------------------------------------------------------------


def _contacts_block(store, core: Slices, name: str):
    return [face_pairs(store.read(name, lower_extended(core, axis)), axis)[:2] for axis in range(3)]


def contacts_blocks(arrays, grid: BlockGrid, spacing_nm: tuple[float, float, float], name: str = "segmentation",
                    client=None) -> dict[tuple[int, int], float]:
    """{(a, b): contact area in nm²} of the labels in ``name``, block by block (each face counted once)."""
    store = _store(arrays)
    _check_client(store, client)
    dz, dy, dx = spacing_nm
    face_nm2 = (dy * dx, dz * dx, dz * dy)  # a face across z, y, x
    areas: dict[tuple[int, int], float] = {}
    for block in run_blocks(_contacts_block, [(store, core, name) for _, core in grid.cores()], client):
        for axis, (pairs, counts) in enumerate(block):
            for (a, b), n in zip(pairs.tolist(), counts.tolist()):
                areas[(a, b)] = areas.get((a, b), 0.0) + n * face_nm2[axis]
    return areas


# -- per-neuron summaries ---------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSummary:
    """One label's voxel count, centroid (z, y, x px) and bounding box [lo, hi) in voxels, from block tables."""

    voxels: int
    centroid_px: tuple[float, float, float]
    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    @property
    def box(self) -> Slices:
        return tuple(slice(a, b) for a, b in zip(self.lo, self.hi))

    @property
    def box_voxels(self) -> int:
        return int(np.prod(np.subtract(self.hi, self.lo)))


def _summary_block(store, core: Slices, name: str):
    """(ids, counts, coordinate sums (n, 3), box lows (n, 3), box highs (n, 3)) of the labels in one block."""
    labels = store.read(name, core)
    nz = np.flatnonzero(labels)
    if len(nz) == 0:
        empty = np.zeros((0, 3), np.int64)
        return np.zeros(0, np.uint64), np.zeros(0, np.int64), empty.astype(np.float64), empty, empty
    values = labels.ravel()[nz]
    order = np.argsort(values, kind="stable")
    values, coords = values[order], np.stack(np.unravel_index(nz[order], labels.shape), 1)
    coords += np.array([s.start for s in core])
    ids, start, counts = np.unique(values, return_index=True, return_counts=True)
    sums = np.add.reduceat(coords.astype(np.float64), start, axis=0)
    lows = np.minimum.reduceat(coords, start, axis=0)
    highs = np.maximum.reduceat(coords, start, axis=0) + 1
    return ids.astype(np.uint64), counts.astype(np.int64), sums, lows, highs


def label_summary_blocks(arrays, grid: BlockGrid, name: str = "segmentation", client=None) -> dict[int, LabelSummary]:
    """{label: LabelSummary} of the non-zero labels in ``name``, reduced from per-block tables (never the whole volume)."""
    store = _store(arrays)
    _check_client(store, client)
    parts = run_blocks(_summary_block, [(store, core, name) for _, core in grid.cores()], client)
    ids = np.concatenate([p[0] for p in parts])
    if len(ids) == 0:
        return {}
    unique, inverse = np.unique(ids, return_inverse=True)
    inverse = inverse.ravel()
    counts = np.bincount(inverse, weights=np.concatenate([p[1] for p in parts]), minlength=len(unique))
    sums = np.stack([np.bincount(inverse, weights=np.concatenate([p[2][:, a] for p in parts]), minlength=len(unique))
                     for a in range(3)], 1)
    lows = np.full((len(unique), 3), np.iinfo(np.int64).max)
    highs = np.zeros((len(unique), 3), np.int64)
    np.minimum.at(lows, inverse, np.concatenate([p[3] for p in parts]))
    np.maximum.at(highs, inverse, np.concatenate([p[4] for p in parts]))
    return {int(k): LabelSummary(int(n), tuple((s / n).tolist()), tuple(lo.tolist()), tuple(hi.tolist()))
            for k, n, s, lo, hi in zip(unique.tolist(), counts, sums, lows, highs)}


def describe(grid: BlockGrid) -> dict[str, Any]:
    return {"blocks": len(grid), "block_shape": list(grid.block)}
