"""The connectivity graph: neurons as nodes, their contacts (touching faces) as edges with an area in nm².

Two neurons are connected when their segments share voxel faces; the area
of a contact is the summed area of those faces (a face across x is
``dy * dz``, and so on). Contacts smaller than ``min_area_nm2`` are
dropped: a few faces where two segments merely graze are not a contact.
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np


def contact_graph(labels: np.ndarray, spacing_nm: tuple[float, float, float], *, min_area_nm2: float = 0.0,
                  cable_nm: dict[int, float] | None = None) -> nx.Graph:
    """The graph of an in-memory volume (the whole volume as one block; see ``graph_from_tables``)."""
    from .blockwise import BlockGrid, contacts_blocks, label_summary_blocks

    grid = BlockGrid(labels.shape, labels.shape)
    arrays = {"segmentation": labels}
    return graph_from_tables(label_summary_blocks(arrays, grid), contacts_blocks(arrays, grid, spacing_nm), spacing_nm,
                             min_area_nm2=min_area_nm2, cable_nm=cable_nm)


def graph_from_tables(summaries: dict, areas: dict[tuple[int, int], float], spacing_nm: tuple[float, float, float], *,
                      min_area_nm2: float = 0.0, cable_nm: dict[int, float] | None = None) -> nx.Graph:
    """Nodes: every label with its voxels, volume (um³) and centroid (nm); edges: contacts with area_nm2.

    ``summaries`` ({label: LabelSummary}) and ``areas`` ({(a, b): nm²}) are the block-wise tables of
    ``blockwise.label_summary_blocks`` and ``blockwise.contacts_blocks``: the volume is never loaded whole."""
    graph = nx.Graph()
    voxel_um3 = float(np.prod(spacing_nm)) * 1e-9
    for label, summary in sorted(summaries.items()):
        attrs = {"voxels": summary.voxels, "volume_um3": summary.voxels * voxel_um3}
        for axis, name in enumerate("zyx"):
            attrs[f"{name}_nm"] = float(summary.centroid_px[axis] * spacing_nm[axis])
        if cable_nm and label in cable_nm:
            attrs["cable_length_nm"] = float(cable_nm[label])
        graph.add_node(int(label), **attrs)
    for (a, b), area in areas.items():
        if area >= min_area_nm2:
            graph.add_edge(int(a), int(b), area_nm2=float(area))
    return graph


def write_graphml(graph: nx.Graph, path: Path) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    nx.write_graphml(graph, tmp)
    tmp.replace(path)
    return path


def read_graphml(path: Path) -> nx.Graph:
    return nx.read_graphml(path, node_type=int)
