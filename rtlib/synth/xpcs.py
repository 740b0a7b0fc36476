"""Synthetic XPCS speckle with a known relaxation time per q ring.

Each pixel carries a complex Gaussian field that decorrelates as an
Ornstein–Uhlenbeck process, E(t+Δt) = ρ E(t) + sqrt(1 - ρ²) ξ with
ρ = exp(-Δt/τ), so its field correlation is g1(t) = exp(-t/τ). The pixel's
expected intensity is λ [(1 - a) + a |E|²] with a = sqrt(β): a speckle
pattern of contrast β on a flat part, whose intensity correlation is
exactly

    g2(t) = 1 + β exp(-2 t / τ)

and each frame records Poisson counts around it (photon counting keeps g2
at every delay t > 0). Frames are instantaneous samples: no exposure
smearing.

τ is constant within each of ``num_q_rings`` equal-width q rings between
the beam-stop edge and the largest full circle on the detector, spaced
geometrically from ``tau_max_s`` (innermost ring) to ``tau_min_s``
(outermost), as diffusion makes slow dynamics at small q. The file has the
layout of ``detector.write_detector_file`` plus the frame time::

    /entry/data/data                              (frames, y, x) counts
    /entry/instrument/detector/frame_time         s   (and count_time)
    /entry/instrument/detector/...                geometry, as in detector.py
    /entry/instrument/monochromator/wavelength    angstrom
    /entry/sample                                 attributes ``synthetic_*``: the ground truth

A q-map file in the APS mask-tool layout (``/data/dynamicMap``,
``/data/staticMap``, ``/data/mask``, ``/data/dqlist``, ``/data/sqlist``) can
be written beside it with the rings as dynamic ROIs.

This module shares no code with the xpcs workload on purpose: it is the
ground truth the workload is tested against.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .detector import _compression_options, _group, _scalar, _write_geometry
from .geometry import Geometry, pixel_q_map

__all__ = ["expected_g2", "expected_mean_counts", "read_xpcs_truth", "write_qmap_file", "write_rigaku3m_files",
           "write_rigaku_file", "write_xpcs_file"]

RIGAKU_SHAPE = (512, 1024)
# Rigaku 3M: 3 x 2 modules, 70 rows and 52 columns apart; the module file at each position, row by row
RIGAKU3M_FILES = (5, 0, 4, 1, 3, 2)
RIGAKU3M_GAP = (70, 52)
RIGAKU3M_SHAPE = (3 * 512 + 2 * 70, 2 * 1024 + 52)

_FRAMES_PER_BLOCK = 64


def expected_g2(delay_s: np.ndarray | float, tau_s: float, beta: float) -> np.ndarray:
    """The exact g2 of a ring: 1 + β exp(-2 t/τ)."""
    return 1.0 + beta * np.exp(-2.0 * np.asarray(delay_s, dtype=np.float64) / tau_s)


def expected_mean_counts(truth: dict[str, Any]) -> np.ndarray:
    """The expected counts per frame of every pixel, (height, width), from the truth ``write_xpcs_file`` returns.

    The time average of each pixel's intensity: the speckle averages out, so it is the
    flat model λ(q) inside the beam-stop edge and 0 behind it.
    """
    _, height, width = truth["shape"]
    geometry = Geometry(**truth["geometry"])
    layout = ring_layout(geometry, height, width, len(truth["tau_s"]), truth["beamstop_radius_px"])
    return _mean_counts_map(layout, truth["mean_counts"])


def _mean_counts_map(layout: dict[str, Any], mean_counts: float) -> np.ndarray:
    """mean_counts at the innermost ring's inner edge, falling geometrically to a quarter at the outermost's outer edge."""
    edges = layout["edges"]
    fall = np.clip((layout["q"] - edges[0]) / (edges[-1] - edges[0]), 0.0, 1.0)
    return mean_counts * np.power(0.25, fall) * layout["mask"]


def ring_layout(geometry: Geometry, height: int, width: int, num_q_rings: int, beamstop_radius_px: float) -> dict[str, Any]:
    """Ring label per pixel (1..num_q_rings, 0 outside), mask, and ring edges in q."""
    q = pixel_q_map(geometry, height, width)
    yy, xx = np.mgrid[0:height, 0:width]
    r_px = np.hypot(yy - geometry.beam_center_y_px, xx - geometry.beam_center_x_px)
    mask = r_px > beamstop_radius_px
    # The largest circle around the beam that stays on the detector: every ring is whole.
    r_full = min(geometry.beam_center_x_px, width - 1 - geometry.beam_center_x_px,
                 geometry.beam_center_y_px, height - 1 - geometry.beam_center_y_px)
    if r_full <= beamstop_radius_px + num_q_rings:
        raise ValueError(f"the beam stop ({beamstop_radius_px} px) leaves no room for {num_q_rings} rings on this detector")
    q_lo = float(q[mask].min())
    q_hi = float(q[r_px <= r_full].max())
    edges = np.linspace(q_lo, q_hi, num_q_rings + 1)
    ring = np.searchsorted(edges, q, side="right")  # 1..num within [q_lo, q_hi)
    ring[(q >= q_hi) | ~mask] = 0
    return {"ring": ring.astype(np.int32), "mask": mask, "q": q, "edges": edges}


def write_xpcs_file(
    path: str | Path,
    *,
    frames: int = 1000,
    height: int = 128,
    width: int = 128,
    geometry: Geometry | None = None,
    frame_time_s: float = 1e-3,
    num_q_rings: int = 6,
    tau_min_s: float = 0.004,
    tau_max_s: float = 0.05,
    beta: float = 0.2,
    mean_counts: float = 2.0,
    beamstop_radius_px: float = 4.0,
    seed: int = 0,
    dtype: str = "uint16",
    compression: str | None = None,
    qmap_path: str | Path | None = None,
) -> dict[str, Any]:
    """Write a speckle series and return its ground truth (JSON-able).

    ``mean_counts`` is the mean photon count per pixel per frame in the
    innermost ring; it falls to a quarter of that in the outermost, as
    scattering falls with q. ``qmap_path``: also write the rings as an APS
    style q-map file there.
    """
    if frames < 2 or height < 8 or width < 8:
        raise ValueError(f"need frames >= 2 and a detector of at least 8 x 8, got {frames}, {height}, {width}")
    if not 0 <= beta <= 1:
        raise ValueError(f"beta (speckle contrast) must be in [0, 1] (0: no speckle, pure Poisson noise), got {beta}")
    if not 0 < tau_min_s <= tau_max_s or frame_time_s <= 0 or mean_counts <= 0:
        raise ValueError("need 0 < tau_min_s <= tau_max_s, frame_time_s > 0 and mean_counts > 0")
    path = Path(path)
    geometry = geometry or Geometry.for_detector(height, width)
    layout = ring_layout(geometry, height, width, num_q_rings, beamstop_radius_px)
    ring, edges = layout["ring"], layout["edges"]
    ring_q = 0.5 * (edges[:-1] + edges[1:])
    ring_tau = np.geomspace(tau_max_s, tau_min_s, num_q_rings)

    # Per pixel: τ of its ring (the outermost ring's outside them), and its mean counts.
    tau_px = np.where(ring > 0, ring_tau[np.maximum(ring, 1) - 1], tau_min_s)
    mean_px = _mean_counts_map(layout, mean_counts)
    out_dtype = np.dtype(dtype)

    with h5py.File(path, "w") as f:
        entry = _group(f, "entry", "NXentry")
        data_group = _group(entry, "data", "NXdata")
        data_group.attrs["signal"] = "data"
        dset = data_group.create_dataset(
            "data", shape=(frames, height, width), dtype=out_dtype,
            chunks=(min(frames, 16), height, width), **_compression_options(compression, out_dtype),
        )
        dset.attrs["units"] = "counts"
        for start, block in _speckle_frames(mean_px.ravel(), tau_px.ravel(), frames, frame_time_s, beta, seed):
            dset[start:start + len(block)] = block.reshape(len(block), height, width).astype(out_dtype)
        _write_geometry(entry, geometry)
        det = entry["instrument/detector"]
        _scalar(det, "frame_time", frame_time_s, "s")
        _scalar(det, "count_time", frame_time_s, "s")
        sample = _group(entry, "sample", "NXsample")
        model = {"frame_time_s": frame_time_s, "beta": beta, "mean_counts": mean_counts,
                 "tau_s": ring_tau.tolist(), "q_inv_angstrom": ring_q.tolist(), "q_edges_inv_angstrom": edges.tolist()}
        sample.attrs["synthetic_xpcs"] = json.dumps(model)
        sample.attrs["synthetic_seed"] = seed

    truth: dict[str, Any] = {
        "path": str(path), "frames": frames, "shape": [frames, height, width], "dtype": out_dtype.name,
        "compression": compression, "seed": seed, "geometry": geometry.to_dict(),
        "pixels_per_ring": np.bincount(ring.ravel(), minlength=num_q_rings + 1)[1:].tolist(),
        "beamstop_radius_px": float(beamstop_radius_px),
        **model,
    }
    if qmap_path is not None:
        truth["qmap_path"] = str(write_qmap_file(qmap_path, layout))
    return truth


def write_qmap_file(path: str | Path, layout: dict[str, Any], static_per_dynamic: int = 4) -> Path:
    """The rings as dynamic ROIs, each split into ``static_per_dynamic`` static ROIs, APS mask-tool layout."""
    path = Path(path)
    ring, edges, q = layout["ring"], layout["edges"], layout["q"]
    num = len(edges) - 1
    static_edges = np.linspace(edges[0], edges[-1], num * static_per_dynamic + 1)
    static = np.searchsorted(static_edges, q, side="right").astype(np.int32)
    static[ring == 0] = 0
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data["dynamicMap"] = ring.astype(np.int32)
        data["staticMap"] = static
        data["mask"] = layout["mask"].astype(np.int32)
        data["dqlist"] = 0.5 * (edges[:-1] + edges[1:])
        data["sqlist"] = 0.5 * (static_edges[:-1] + static_edges[1:])
    return path


def write_rigaku_file(dense_path: str | Path, bin_path: str | Path, qmap_path: str | Path | None = None,
                      rigaku_qmap_path: str | Path | None = None) -> dict[str, Any]:
    """The frames of a (smaller) dense file written by ``write_xpcs_file`` as a Rigaku XSPA-500k photon-event file:
    placed in the top-left corner of the 512 x 1024 module (the rest dark), one little-endian 64-bit word per
    pixel with counts per frame — frame index in bits 40-63, row-major pixel index in bits 16-36, count in bits
    0-11. ``qmap_path``'s maps, padded with 0 (excluded) to the module, go to ``rigaku_qmap_path``."""
    rows, cols = RIGAKU_SHAPE
    events = 0
    with h5py.File(dense_path, "r") as f, open(bin_path, "wb") as out:
        data = f["/entry/data/data"]
        frames, height, width = data.shape
        if height > rows or width > cols:
            raise ValueError(f"frames of {height} x {width} do not fit the {rows} x {cols} module")
        for start in range(0, frames, _FRAMES_PER_BLOCK):
            block = np.asarray(data[start:start + _FRAMES_PER_BLOCK], dtype=np.uint64)
            if block.max(initial=0) >= 2**12:
                raise ValueError("counts above 4095 do not fit a Rigaku event word")
            frame, y, x = np.nonzero(block)
            words = ((frame.astype(np.uint64) + np.uint64(start)) << np.uint64(40)) \
                | ((y.astype(np.uint64) * np.uint64(cols) + x.astype(np.uint64)) << np.uint64(16)) | block[frame, y, x]
            words.astype("<u8").tofile(out)
            events += len(words)
        last = np.asarray(data[frames - 1])
    if not last.any():
        raise ValueError("the last frame has no photon: a Rigaku file would end a frame early")
    if qmap_path is not None and rigaku_qmap_path is not None:
        _place_qmap(qmap_path, rigaku_qmap_path, RIGAKU_SHAPE, 0, 0)
    return {"path": str(bin_path), "frames": frames, "shape": [frames, rows, cols], "events": events,
            "photons_per_pixel_per_frame": events / (frames * rows * cols), "patch": [height, width]}


def _place_qmap(qmap_path: str | Path, out_path: str | Path, shape: tuple[int, int], row: int, col: int) -> None:
    """``qmap_path``'s maps written to ``out_path`` inside a zero frame of ``shape``, their corner at (row, col)."""
    with h5py.File(qmap_path, "r") as src, h5py.File(out_path, "w") as dst:
        for name, obj in src["data"].items():
            value = obj[()]
            if name in ("dynamicMap", "staticMap", "mask"):
                placed = np.zeros(shape, dtype=value.dtype)
                placed[row:row + value.shape[0], col:col + value.shape[1]] = value
                value = placed
            dst[f"data/{name}"] = value


def _rigaku_words(frame: np.ndarray, pixel: np.ndarray, count: np.ndarray) -> np.ndarray:
    return ((frame.astype(np.uint64) << np.uint64(40)) | (pixel.astype(np.uint64) << np.uint64(16))
            | count.astype(np.uint64)).astype("<u8")


def write_rigaku3m_files(dense_path: str | Path, stem: str | Path, position: int = 3, qmap_path: str | Path | None = None,
                         rigaku_qmap_path: str | Path | None = None) -> dict[str, Any]:
    """The frames of a dense ``write_xpcs_file`` file as a Rigaku 3M record, ``STEM.000`` … ``STEM.005``: placed in
    the top-left corner of the module at ``position`` (0-5, row by row in the 3 x 2 layout). Every other module
    records one photon, at its pixel (0, 0) in the last frame, of (its file number + 1) counts, so the
    arrangement can be checked; odd-numbered files store pixel indices offset by 2^20, as some modules do.
    ``qmap_path``'s maps, placed the same way in the 1676 x 2100 frame, go to ``rigaku_qmap_path``."""
    stem = Path(stem)
    file_number = RIGAKU3M_FILES[position]
    module_bin = stem.with_name(f"{stem.name}.{file_number:03d}")
    info = write_rigaku_file(dense_path, module_bin)
    frames, (height, width) = info["frames"], info["patch"]
    words = np.fromfile(module_bin, dtype="<u8")
    if file_number % 2:
        words = words + (np.uint64(2**20) << np.uint64(16))
        words.astype("<u8").tofile(module_bin)
    for n in set(range(6)) - {file_number}:
        pixel = np.array([2**20 if n % 2 else 0])
        _rigaku_words(np.array([frames - 1]), pixel, np.array([n + 1])).tofile(stem.with_name(f"{stem.name}.{n:03d}"))
    row = position // 2 * (512 + RIGAKU3M_GAP[0])
    col = position % 2 * (1024 + RIGAKU3M_GAP[1])
    if qmap_path is not None and rigaku_qmap_path is not None:
        _place_qmap(qmap_path, rigaku_qmap_path, RIGAKU3M_SHAPE, row, col)
    return {"stem": str(stem), "frames": frames, "shape": [frames, *RIGAKU3M_SHAPE], "position": position,
            "file_number": file_number, "patch_origin": [row, col], "patch": [height, width]}


def read_xpcs_truth(path: str | Path) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        return json.loads(f["entry/sample"].attrs["synthetic_xpcs"])


def _speckle_frames(mean_px: np.ndarray, tau_px: np.ndarray, frames: int, frame_time_s: float, beta: float, seed: int):
    """(start, counts block (n, pixels)) in order, from one seeded stream."""
    rng = np.random.default_rng(seed)
    pixels = mean_px.size
    rho = np.exp(-frame_time_s / tau_px)
    kick = np.sqrt(1.0 - rho * rho)
    # A stationary start: the field's first value has the steady-state distribution.
    field = (rng.standard_normal(pixels) + 1j * rng.standard_normal(pixels)) / np.sqrt(2.0)
    amplitude = np.sqrt(beta)
    for start in range(0, frames, _FRAMES_PER_BLOCK):
        n = min(_FRAMES_PER_BLOCK, frames - start)
        noise = rng.standard_normal((n, 2, pixels)) / np.sqrt(2.0)
        intensity = np.empty((n, pixels))
        for i in range(n):
            if start + i > 0:
                field = rho * field + kick * (noise[i, 0] + 1j * noise[i, 1])
            intensity[i] = field.real ** 2 + field.imag ** 2
        intensity *= amplitude
        intensity += 1.0 - amplitude
        intensity *= mean_px
        yield start, rng.poisson(intensity)
