"""Skeletons of the segmented neurons with kimimaro (TEASAR), in nm, and their SWC files.

rtlib keeps volumes as (z, y, x); kimimaro works in (x, y, z), so the labels
are passed transposed with ``anisotropy = (dx, dy, dz)`` in nm, and the
skeleton vertices come back in nm as (x, y, z), as SWC wants them.

TEASAR's raw skeleton is a path through voxel centres, which over-measures
and under-measures cable in three known ways; ``refine`` corrects each:

* *ticks*: a cut face at the volume's side (``fix_borders`` puts an end at
  the centre of every border contact, also where a neurite running through
  the sections merely grazes the side), or a bump of a rough segment, gets
  a terminal branch; one whose tip lies within ``tick_factor`` times the
  local radius of the rest of the skeleton stays inside the parent's own
  thickness and is removed (shallowest first, one at a time);
* *staircase*: in anisotropic voxels (40 nm sections, 16 nm pixels) the
  path steps sideways by whole pixels from section to section, adding up to
  15 % of length; the vertices between junctions are smoothed
  (``smoothing_iterations`` of neighbour averaging, ends and junctions fixed);
* *ends*: a neurite leaving the volume ends at the centre of the last voxel,
  half a voxel short of the volume's face (20 nm of a 40 nm section); an
  end vertex on the volume's border moves out by half a voxel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class TeasarSettings:
    scale: float = 2.0  # invalidation radius = scale * distance to boundary + const
    const_nm: float = 300.0
    dust_voxels: int = 200  # objects smaller than this get no skeleton
    tick_factor: float = 1.5  # a terminal branch whose tip lies within this x the local radius of the rest is removed
    smoothing_iterations: int = 6  # neighbour averaging of the vertices between junctions (voxel staircase)


def skeletonize(labels: np.ndarray, spacing_nm: tuple[float, float, float], settings: TeasarSettings | None = None,
                parallel: int = 1) -> dict:
    """{label: osteoid Skeleton (vertices in nm, x y z)} of every label of an in-memory volume."""
    settings = settings or TeasarSettings()
    found = _teasar(labels, spacing_nm, settings, parallel)
    return {label: refine(skel, spacing_nm, labels.shape, settings) for label, skel in found.items()}


def refine(skel, spacing_nm, volume_shape, settings: TeasarSettings):
    """``skel`` (vertices in nm, x y z, in the volume's frame) without ticks, smoothed, its border ends
    moved out to the volume's faces (see the module docstring). A new Skeleton; the input is unchanged."""
    from osteoid import Skeleton

    vertices = np.asarray(skel.vertices, dtype=np.float64)
    radii = np.asarray(skel.radii, dtype=np.float64)
    edges = _prune_ticks(vertices, np.asarray(skel.edges, dtype=np.int64).reshape(-1, 2), radii, settings.tick_factor)
    keep = np.unique(edges)
    if len(keep) == 0:
        keep = np.arange(min(1, len(vertices)))
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    vertices, radii, edges = vertices[keep].copy(), radii[keep], remap[edges]
    degree = np.bincount(edges.ravel(), minlength=len(vertices))
    voxel = np.array(spacing_nm[::-1], dtype=np.float64)  # (x, y, z) nm
    last = np.array(volume_shape[::-1], dtype=np.float64) - 1
    index = np.rint(vertices / voxel)
    ends = degree == 1
    vertices[ends] -= 0.5 * voxel * (index[ends] <= 0)
    vertices[ends] += 0.5 * voxel * (index[ends] >= last)
    vertices = _smooth(vertices, edges, degree, settings.smoothing_iterations)
    types = np.asarray(skel.vertex_types)[keep] if len(getattr(skel, "vertex_types", [])) == len(skel.vertices) else None
    out = Skeleton(vertices.astype(np.float32), edges.astype(np.uint32), radii.astype(np.float32), types, segid=skel.id)
    return out


def _prune_ticks(vertices: np.ndarray, edges: np.ndarray, radii: np.ndarray, factor: float) -> np.ndarray:
    """Edges without ticks: terminal branches whose tip lies within ``factor`` x the radius of the rest of
    the skeleton (at the nearest of its vertices), the shallowest (tip distance / radius) first."""
    from collections import defaultdict

    edges = [tuple(e) for e in edges.tolist()]
    while factor > 0 and edges:
        adjacent = defaultdict(set)
        for a, b in edges:
            adjacent[a].add(b)
            adjacent[b].add(a)
        shallowest = None
        for tip in [v for v, n in adjacent.items() if len(n) == 1]:
            path, previous, current = [tip], None, tip
            while len(adjacent[current]) < 3:
                onward = [n for n in adjacent[current] if n != previous]
                if not onward:
                    break
                previous, current = current, onward[0]
                path.append(current)
            if len(adjacent[current]) < 3:
                continue  # the skeleton is one path: its ends are no ticks
            branch = set(path[:-1])
            rest = np.array([v for v in adjacent if v not in branch])
            distance = np.linalg.norm(vertices[rest] - vertices[tip], axis=1)
            nearest = int(np.argmin(distance))
            depth = distance[nearest] / max(float(radii[rest[nearest]]), 1e-9)
            if depth < factor and (shallowest is None or depth < shallowest[0]):
                shallowest = (depth, branch)
        if shallowest is None:
            break
        edges = [e for e in edges if e[0] not in shallowest[1] and e[1] not in shallowest[1]]
    return np.asarray(edges, dtype=np.int64).reshape(-1, 2)


def _smooth(vertices: np.ndarray, edges: np.ndarray, degree: np.ndarray, iterations: int) -> np.ndarray:
    """Each vertex between two others moved to the mean of itself and its neighbours, ``iterations`` times."""
    inner = (degree == 2)[:, None]
    for _ in range(iterations):
        total = vertices.copy()
        np.add.at(total, edges[:, 0], vertices[edges[:, 1]])
        np.add.at(total, edges[:, 1], vertices[edges[:, 0]])
        vertices = np.where(inner, total / (1 + degree)[:, None], vertices)
    return vertices


def _teasar(labels: np.ndarray, spacing_nm, settings: TeasarSettings, parallel: int = 1) -> dict:
    import kimimaro

    dz, dy, dx = spacing_nm
    return kimimaro.skeletonize(
        np.asfortranarray(labels.T),
        teasar_params={"scale": settings.scale, "const": settings.const_nm, "pdrf_scale": 100000, "pdrf_exponent": 4},
        anisotropy=(dx, dy, dz),
        dust_threshold=settings.dust_voxels,
        fix_branching=True,
        fix_borders=True,
        progress=False,
        parallel=parallel,
    )


def _padded_box(summary, shape) -> tuple[slice, ...]:
    """The label's bounding box grown by one voxel, except where it meets the volume's edge.

    Then the object touches the crop's border only where it touches the volume's, and kimimaro's
    ``fix_borders`` sees the same borders as on the whole volume."""
    return tuple(slice(max(0, lo - 1), min(n, hi + 1)) for lo, hi, n in zip(summary.lo, summary.hi, shape))


def _skeletonize_batch(store, name: str, shape, batch: list, spacing_nm, settings: TeasarSettings) -> dict:
    out = {}
    origin_scale = np.array(spacing_nm[::-1], dtype=np.float64)  # (x, y, z) nm per voxel
    for label, summary in batch:
        box = _padded_box(summary, shape)
        mask = (store.read(name, box) == label).astype(np.uint8)
        found = _teasar(mask, spacing_nm, settings)
        if 1 not in found:
            continue
        skel = found[1]
        offset = np.array([box[2].start, box[1].start, box[0].start]) * origin_scale
        skel.vertices = (skel.vertices + offset).astype(np.float32)
        skel.id = label
        out[label] = refine(skel, spacing_nm, shape, settings)
    return out


def skeletonize_objects(arrays, summaries: dict, spacing_nm: tuple[float, float, float], settings: TeasarSettings | None = None,
                        *, shape: tuple[int, int, int], name: str = "segmentation", client=None,
                        batch_box_voxels: int = 32_000_000) -> dict:
    """{label: Skeleton} skeletonizing each neuron from its own bounding box, read from ``arrays`` (a Zarr group).

    Larger than memory: a task holds one neuron's box at a time, never the volume, so memory is set by
    the largest neuron. ``summaries`` come from ``blockwise.label_summary_blocks``; neurons are batched
    into tasks of at most ``batch_box_voxels`` box voxels (one neuron per task when larger), run in turn
    or on a dask ``client``. The skeletons are kimimaro's on the whole volume (tests compare the two)."""
    from .blockwise import _check_client, _store, run_blocks

    settings = settings or TeasarSettings()
    store = _store(arrays)
    _check_client(store, client)
    batches: list[list] = [[]]
    size = 0
    for label, summary in sorted(summaries.items()):
        if summary.voxels < settings.dust_voxels:
            continue  # kimimaro's dust threshold, decided from the block tables without reading the neuron
        if batches[-1] and size + summary.box_voxels > batch_box_voxels:
            batches.append([])
            size = 0
        batches[-1].append((label, summary))
        size += summary.box_voxels
    calls = [(store, name, tuple(shape), batch, tuple(spacing_nm), settings) for batch in batches if batch]
    skeletons: dict = {}
    for part in run_blocks(_skeletonize_batch, calls, client):
        skeletons.update(part)
    return skeletons


def cable_length_nm(skeleton) -> float:
    return float(skeleton.cable_length())


def write_swc(skeletons: dict, directory: Path) -> list[Path]:
    """One ``<label>.swc`` per skeleton; coordinates in nm."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for label, skel in sorted(skeletons.items()):
        path = directory / f"{int(label)}.swc"
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(skel.to_swc())
        tmp.replace(path)
        paths.append(path)
    return paths


def read_swc(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (n, 3) nm as x y z, edges (m, 2) vertex indices) of one SWC file."""
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not rows:
        return np.zeros((0, 3)), np.zeros((0, 2), dtype=int)
    table = np.asarray(rows, dtype=np.float64)
    ids = table[:, 0].astype(int)
    index = {i: k for k, i in enumerate(ids)}
    vertices = table[:, 2:5]
    edges = [(index[int(p)], k) for k, p in enumerate(table[:, 6]) if int(p) in index]
    return vertices, np.asarray(edges, dtype=int).reshape(-1, 2)
