"""The APS 34-ID-E wire-scan input: a folder of per-step HDF5 image files plus the beamline's geometry XML.

At 34-ID-E a wire scan is written one image per file, the files numbered
by scan point (``<prefix><number>.h5``, consecutive numbers), each holding::

    /entry1/data/data          (y, x) or (1, y, x) detector counts at this wire step
    /entry1/wire/wireX|Y|Z     ()  the wire positioner's raw position at this step, um
    /entry1/scanNum            ()  the scan number (optional; all files must agree)

The geometry is the ``geoN`` XML file that LaueGo and the APS
reconstruction programs read (fields as LaueGo's geometry reader takes them;
the reader here is rtlib's own)::

    <geoN>
      <Detectors Ndetectors="1">
        <Detector N="0">
          <Npixels>Nx Ny</Npixels>          un-binned pixels along x (columns) and y (rows)
          <size unit="mm">sizeX sizeY</size> outer size of the pixel array
          <R unit="radian">Rx Ry Rz</R>      rotation vector (axis times angle)
          <P unit="mm">Px Py Pz</P>          translation: pixel (x', y') of the detector, centred on
                                             its middle, is at rho(R) . ((x', y', 0) + P)
        </Detector>
      </Detectors>
      <Wire>
        <dia unit="micron">52</dia>          wire diameter
        <Axis>1 0 0</Axis>                   wire axis in the positioner's frame (optional, default 1 0 0)
        <Origin unit="micron">x y z</Origin> raw positioner position that puts the wire axis at the origin
        <R unit="radian">Rx Ry Rz</R>        positioner rotation (optional, default none)
      </Wire>
    </geoN>

In beamline coordinates the incident beam runs along +z through the
origin, which is depth 0; the wire axis at a step passes through
``rho(Rwire) . (raw - Origin)`` along ``rho(Rwire) . Axis``.

``stack_scan`` checks every step file and the XML and copies the images
and the geometry into one file of rtlib's own layout (``rtlib.synth.laue``),
which the reconstruction then reads as it reads any scan: so both layouts
give the same result. Every problem (a missing or truncated step, step
images of different sizes, a field missing from the XML) is an
InputDataError naming the file.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from ...errors import InputDataError
from ..h5safe import open_input
from .geometry import ScanGeometry, make_geometry, rotation_matrix

STEP_DATASET = "/entry1/data/data"
STACKED_DATASET = "/entry/data/data"  # where stack_scan puts the images (rtlib's layout, rtlib.synth.laue)
WIRE_KEYS = ("/entry1/wire/wireX", "/entry1/wire/wireY", "/entry1/wire/wireZ")
SCAN_NUMBER = "/entry1/scanNum"
XML_SUFFIXES = (".xml",)
STEP_SUFFIXES = (".h5", ".hdf5")
# A geometry file is a few kilobytes; anything this large is not one (and is not parsed).
MAX_XML_BYTES = 1 * 2**20
# A scan has at most this many steps (files); more is not a wire scan.
MAX_STEPS = 100_000
_STEP_NAME = re.compile(r"^(.*?)(\d+)$")


@dataclass(frozen=True)
class DetectorXML:
    pixels_x: int
    pixels_y: int
    size_x_mm: float
    size_y_mm: float
    rotation_rad: np.ndarray
    translation_mm: np.ndarray


@dataclass(frozen=True)
class WireXML:
    diameter_um: float
    axis: np.ndarray
    origin_um: np.ndarray
    rotation_rad: np.ndarray


@dataclass(frozen=True)
class GeometryXML:
    path: Path
    detector: DetectorXML
    wire: WireXML

    def scan_geometry(self, raw_wire_um: np.ndarray, height_px: int, width_px: int,
                      wire_diameter_um: float | None = None) -> ScanGeometry:
        """The beamline geometry of a scan whose wire positioner read ``raw_wire_um`` (steps, 3) at each step."""
        d, w = self.detector, self.wire
        if (height_px, width_px) != (d.pixels_y, d.pixels_x):
            raise InputDataError(
                f"{self.path}: the detector has {d.pixels_x} x {d.pixels_y} pixels (Npixels, x then y) but the step "
                f"images are {width_px} x {height_px} (x by y); binned or cropped images are not supported: "
                "use the geometry file written for these images"
            )
        rho = rotation_matrix(d.rotation_rad)
        rho_wire = rotation_matrix(w.rotation_rad)
        try:
            return make_geometry(
                beam_origin_um=[0.0, 0.0, 0.0], beam_direction=[0.0, 0.0, 1.0],
                wire_axis=rho_wire @ w.axis,
                wire_diameter_um=w.diameter_um if wire_diameter_um is None else wire_diameter_um,
                wire_centres_um=(np.asarray(raw_wire_um, dtype=np.float64) - w.origin_um) @ rho_wire.T,
                detector_position_um=rho @ (1000.0 * d.translation_mm), detector_rotation_rad=d.rotation_rad,
                pixel_size_x_um=1000.0 * d.size_x_mm / d.pixels_x, pixel_size_y_um=1000.0 * d.size_y_mm / d.pixels_y,
                height_px=height_px, width_px=width_px,
            )
        except ValueError as err:
            raise InputDataError(f"{self.path}: unusable geometry: {err}") from None


def read_geometry_xml(path: Path) -> GeometryXML:
    """The first detector and the wire of a geoN geometry XML file."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"geometry file {path} does not exist (or is not a file); stage the geoN XML with the scan")
    size = path.stat().st_size
    if size > MAX_XML_BYTES:
        raise InputDataError(f"geometry file {path} is {size} bytes, more than a geometry file's {MAX_XML_BYTES}; "
                             "is it the geoN XML?")
    return parse_geometry_xml(path.read_bytes(), path)


def parse_geometry_xml(text: bytes, path: Path) -> GeometryXML:
    """``read_geometry_xml`` of the file's bytes; ``path`` names it in errors."""
    if b"<!DOCTYPE" in text or b"<!ENTITY" in text:
        # ElementTree expands internal entities (a "billion laughs" file); a geometry file declares none.
        raise InputDataError(f"geometry file {path} declares a DOCTYPE or entities; a geoN file has none, refused")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        raise InputDataError(f"geometry file {path} is not well-formed XML ({err})") from None
    geo = root if _local(root.tag) == "geoN" else _child(root, "geoN")
    if geo is None:
        raise InputDataError(f"geometry file {path} has no <geoN> element; it is not a LaueGo/34-ID-E geometry file")
    detectors = _child(geo, "Detectors")
    detector = None if detectors is None else _child(detectors, "Detector")
    if detector is None:
        raise InputDataError(f"geometry file {path} has no <Detectors><Detector> element")
    wire = _child(geo, "Wire")
    if wire is None:
        raise InputDataError(f"geometry file {path} has no <Wire> element; a wire scan needs the wire's geometry")
    npixels = _numbers(path, detector, "Detector", "Npixels", 2)
    if not all(float(n).is_integer() and 0 < n <= 100_000 for n in npixels):
        raise InputDataError(f"geometry file {path}: <Detector><Npixels> must be two positive whole numbers, got {npixels.tolist()}")
    size_mm = _numbers(path, detector, "Detector", "size", 2)
    if not np.all(size_mm > 0):
        raise InputDataError(f"geometry file {path}: <Detector><size> must be positive (mm), got {size_mm.tolist()}")
    diameter = _numbers(path, wire, "Wire", "dia", 1)[0]
    if not diameter > 0:
        raise InputDataError(f"geometry file {path}: <Wire><dia> must be positive (um), got {diameter}")
    return GeometryXML(
        path=path,
        detector=DetectorXML(
            pixels_x=int(npixels[0]), pixels_y=int(npixels[1]), size_x_mm=float(size_mm[0]), size_y_mm=float(size_mm[1]),
            rotation_rad=_numbers(path, detector, "Detector", "R", 3),
            translation_mm=_numbers(path, detector, "Detector", "P", 3),
        ),
        wire=WireXML(
            diameter_um=float(diameter),
            axis=_numbers(path, wire, "Wire", "Axis", 3, default=np.array([1.0, 0.0, 0.0])),  # LaueGo's default too
            origin_um=_numbers(path, wire, "Wire", "Origin", 3),
            rotation_rad=_numbers(path, wire, "Wire", "R", 3, default=np.zeros(3)),
        ),
    )


def is_34ide_input(inputs: Iterable[Path]) -> bool:
    """Whether the inputs are a 34-ID-E scan: a geometry XML among them, or a folder of step files."""
    return any(Path(p).suffix.lower() in XML_SUFFIXES or Path(p).is_dir() for p in inputs)


def split_inputs(inputs: Iterable[Path]) -> tuple[list[Path], Path]:
    """(step files in scan order, geometry XML) among the inputs; a folder stands for the step files in it."""
    given, in_folders, steps = [], [], []
    for p in map(Path, inputs):
        if p.suffix.lower() in XML_SUFFIXES:
            given.append(p)
        elif p.is_dir():
            steps += [q for q in p.iterdir() if q.suffix.lower() in STEP_SUFFIXES and q.is_file()]
            in_folders += [q for q in p.iterdir() if q.suffix.lower() in XML_SUFFIXES and q.is_file()]
        elif p.suffix.lower() in STEP_SUFFIXES:
            steps.append(p)
    # An XML named as an input wins over one found in the scan folder; the same file named twice is one.
    xmls = list({p.resolve(): p for p in (given or in_folders)}.values())
    if not xmls:
        raise InputDataError("a 34-ID-E scan needs its geometry XML (geoN) among the inputs (--geometry GEO.xml)")
    if len(xmls) > 1:
        raise InputDataError(f"{len(xmls)} geometry XML files among the inputs ({', '.join(map(str, xmls[:4]))}); give one")
    return order_steps(steps), xmls[0]


def order_steps(files: list[Path]) -> list[Path]:
    """Step files sorted by their number; all one prefix, consecutive numbers (a gap is a missing step)."""
    if len(files) > MAX_STEPS:
        raise InputDataError(f"{len(files)} step files, more than a wire scan's {MAX_STEPS}")
    numbered: dict[str, list[tuple[int, Path]]] = {}
    for f in dict.fromkeys(files):
        match = _STEP_NAME.match(f.stem)
        if match is None:
            raise InputDataError(f"step file {f} has no step number at the end of its name (<prefix><number>.h5)")
        numbered.setdefault(match.group(1), []).append((int(match.group(2)), f))
    if not numbered:
        raise InputDataError("no wire-step HDF5 files (<prefix><number>.h5) among the inputs of the 34-ID-E scan")
    if len(numbered) > 1:
        raise InputDataError(f"step files of {len(numbered)} different scans (prefixes {sorted(numbered)[:4]}); "
                             "stage the files of one scan")
    (prefix, steps), = numbered.items()
    steps.sort()
    numbers = [n for n, _ in steps]
    if len(set(numbers)) != len(numbers):
        twice = next(n for n in numbers if numbers.count(n) > 1)
        raise InputDataError(f"step {twice} of scan {prefix!r} is there twice: "
                             f"{', '.join(str(f) for n, f in steps if n == twice)}")
    if len(steps) < 2:
        raise InputDataError(f"the 34-ID-E scan {prefix!r} has {len(steps)} step file; a wire scan needs at least 2")
    for (a, fa), (b, _) in zip(steps, steps[1:]):
        if b != a + 1:
            width = len(_STEP_NAME.match(fa.stem).group(2))
            missing = fa.with_name(f"{prefix}{a + 1:0{width}d}{fa.suffix}")
            raise InputDataError(f"wire-step file {missing} is missing: the scan goes from {fa.name} to step {b} "
                                 "(re-transfer it, or the scan was interrupted)")
    return [f for _, f in steps]


def stack_scan(inputs: list[Path], out_path: Path, wire_diameter_um: float | None = None,
               progress=None) -> tuple[ScanGeometry, dict]:
    """Check the 34-ID-E scan among ``inputs`` and write it to ``out_path`` in rtlib's layout; (geometry, facts)."""
    from ...synth.laue import write_geometry

    steps, xml_path = split_inputs(inputs)
    geo_xml = read_geometry_xml(xml_path)
    raw_wire = np.empty((len(steps), 3))
    shape = dtype = scan_number = None
    report = progress or (lambda fraction, message: None)
    with h5py.File(out_path, "w") as out:
        for i, step in enumerate(steps):
            with open_input(step, inputs, workload="laue", what="wire-step file") as f:
                image = _step_image(f, step)
                if shape is None:
                    shape, dtype = image.shape, image.dtype
                    images = out.create_dataset(STACKED_DATASET, shape=(len(steps), *shape), dtype=dtype, chunks=(1, *shape))
                elif image.shape != shape:
                    raise InputDataError(f"wire-step file {step}: its image is {image.shape[1]} x {image.shape[0]} "
                                         f"pixels but {steps[0].name} (the first step) is {shape[1]} x {shape[0]}; "
                                         "all steps of a scan must have the same image size")
                images[i] = _read(step, image, STEP_DATASET).reshape(shape)
                raw_wire[i] = [_scalar(f, step, key) for key in WIRE_KEYS]
                number = _scalar(f, step, SCAN_NUMBER, required=False)
                if number is not None:
                    if scan_number is not None and number != scan_number:
                        raise InputDataError(f"wire-step file {step} belongs to scan {number:g}, the steps before it "
                                             f"to scan {scan_number:g}")
                    scan_number = number
            report((i + 1) / len(steps), f"read step file {step.name}")
        geometry = geo_xml.scan_geometry(raw_wire, shape[0], shape[1], wire_diameter_um)
        entry = out["/entry"]
        write_geometry(entry, geometry)
        images.attrs["units"] = "counts"
    facts = {"input_layout": "34ide", "step_files": len(steps), "first_step_file": steps[0].name,
             "geometry_file": xml_path.name}
    if scan_number is not None:
        facts["scan_number"] = int(scan_number)
    return geometry, facts


def _step_image(f: h5py.File, step: Path) -> h5py.Dataset:
    try:
        obj = f.get(STEP_DATASET)
    except (KeyError, OSError):
        obj = None
    if not isinstance(obj, h5py.Dataset):
        raise InputDataError(f"wire-step file {step} has no image dataset {STEP_DATASET}")
    if obj.dtype.kind not in "uif":
        raise InputDataError(f"wire-step file {step}: {STEP_DATASET} holds {obj.dtype} values; expected detector counts")
    shape = obj.shape[1:] if obj.ndim == 3 and obj.shape[0] == 1 else obj.shape
    if len(shape) != 2 or 0 in shape:
        raise InputDataError(f"wire-step file {step}: {STEP_DATASET} has shape {obj.shape}; expected one image (y, x)")
    return _Image(obj, tuple(shape))


class _Image:
    """A step's image dataset with its shape as one 2-D image (a (1, y, x) dataset counts as (y, x))."""

    def __init__(self, dataset: h5py.Dataset, shape: tuple[int, int]):
        self.dataset, self.shape, self.dtype = dataset, shape, dataset.dtype


def _read(step: Path, image: _Image, key: str) -> np.ndarray:
    try:
        return image.dataset[()]
    except OSError as err:
        raise InputDataError(f"wire-step file {step}: reading {key} failed ({err}); the file is damaged "
                             "(re-transfer it)") from None


def _scalar(f: h5py.File, step: Path, key: str, required: bool = True) -> float | None:
    try:
        obj = f.get(key)
    except (KeyError, OSError):
        obj = None
    if obj is None and not required:
        return None
    if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "uif" or obj.size != 1:
        raise InputDataError(f"wire-step file {step} has no number at {key}; a 34-ID-E step file holds the wire "
                             "position (wireX, wireY, wireZ, um) of its step")
    try:
        value = float(np.asarray(obj[()]).reshape(()))
    except OSError as err:
        raise InputDataError(f"wire-step file {step}: reading {key} failed ({err}); re-transfer it") from None
    if not np.isfinite(value):
        raise InputDataError(f"wire-step file {step}: {key} is {value}")
    return value


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in element if _local(c.tag) == name), None)


def _numbers(path: Path, parent: ET.Element, parent_name: str, name: str, count: int,
             default: np.ndarray | None = None) -> np.ndarray:
    element = _child(parent, name)
    if element is None or not (element.text or "").strip():
        if default is not None:
            return default
        raise InputDataError(f"geometry file {path}: <{parent_name}> has no <{name}>; it is needed for the reconstruction")
    text = element.text.strip().strip("{}").replace(",", " ")
    try:
        values = np.array([float(v) for v in text.split()], dtype=np.float64)
    except ValueError:
        raise InputDataError(f"geometry file {path}: <{parent_name}><{name}> is {element.text.strip()!r}; "
                             f"expected {count} number(s)") from None
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise InputDataError(f"geometry file {path}: <{parent_name}><{name}> is {element.text.strip()!r}; "
                             f"expected {count} finite number(s)")
    return values


def geometry_xml_text(geometry: ScanGeometry, wire_origin_um=(0.0, 0.0, 0.0), note: str = "") -> tuple[str, np.ndarray]:
    """(geoN XML text, raw wire positions (steps, 3)) describing ``geometry`` the way 34-ID-E writes it.

    The detector's P is its position brought back through its rotation; the
    wire positioner is unrotated and offset by ``wire_origin_um``.
    """
    d = geometry.detector
    if abs(float(geometry.beam.direction @ [0.0, 0.0, 1.0]) - 1.0) > 1e-12 or np.any(geometry.beam.origin_um != 0):
        raise ValueError("a geoN geometry has the beam along +z through the origin")
    rho = rotation_matrix(d.rotation_rad)
    translation_mm = rho.T @ d.position_um / 1000.0
    origin = np.asarray(wire_origin_um, dtype=np.float64)

    def vec(v) -> str:
        return " ".join(repr(float(x)) for x in v)

    text = f"""<?xml version="1.0" encoding="UTF-8"?>
<geoN>
  <dateWritten>{note}</dateWritten>
  <Detectors Ndetectors="1">
    <Detector N="0">
      <Npixels>{d.width_px} {d.height_px}</Npixels>
      <size unit="mm">{d.pixel_size_x_um * d.width_px / 1000.0!r} {d.pixel_size_y_um * d.height_px / 1000.0!r}</size>
      <R unit="radian">{vec(d.rotation_rad)}</R>
      <P unit="mm">{vec(translation_mm)}</P>
      <ID>synthetic</ID>
    </Detector>
  </Detectors>
  <Wire>
    <dia unit="micron">{float(geometry.wire.diameter_um)!r}</dia>
    <Knife>0</Knife>
    <Origin unit="micron">{vec(origin)}</Origin>
    <Axis>{vec(geometry.wire.axis)}</Axis>
  </Wire>
</geoN>
"""
    return text, geometry.wire.centres_um + origin
