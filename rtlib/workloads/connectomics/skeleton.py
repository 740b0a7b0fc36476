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
    """{label: osteoid Skeleton (vertices in nm, x y z)}."""
    import kimimaro

    settings = settings or TeasarSettings()
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
