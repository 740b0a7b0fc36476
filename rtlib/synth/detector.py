"""Synthetic area-detector HDF5 files with a known isotropic I(q).

Layout (NeXus-like, as DECTRIS Eiger files and most SAXS beamlines write it)::

    /entry                                   NXentry
    /entry/data/data                         (frames, y, x) counts, chunked one frame per chunk
    /entry/instrument/detector/beam_center_x     pixel  (centre of the first pixel is 0)
    /entry/instrument/detector/beam_center_y     pixel
    /entry/instrument/detector/distance          m      sample to detector
    /entry/instrument/detector/x_pixel_size      m      (and y_pixel_size; pixels are square)
    /entry/instrument/monochromator/wavelength   angstrom
    /entry/sample                            attributes ``synthetic_*``: the ground-truth model

Every scalar carries a ``units`` attribute. Each frame is an independent
Poisson draw around one noiseless pattern, I(q) at each pixel centre (see
``scattering``), so the time average converges to I(q) as frames grow.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import h5py
import hdf5plugin
import numpy as np

from .geometry import Geometry, pixel_q_map
from .scattering import FORMS, expected_image, expected_intensity

__all__ = [
    "DATASET_PATH",
    "Geometry",
    "corrupt_file",
    "expected_image",
    "expected_intensity",
    "frames_for_size",
    "pixel_q_map",
    "read_ground_truth",
    "write_detector_file",
]

DATASET_PATH = "/entry/data/data"
COMPRESSIONS = (None, "gzip", "lz4", "bslz4")

# Frames generated per task: big enough that the per-call overhead vanishes,
# small enough that a few tasks in flight stay at a few MB.
_FRAMES_PER_TASK = 8
# numpy's Poisson sampler releases the GIL, so threads give real parallelism.
_WORKERS = max(1, min(4, os.cpu_count() or 1))


def frames_for_size(size_bytes: int, height: int, width: int, dtype: str = "uint16") -> int:
    """How many frames make an uncompressed file of about ``size_bytes`` (at least 1)."""
    frame_bytes = height * width * np.dtype(dtype).itemsize
    return max(1, round(size_bytes / frame_bytes))


def write_detector_file(
    path: str | Path,
    *,
    frames: int = 10,
    height: int = 256,
    width: int = 256,
    geometry: Geometry | None = None,
    seed: int = 0,
    dtype: str = "uint16",
    compression: str | None = None,
    form: str = "guinier",
    radius_angstrom: float = 40.0,
    scale_counts: float = 2000.0,
    background_counts: float = 5.0,
) -> dict[str, Any]:
    """Write a detector file and return its ground truth (JSON-able).

    ``compression``: None, ``"gzip"``, ``"lz4"`` or ``"bslz4"`` (bitshuffle + LZ4,
    the Eiger default); the last two need hdf5plugin to read, as in real life.
    The same ``seed`` gives the same file, whatever the number of threads.

    The returned dict has ``geometry`` (``Geometry`` fields), ``model``
    (keyword arguments of ``expected_intensity``, so
    ``expected_intensity(q, **truth["model"])`` is the noiseless I(q)), and
    the file's ``path``, ``dataset_path``, ``frames``, ``shape``, ``dtype``,
    ``compression``, ``seed``, ``q_range_inv_angstrom`` and ``file_bytes``.
    """
    if frames < 1 or height < 1 or width < 1:
        raise ValueError(f"frames, height and width must be >= 1, got {frames}, {height}, {width}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; choose one of {COMPRESSIONS}")
    if form not in FORMS:
        raise ValueError(f"unknown scattering form {form!r}; choose one of {', '.join(FORMS)}")
    if scale_counts < 0 or background_counts < 0:
        raise ValueError("scale_counts and background_counts are expected counts and must be >= 0")
    path = Path(path)
    geometry = geometry or Geometry.for_detector(height, width)
    model = {"form": form, "radius_angstrom": float(radius_angstrom),
             "scale_counts": float(scale_counts), "background_counts": float(background_counts)}
    mean_image = expected_image(geometry, height, width, **model)
    out_dtype = np.dtype(dtype)
    _check_counts_fit(mean_image, out_dtype)

    with h5py.File(path, "w") as f:
        entry = _group(f, "entry", "NXentry")
        entry.attrs["default"] = "data"
        data_group = _group(entry, "data", "NXdata")
        data_group.attrs["signal"] = "data"
        dset = data_group.create_dataset(
            "data", shape=(frames, height, width), dtype=out_dtype,
            chunks=(1, height, width), **_compression_options(compression, out_dtype),
        )
        dset.attrs["units"] = "counts"
        for start, block in _noisy_frames(mean_image, frames, seed, out_dtype):
            dset[start:start + len(block)] = block
        _write_geometry(entry, geometry)
        sample = _group(entry, "sample", "NXsample")
        sample.attrs["synthetic_model"] = json.dumps(model)
        sample.attrs["synthetic_seed"] = seed
        for key, value in model.items():
            sample.attrs[f"synthetic_{key}"] = value

    q = pixel_q_map(geometry, height, width)
    return {
        "path": str(path),
        "dataset_path": DATASET_PATH,
        "frames": frames,
        "shape": [frames, height, width],
        "dtype": out_dtype.name,
        "compression": compression,
        "seed": seed,
        "geometry": geometry.to_dict(),
        "model": model,
        "q_range_inv_angstrom": [float(q.min()), float(q.max())],
        "file_bytes": path.stat().st_size,
    }


def read_ground_truth(path: str | Path) -> dict[str, Any]:
    """The geometry and model a synthetic file was written with, read back from the file."""
    with h5py.File(path, "r") as f:
        det = f["entry/instrument/detector"]
        geometry = Geometry(
            beam_center_x_px=float(det["beam_center_x"][()]),
            beam_center_y_px=float(det["beam_center_y"][()]),
            detector_distance_m=float(det["distance"][()]),
            pixel_size_um=float(det["x_pixel_size"][()]) * 1e6,
            wavelength_angstrom=float(f["entry/instrument/monochromator/wavelength"][()]),
        )
        model = json.loads(f["entry/sample"].attrs["synthetic_model"])
        frames = f[DATASET_PATH].shape[0]
    return {"geometry": geometry.to_dict(), "model": model, "frames": frames}


def corrupt_file(path: str | Path, mode: str = "truncate", *, keep_fraction: float = 0.5, seed: int = 0) -> Path:
    """Damage a file in place, to make bad input for tests.

    ``truncate`` keeps the first ``keep_fraction`` of the bytes, as an
    interrupted transfer would; ``garbage`` overwrites the first 4 KiB
    (the HDF5 superblock and root metadata) with random bytes.
    """
    path = Path(path)
    size = path.stat().st_size
    if mode == "truncate":
        if not 0 <= keep_fraction < 1:
            raise ValueError(f"keep_fraction must be in [0, 1), got {keep_fraction}")
        os.truncate(path, int(size * keep_fraction))
    elif mode == "garbage":
        junk = np.random.default_rng(seed).integers(0, 256, size=min(size, 4096), dtype=np.uint8).tobytes()
        with open(path, "r+b") as fh:
            fh.write(junk)
    else:
        raise ValueError(f"unknown corruption mode {mode!r}; choose 'truncate' or 'garbage'")
    return path


# -- helpers -------------------------------------------------------------------


def _group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.require_group(name)
    group.attrs["NX_class"] = nx_class
    return group


def _scalar(group: h5py.Group, name: str, value: float, units: str) -> None:
    group.create_dataset(name, data=np.float64(value)).attrs["units"] = units


def _write_geometry(entry: h5py.Group, geometry: Geometry) -> None:
    instrument = _group(entry, "instrument", "NXinstrument")
    det = _group(instrument, "detector", "NXdetector")
    _scalar(det, "beam_center_x", geometry.beam_center_x_px, "pixel")
    _scalar(det, "beam_center_y", geometry.beam_center_y_px, "pixel")
    _scalar(det, "distance", geometry.detector_distance_m, "m")
    _scalar(det, "x_pixel_size", geometry.pixel_size_um * 1e-6, "m")
    _scalar(det, "y_pixel_size", geometry.pixel_size_um * 1e-6, "m")
    mono = _group(instrument, "monochromator", "NXmonochromator")
    _scalar(mono, "wavelength", geometry.wavelength_angstrom, "angstrom")


def _compression_options(compression: str | None, dtype: np.dtype) -> dict[str, Any]:
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": dtype.itemsize > 1}
    if compression == "lz4":
        return dict(hdf5plugin.LZ4())
    if compression == "bslz4":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    return {}


def _check_counts_fit(mean_image: np.ndarray, dtype: np.dtype) -> None:
    """Refuse a model whose counts would saturate the pixel type, rather than clip silently."""
    if dtype.kind not in "ui":
        return
    peak = float(mean_image.max())
    likely_max = peak + 8 * np.sqrt(peak) + 8
    if likely_max > np.iinfo(dtype).max:
        raise ValueError(
            f"expected counts up to {peak:.0f} per pixel would saturate {dtype.name} "
            f"(max {np.iinfo(dtype).max}); lower scale_counts or use dtype='uint32'"
        )


def _noisy_frames(mean_image: np.ndarray, frames: int, seed: int, dtype: np.dtype) -> Iterator[tuple[int, np.ndarray]]:
    """Poisson frames in order, drawn by a few threads, each block from its own seeded stream.

    Seeding per block (not per thread) keeps the output independent of the
    number of threads and of their scheduling.
    """
    starts = list(range(0, frames, _FRAMES_PER_TASK))

    def draw(start: int) -> np.ndarray:
        n = min(_FRAMES_PER_TASK, frames - start)
        rng = np.random.default_rng([seed, start])
        block = rng.poisson(mean_image, size=(n, *mean_image.shape))
        return block.astype(dtype, copy=False)

    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        pending = []
        # A bounded look-ahead: memory stays at a few blocks, however many frames.
        for start in starts:
            pending.append((start, pool.submit(draw, start)))
            if len(pending) > 2 * _WORKERS:
                first, fut = pending.pop(0)
                yield first, fut.result()
        for first, fut in pending:
            yield first, fut.result()
