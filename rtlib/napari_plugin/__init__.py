"""napari reader for rtlib connectomics results (npe2 manifest ``napari.yaml``) and ``rtlib view``.

A result ``RESULT.zarr`` opens as one layer per stage (``STAGES``):
``tiles`` and ``mosaic`` (the input tiles and the stitched sections),
``image`` (the aligned stack), ``mask`` (labels), ``boundary`` and
``foreground`` (the U-Net's outputs), ``segmentation`` (labels),
``skeletons`` (a shapes layer of paths, one per skeleton edge), and the
graph as ``graph nodes`` (points at the neurons' centroids, with their
label, degree and volume) and ``graph edges`` (lines, with the contact
area). A dock widget (``_widget.StagesWidget``) lists the stages. Every layer carries the physical
scale in nm, so z is stretched by the section thickness. Volumes are read
lazily through dask, so a result larger than memory still opens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

LayerData = tuple[Any, dict, str]


def is_result(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "zarr.json").is_file() and (path / "segmentation").is_dir()


def get_reader(path):
    """npe2 reader hook: a reader function for an rtlib result, else None (napari tries other readers)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    return read_result if is_result(path) else None


STAGES = ("tiles", "mosaic", "image", "mask", "boundary", "foreground", "segmentation", "skeletons",
          "graph nodes", "graph edges")


def read_result(path) -> list[LayerData]:
    """Every stage of a result as napari layer data, in pipeline order (``STAGES``), physical scale in nm."""
    import dask.array as da

    from ..workloads.connectomics import io
    from ..workloads.connectomics.graph import read_graphml
    from ..workloads.connectomics.skeleton import read_swc

    if isinstance(path, list):
        path = path[0]
    path = Path(path)
    group = io.open_result(path)
    scale = tuple(float(s) for s in group.attrs["scale_nm"])
    layers: list[LayerData] = []

    def volume(name):
        return da.from_zarr(group[name]) if name in group else None

    if io.TILES in group:
        # stored (section, tile, y, x); shown (tile, section, y, x), so that the sections share the other
        # layers' z slider and the tile index is a slider of its own in front of it
        layers.append((volume(io.TILES).transpose(1, 0, 2, 3), {"name": "tiles", "scale": (1.0, *scale), "visible": False},
                       "image"))
    if io.MOSAIC in group:
        origin = group.attrs.get("canvas_origin_px", [0, 0])
        layers.append((volume(io.MOSAIC), {"name": "mosaic", "scale": scale, "visible": False,
                                           "translate": (0.0, origin[0] * scale[1], origin[1] * scale[2])}, "image"))
    layers.append((volume(io.IMAGE), {"name": "image", "scale": scale}, "image"))
    if io.MASK in group:
        layers.append((volume(io.MASK).astype(np.uint8), {"name": "mask", "scale": scale, "opacity": 0.3}, "labels"))
    for name, colormap in ((io.BOUNDARY, "magenta"), (io.FOREGROUND, "green")):
        if name in group:
            layers.append((volume(name), {"name": name, "scale": scale, "colormap": colormap, "blending": "additive",
                                          "contrast_limits": (0, 255), "visible": False}, "image"))
    layers.append((volume(io.SEGMENTATION), {"name": "segmentation", "scale": scale, "opacity": 0.5}, "labels"))

    lines, owners = [], []
    for swc in sorted((path / io.SKELETONS).glob("*.swc"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0):
        vertices, edges = read_swc(swc)
        zyx = vertices[:, ::-1] / np.asarray(scale)  # SWC is x y z in nm; layers take z y x in voxels, then scale
        for a, b in edges:
            lines.append(np.stack([zyx[a], zyx[b]]))
            owners.append(int(swc.stem))
    if lines:
        layers.append((lines, {"name": "skeletons", "scale": scale, "shape_type": "path", "edge_width": 0.5,
                               "edge_color": "yellow", "features": {"label": owners}}, "shapes"))
    graph_file = path / io.GRAPH
    if graph_file.is_file():
        graph = read_graphml(graph_file)
        nodes = sorted(graph.nodes)
        if nodes:
            centre = {n: np.array([graph.nodes[n]["z_nm"], graph.nodes[n]["y_nm"], graph.nodes[n]["x_nm"]]) / np.asarray(scale)
                      for n in nodes}
            features = {"label": nodes, "degree": [graph.degree[n] for n in nodes],
                        "volume_um3": [graph.nodes[n].get("volume_um3", 0.0) for n in nodes]}
            layers.append((np.array([centre[n] for n in nodes]), {"name": "graph nodes", "scale": scale, "size": 6,
                                                                  "face_color": "cyan", "features": features}, "points"))
            edges = sorted(graph.edges)
            if edges:
                layers.append(([np.stack([centre[a], centre[b]]) for a, b in edges],
                               {"name": "graph edges", "scale": scale, "shape_type": "line", "edge_width": 1.0,
                                "edge_color": "cyan", "features": {"area_nm2": [graph.edges[e]["area_nm2"] for e in edges]}},
                               "shapes"))
    return layers


def stages_widget(napari_viewer=None):
    """The *Connectomics stages* dock widget (``_widget.StagesWidget``, which napari docks through the manifest)."""
    from ._widget import StagesWidget

    return StagesWidget(napari_viewer)


def add_result_layers(viewer, path) -> list:
    """Add every layer of a result to a napari viewer (or ViewerModel); returns the layers."""
    added = []
    for data, kwargs, kind in read_result(path):
        added.append(getattr(viewer, f"add_{kind}")(data, **kwargs))
    return added
