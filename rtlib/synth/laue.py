"""Synthetic Laue wire scans (DAXM) with known sources at known depths.

Each source sits on the incident beam at a depth (a point) or along a
stretch of it (a line, ``length_um`` > 0) and sends a Gaussian spot to the
detector. At every wire step a source's intensity reaches a pixel unless
the wire blocks the straight ray between them; the noiseless images are
the sum over sources plus a flat background, and each image is a Poisson
draw around them. The geometry is the APS 34-ID-E one in spirit: the beam
along +z, the detector 510 mm above the sample looking down, a 52 um wire
some hundred micrometres above the beam, stepped along 45 degrees in y-z.

File layout (read by ``rtlib.workloads.laue.reader``; units in the names
and in each dataset's ``units`` attribute)::

    /entry/data/data                   (steps, y, x) counts
    /entry/wire/position_um            (steps, 3) a point of the wire axis at each step, beamline x, y, z
    /entry/wire/diameter_um            ()
    /entry/wire/axis                   (3,) unit vector along the wire
    /entry/beam/origin_um              (3,) the point of depth 0 on the incident beam
    /entry/beam/direction              (3,) unit vector of the incident beam
    /entry/detector/position_um        (3,) centre of the pixel array
    /entry/detector/rotation_rad       (3,) rotation vector, detector frame -> beamline frame
    /entry/detector/pixel_size_x_um    ()  along columns
    /entry/detector/pixel_size_y_um    ()  along rows
    /entry/sample                      attribute ``synthetic_sources``: the ground truth (JSON)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from ..workloads.laue.geometry import ScanGeometry, make_geometry

__all__ = ["LaueSource", "default_geometry", "expected_images", "geometry_for_34ide", "random_sources", "read_ground_truth",
           "write_laue_scan", "write_laue_scan_34ide"]

DATASET_PATH = "/entry/data/data"
# Depth samples per micrometre of a line source: far finer than any wire step.
_SAMPLES_PER_UM = 20
# A spot is drawn out to this many sigmas.
_SPOT_REACH_SIGMA = 4.0


@dataclass(frozen=True)
class LaueSource:
    depth_um: float  # depth of a point source, or where a line source starts
    x_px: float  # spot centre column
    y_px: float  # spot centre row
    counts: float  # photons per image reaching the detector when nothing blocks them
    sigma_px: float = 1.2  # spot width
    length_um: float = 0.0  # 0: a point; > 0: uniform along [depth_um, depth_um + length_um]

    @property
    def mean_depth_um(self) -> float:
        return self.depth_um + 0.5 * self.length_um


def default_geometry(
    height_px: int,
    width_px: int,
    *,
    depth_start_um: float = 0.0,
    depth_end_um: float = 40.0,
    wire_step_um: float = 1.0,
    wire_diameter_um: float = 52.0,
    wire_height_um: float = 300.0,
    margin_um: float = 5.0,
    pixel_size_um: float = 200.0,
    detector_distance_um: float = 510_000.0,
) -> ScanGeometry:
    """A geometry whose wire scan carries both edges across [depth_start_um, depth_end_um] for every pixel."""
    motion = np.array([0.0, 1.0, 1.0]) / np.sqrt(2.0)
    common = dict(
        beam_origin_um=[0.0, 0.0, 0.0], beam_direction=[0.0, 0.0, 1.0],
        wire_axis=[1.0, 0.0, 0.0], wire_diameter_um=wire_diameter_um,
        detector_position_um=[0.0, detector_distance_um, 0.0],
        # local x -> beamline x, local y -> beamline z, the face looking down at the sample
        detector_rotation_rad=[np.pi / 2, 0.0, 0.0],
        pixel_size_x_um=pixel_size_um, pixel_size_y_um=pixel_size_um, height_px=height_px, width_px=width_px,
    )
    start = np.array([0.0, wire_height_um, 0.0])
    probe = make_geometry(wire_centres_um=start + np.outer([0.0, 1.0], motion), **common)
    pixels = probe.detector.pixel_positions_um()[:: max(1, height_px - 1), :: max(1, width_px - 1)]
    # The edge depth is nearly linear in the wire travel; extend the scan until every corner is covered.
    lead = [probe.edge_depth_um(pixels, i, "leading") for i in (0, 1)]
    trail = [probe.edge_depth_um(pixels, i, "trailing") for i in (0, 1)]
    slope = float(np.median(lead[1] - lead[0]))
    if not slope > 0:
        raise ValueError("the wire's leading edge does not move deeper as the wire travels; check the geometry")
    travel_from = float(np.min((depth_start_um - margin_um - lead[0]) / slope))
    travel_to = float(np.max((depth_end_um + margin_um - trail[0]) / slope))
    steps = int(np.ceil((travel_to - travel_from) / wire_step_um)) + 1
    travel = travel_from + wire_step_um * np.arange(steps)
    return make_geometry(wire_centres_um=start + np.outer(travel, motion), **common)


def random_sources(
    count: int,
    height_px: int,
    width_px: int,
    *,
    depth_start_um: float = 0.0,
    depth_end_um: float = 40.0,
    counts: tuple[float, float] = (3000.0, 8000.0),
    seed: int = 0,
    min_separation_px: float = 8.0,
) -> list[LaueSource]:
    """``count`` point sources at random depths, spots kept apart and away from the detector edge."""
    rng = np.random.default_rng(seed)
    border = min(6.0, 0.25 * min(height_px, width_px))
    sources: list[LaueSource] = []
    for _ in range(1000 * max(1, count)):
        if len(sources) == count:
            break
        x, y = rng.uniform(border, width_px - 1 - border), rng.uniform(border, height_px - 1 - border)
        if all(np.hypot(x - s.x_px, y - s.y_px) >= min_separation_px for s in sources):
            sources.append(LaueSource(
                depth_um=float(rng.uniform(depth_start_um, depth_end_um)), x_px=float(x), y_px=float(y),
                counts=float(rng.uniform(*counts)),
            ))
    if len(sources) < count:
        raise ValueError(f"cannot place {count} spots {min_separation_px} px apart on a {height_px} x {width_px} detector")
    return sources


def expected_images(geometry: ScanGeometry, sources: Sequence[LaueSource], background_counts: float = 0.0) -> np.ndarray:
    """(steps, y, x) noiseless counts: every source's spot, minus what the wire blocks, plus the background."""
    det = geometry.detector
    images = np.full((geometry.steps, det.height_px, det.width_px), float(background_counts))
    for source in sources:
        reach = _SPOT_REACH_SIGMA * source.sigma_px
        r0, r1 = max(0, int(np.floor(source.y_px - reach))), min(det.height_px, int(np.ceil(source.y_px + reach)) + 1)
        c0, c1 = max(0, int(np.floor(source.x_px - reach))), min(det.width_px, int(np.ceil(source.x_px + reach)) + 1)
        rows, cols = np.arange(r0, r1), np.arange(c0, c1)
        spot = np.exp(-0.5 * (((rows[:, None] - source.y_px) ** 2 + (cols[None, :] - source.x_px) ** 2) / source.sigma_px**2))
        spot *= source.counts / spot.sum()
        if source.length_um > 0:
            n = max(2, int(np.ceil(source.length_um * _SAMPLES_PER_UM)))
            depths = source.depth_um + source.length_um * (np.arange(n) + 0.5) / n
        else:
            depths = np.array([source.depth_um])
        pixels = det.pixel_positions_um(rows=rows, cols=cols)[:, :, None, :]  # (rows, cols, 1, 3)
        for step in range(geometry.steps):
            blocked = geometry.occluded(pixels, depths[None, None, :], step).mean(axis=-1)
            images[step, r0:r1, c0:c1] += spot * (1.0 - blocked)
    return images


def write_laue_scan(
    path: str | Path,
    *,
    height_px: int = 64,
    width_px: int = 64,
    sources: Sequence[LaueSource] | None = None,
    num_sources: int = 4,
    depth_start_um: float = 0.0,
    depth_end_um: float = 40.0,
    wire_step_um: float = 1.0,
    wire_diameter_um: float = 52.0,
    background_counts: float = 2.0,
    geometry: ScanGeometry | None = None,
    seed: int = 0,
    dtype: str = "uint16",
    noise: bool = True,
) -> dict[str, Any]:
    """Write a wire scan and return its ground truth (JSON-able): sources, geometry, steps, depth per step."""
    if height_px < 1 or width_px < 1:
        raise ValueError(f"height_px and width_px must be >= 1, got {height_px}, {width_px}")
    path = Path(path)
    geometry = geometry or default_geometry(
        height_px, width_px, depth_start_um=depth_start_um, depth_end_um=depth_end_um,
        wire_step_um=wire_step_um, wire_diameter_um=wire_diameter_um,
    )
    if sources is None:
        sources = random_sources(num_sources, height_px, width_px, depth_start_um=depth_start_um,
                                 depth_end_um=depth_end_um, seed=seed)
    images = _draw_images(geometry, sources, background_counts, seed, dtype, noise)
    with h5py.File(path, "w") as f:
        entry = _group(f, "entry", "NXentry")
        data = _group(entry, "data", "NXdata")
        data.create_dataset("data", data=images, chunks=(1, height_px, width_px)).attrs["units"] = "counts"
        write_geometry(entry, geometry)
        sample = _group(entry, "sample", "NXsample")
        sample.attrs["synthetic_sources"] = json.dumps([asdict(s) for s in sources])
        sample.attrs["synthetic_seed"] = seed
        sample.attrs["synthetic_background_counts"] = background_counts
    wire_travel = np.linalg.norm(geometry.wire.centres_um[1] - geometry.wire.centres_um[0]) if geometry.steps > 1 else 0.0
    return {
        "path": str(path),
        "dataset_path": DATASET_PATH,
        "shape": [geometry.steps, height_px, width_px],
        "sources": [asdict(s) for s in sources],
        "background_counts": background_counts,
        "wire_step_um": float(wire_travel),
        "geometry": geometry.to_attrs(),
        "seed": seed,
    }


def _draw_images(geometry: ScanGeometry, sources: Sequence[LaueSource], background_counts: float, seed: int,
                 dtype: str, noise: bool) -> np.ndarray:
    """(steps, y, x) images of ``dtype``: Poisson draws (seeded) around the forward model, or its rounded mean."""
    mean = expected_images(geometry, sources, background_counts)
    out_dtype = np.dtype(dtype)
    if out_dtype.kind in "ui" and mean.max() + 8 * np.sqrt(mean.max()) + 8 > np.iinfo(out_dtype).max:
        raise ValueError(f"counts up to {mean.max():.0f} would saturate {out_dtype.name}; lower the counts or use uint32")
    rng = np.random.default_rng(seed)
    return (rng.poisson(mean) if noise else np.rint(mean)).astype(out_dtype)


# The 34-ID-E layout (``rtlib.workloads.laue.scan34ide``): a raw wire positioner offset, step files numbered from here.
WIRE_ORIGIN_34IDE_UM = (-1250.0, 4380.5, 1830.25)
FIRST_STEP_34IDE = 10


def geometry_for_34ide(geometry: ScanGeometry, wire_origin_um=WIRE_ORIGIN_34IDE_UM) -> tuple[ScanGeometry, str, np.ndarray]:
    """(geometry as the beamline's files give it back, geoN XML text, raw wire positions (steps, 3)).

    The geometry goes through the XML (numbers written and read back), so a
    scan written in both layouts from the returned geometry is the same scan
    to the last bit.
    """
    from ..workloads.laue.scan34ide import geometry_xml_text, parse_geometry_xml

    text, raw = geometry_xml_text(geometry, wire_origin_um, note="rtlib synthetic scan")
    parsed = parse_geometry_xml(text.encode(), Path("geoN.xml"))
    return parsed.scan_geometry(raw, geometry.detector.height_px, geometry.detector.width_px), text, raw


def write_laue_scan_34ide(
    folder: str | Path,
    *,
    height_px: int = 64,
    width_px: int = 64,
    sources: Sequence[LaueSource] | None = None,
    num_sources: int = 4,
    depth_start_um: float = 0.0,
    depth_end_um: float = 40.0,
    wire_step_um: float = 1.0,
    wire_diameter_um: float = 52.0,
    background_counts: float = 2.0,
    geometry: ScanGeometry | None = None,
    seed: int = 0,
    dtype: str = "uint16",
    noise: bool = True,
    prefix: str = "wire_scan_",
    scan_number: int = 1,
) -> dict[str, Any]:
    """The scan ``write_laue_scan`` writes, in the APS 34-ID-E layout: ``folder/geoN.xml`` and one HDF5 file per
    wire step (``<prefix><number>.h5``: /entry1/data/data, /entry1/wire/wireX|Y|Z, /entry1/scanNum); the ground
    truth also in ``folder/truth.json``. Returns the ground truth."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    geometry = geometry or default_geometry(
        height_px, width_px, depth_start_um=depth_start_um, depth_end_um=depth_end_um,
        wire_step_um=wire_step_um, wire_diameter_um=wire_diameter_um,
    )
    geometry, xml_text, raw = geometry_for_34ide(geometry)
    if sources is None:
        sources = random_sources(num_sources, height_px, width_px, depth_start_um=depth_start_um,
                                 depth_end_um=depth_end_um, seed=seed)
    images = _draw_images(geometry, sources, background_counts, seed, dtype, noise)
    (folder / "geoN.xml").write_text(xml_text)
    width = max(5, len(str(FIRST_STEP_34IDE + geometry.steps)))
    for i, image in enumerate(images):
        with h5py.File(folder / f"{prefix}{FIRST_STEP_34IDE + i:0{width}d}.h5", "w") as f:
            entry = _group(f, "entry1", "NXentry")
            _group(entry, "data", "NXdata").create_dataset("data", data=image[None], chunks=(1, *image.shape))
            wire = _group(entry, "wire", "NXcollection")
            for axis, value in zip("XYZ", raw[i]):
                _dataset(wire, f"wire{axis}", np.float64(value), "um")
            entry.create_dataset("scanNum", data=np.int64(scan_number))
    truth = {
        "path": str(folder),
        "geometry_file": str(folder / "geoN.xml"),
        "shape": [geometry.steps, height_px, width_px],
        "sources": [asdict(s) for s in sources],
        "background_counts": background_counts,
        "geometry": geometry.to_attrs(),
        "seed": seed,
    }
    (folder / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def write_geometry(entry: h5py.Group, geometry: ScanGeometry) -> None:
    """The geometry datasets of the layout above, into an open ``/entry`` group."""
    wire = _group(entry, "wire", "NXcollection")
    _dataset(wire, "position_um", geometry.wire.centres_um, "um")
    _dataset(wire, "diameter_um", np.float64(geometry.wire.diameter_um), "um")
    _dataset(wire, "axis", geometry.wire.axis, "")
    beam = _group(entry, "beam", "NXbeam")
    _dataset(beam, "origin_um", geometry.beam.origin_um, "um")
    _dataset(beam, "direction", geometry.beam.direction, "")
    det = _group(entry, "detector", "NXdetector")
    _dataset(det, "position_um", geometry.detector.position_um, "um")
    _dataset(det, "rotation_rad", geometry.detector.rotation_rad, "rad")
    _dataset(det, "pixel_size_x_um", np.float64(geometry.detector.pixel_size_x_um), "um")
    _dataset(det, "pixel_size_y_um", np.float64(geometry.detector.pixel_size_y_um), "um")


def read_ground_truth(path: str | Path) -> list[LaueSource]:
    with h5py.File(path, "r") as f:
        return [LaueSource(**s) for s in json.loads(f["/entry/sample"].attrs["synthetic_sources"])]


def _group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.require_group(name)
    group.attrs["NX_class"] = nx_class
    return group


def _dataset(group: h5py.Group, name: str, value: Any, units: str) -> None:
    dset = group.create_dataset(name, data=value)
    if units:
        dset.attrs["units"] = units
