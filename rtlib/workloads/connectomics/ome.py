"""OME-Zarr (NGFF 0.5) metadata on the result, so OME-Zarr readers open it with the right scale.

The result group itself is declared an NGFF image: its ``ome.multiscales``
names the ``image`` array (z, y, x in nanometres, scaled by the section
thickness and pixel size) and a 2x in-plane reduction ``image_2x`` for
overviews. NGFF keeps labels in a ``labels/`` group whose entries are
multiscale images of their own, so the neurons are also written as
``labels/segmentation/0`` (and ``/1``, 2x reduced by taking every other
pixel, as labels must not be averaged), block by block, with
``image-label`` metadata pointing back at the image. The ``segmentation``
array at the root stays where rtlib's own readers (napari plugin,
notebooks) find it; the labels copy is what the OME-Zarr readers
(``ome-zarr``, napari-ome-zarr, neuroglancer through zarr) use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NGFF_VERSION = "0.5"
LABELS = "labels"
IMAGE_2X = "image_2x"


def _axes() -> list[dict]:
    return [{"name": name, "type": "space", "unit": "nanometer"} for name in "zyx"]


def _datasets(paths: list[str], spacing_nm) -> list[dict]:
    out = []
    for level, path in enumerate(paths):
        scale = [float(spacing_nm[0]), float(spacing_nm[1]) * 2**level, float(spacing_nm[2]) * 2**level]
        out.append({"path": path, "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    return out


def multiscales(name: str, paths: list[str], spacing_nm) -> dict:
    return {"name": name, "axes": _axes(), "datasets": _datasets(paths, spacing_nm)}


def write_ngff(result: Path, spacing_nm: tuple[float, float, float], image: str = "image",
               segmentation: str = "segmentation", block: tuple[int, int, int] | None = None) -> None:
    """Add the NGFF 0.5 image and label metadata (and the reduced levels and labels copy) to ``result``."""
    import zarr

    group = zarr.open_group(str(result), mode="r+")
    shape = group[image].shape
    chunks = tuple(min(c, s) for c, s in zip(block or group[image].chunks, shape))
    reduced = (shape[0], -(-shape[1] // 2), -(-shape[2] // 2))
    small = group.create_array(IMAGE_2X, shape=reduced, dtype=np.uint8, chunks=tuple(min(c, s) for c, s in zip(chunks, reduced)),
                               fill_value=0, overwrite=True)
    labels_group = group.require_group(LABELS)
    seg_group = labels_group.require_group(segmentation)
    dtype = group[segmentation].dtype
    level0 = seg_group.create_array("0", shape=shape, dtype=dtype, chunks=chunks, fill_value=0, overwrite=True)
    level1 = seg_group.create_array("1", shape=reduced, dtype=dtype, chunks=small.chunks, fill_value=0, overwrite=True)
    # block by block: one chunk row of sections at a time, never the whole volume
    for z0 in range(0, shape[0], chunks[0]):
        for y0 in range(0, shape[1], chunks[1]):
            for x0 in range(0, shape[2], chunks[2]):
                where = (slice(z0, z0 + chunks[0]), slice(y0, y0 + chunks[1]), slice(x0, x0 + chunks[2]))
                labels = group[segmentation][where]
                level0[where] = labels
                # chunks are even-sided (multiples of the U-Net pooling), so 2x cells never straddle two blocks
                cells = (where[0], slice(y0 // 2, y0 // 2 + -(-labels.shape[1] // 2)), slice(x0 // 2, x0 // 2 + -(-labels.shape[2] // 2)))
                level1[cells] = labels[:, ::2, ::2]
                img = group[image][where].astype(np.float32)
                pad = ((0, 0), (0, img.shape[1] % 2), (0, img.shape[2] % 2))
                img = np.pad(img, pad, mode="edge")
                z, h, w = img.shape
                small[cells] = np.rint(img.reshape(z, h // 2, 2, w // 2, 2).mean(axis=(2, 4))).astype(np.uint8)
    group.attrs["ome"] = {"version": NGFF_VERSION, "multiscales": [multiscales(image, [image, IMAGE_2X], spacing_nm)]}
    labels_group.attrs["ome"] = {"version": NGFF_VERSION, "labels": [segmentation]}
    seg_group.attrs["ome"] = {"version": NGFF_VERSION, "multiscales": [multiscales(segmentation, ["0", "1"], spacing_nm)],
                              "image-label": {"version": NGFF_VERSION, "source": {"image": "../../"}}}
