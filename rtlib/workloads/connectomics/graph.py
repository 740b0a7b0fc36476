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


def contacts(labels: np.ndarray, spacing_nm: tuple[float, float, float]) -> dict[tuple[int, int], float]:
    """{(a, b): area_nm2} for a < b, over face-adjacent voxel pairs of different non-zero labels."""
    from .blockwise import BlockGrid, contacts_blocks

    return contacts_blocks({"segmentation": labels}, BlockGrid(labels.shape, labels.shape), spacing_nm)


def contact_graph(labels: np.ndarray, spacing_nm: tuple[float, float, float], *, min_area_nm2: float = 0.0,
                  cable_nm: dict[int, float] | None = None, areas: dict[tuple[int, int], float] | None = None) -> nx.Graph:
    """Nodes: every label with its volume (um³) and centroid (nm); edges: contacts with area_nm2.

    ``areas``: contacts already measured (block-wise, ``blockwise.contacts_blocks``); else measured here."""
    graph = nx.Graph()
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    voxel_um3 = float(np.prod(spacing_nm)) * 1e-9
    from scipy import ndimage as ndi

    centroids = ndi.center_of_mass(labels > 0, labels, ids) if len(ids) else []
    for label, count, centre in zip(ids.tolist(), counts.tolist(), centroids):
        attrs = {"voxels": int(count), "volume_um3": count * voxel_um3}
        for axis, name in enumerate("zyx"):
            attrs[f"{name}_nm"] = float(centre[axis] * spacing_nm[axis])
        if cable_nm and label in cable_nm:
            attrs["cable_length_nm"] = float(cable_nm[label])
        graph.add_node(int(label), **attrs)
    for (a, b), area in (contacts(labels, spacing_nm) if areas is None else areas).items():
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
