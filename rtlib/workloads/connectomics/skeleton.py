"""Skeletons of the segmented neurons with kimimaro (TEASAR), in nm, and their SWC files.

rtlib keeps volumes as (z, y, x); kimimaro works in (x, y, z), so the labels
are passed transposed with ``anisotropy = (dx, dy, dz)`` in nm, and the
skeleton vertices come back in nm as (x, y, z), as SWC wants them.
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


def skeletonize(labels: np.ndarray, spacing_nm: tuple[float, float, float], settings: TeasarSettings | None = None,
                parallel: int = 1) -> dict:
    """{label: osteoid Skeleton (vertices in nm, x y z)} of every label of an in-memory volume."""
    return _teasar(labels, spacing_nm, settings or TeasarSettings(), parallel)


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
        out[label] = skel
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
