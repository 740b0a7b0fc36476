"""The detector geometry of a run: each value from the parameters, else from the file; and the q of each pixel.

File values are read from NeXus NXdetector / NXmonochromator fields and
converted by their ``units`` attribute (a field without one is taken in the
unit the NeXus/Eiger convention uses, listed in ``FILE_KEYS``). The beam
centre may be stored in pixels or as a length on the detector face.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from ...errors import InputDataError, ParameterError
from .params import SaxsParams

GEOMETRY_FIELDS = ("beam_center_x_px", "beam_center_y_px", "detector_distance_m", "pixel_size_um", "wavelength_angstrom")

# (file key, unit assumed when the dataset has no units attribute), in the order they are tried.
FILE_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "beam_center_x_px": (("/entry/instrument/detector/beam_center_x", "pixel"),),
    "beam_center_y_px": (("/entry/instrument/detector/beam_center_y", "pixel"),),
    "detector_distance_m": (
        ("/entry/instrument/detector/distance", "m"),
        ("/entry/instrument/detector/detector_distance", "m"),  # DECTRIS Eiger
    ),
    "pixel_size_um": (("/entry/instrument/detector/x_pixel_size", "m"),),
    "wavelength_angstrom": (
        ("/entry/instrument/monochromator/wavelength", "angstrom"),
        ("/entry/instrument/beam/incident_wavelength", "angstrom"),  # DECTRIS Eiger
    ),
}
_Y_PIXEL_SIZE_KEY = "/entry/instrument/detector/y_pixel_size"

# Metres per unit; keys are lower case.
_METRES_PER_UNIT = {
    "m": 1.0, "meter": 1.0, "metre": 1.0, "meters": 1.0, "metres": 1.0,
    "cm": 1e-2, "mm": 1e-3, "millimeter": 1e-3, "millimetre": 1e-3,
    "um": 1e-6, "µm": 1e-6, "μm": 1e-6, "micron": 1e-6, "microns": 1e-6, "micrometer": 1e-6, "micrometre": 1e-6,
    "nm": 1e-9, "nanometer": 1e-9, "nanometre": 1e-9,
    "angstrom": 1e-10, "angstroms": 1e-10, "ångström": 1e-10, "å": 1e-10,
}
_PIXEL_UNITS = {"pixel", "pixels", "px"}
# Metres per unit of each length parameter, named for its unit.
_TARGET_METRES = {"detector_distance_m": 1.0, "pixel_size_um": 1e-6, "wavelength_angstrom": 1e-10}


@dataclass(frozen=True)
class DetectorGeometry:
    beam_center_x_px: float
    beam_center_y_px: float
    detector_distance_m: float
    pixel_size_um: float
    wavelength_angstrom: float
    # Where each value came from: "parameter" or "file:<key>".
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def values(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in GEOMETRY_FIELDS}

    def q_map(self, height: int, width: int) -> np.ndarray:
        """q in 1/Å at each pixel centre: q = 4π sin(θ)/λ, 2θ = atan(r / distance) (no small-angle approximation)."""
        pixel_m = self.pixel_size_um * 1e-6
        x_m = (np.arange(width, dtype=np.float64) - self.beam_center_x_px) * pixel_m
        y_m = (np.arange(height, dtype=np.float64) - self.beam_center_y_px) * pixel_m
        two_theta = np.arctan(np.sqrt(y_m[:, None] ** 2 + x_m[None, :] ** 2) / self.detector_distance_m)
        return (4.0 * np.pi / self.wavelength_angstrom) * np.sin(0.5 * two_theta)


def resolve_geometry(params: SaxsParams, f: h5py.File, file_label: str) -> DetectorGeometry:
    """Each geometry value from ``params`` if given, else from the file; ParameterError if neither has it."""
    values: dict[str, float] = {}
    sources: dict[str, str] = {}
    # The pixel size first: a beam centre stored as a length is converted with it.
    for name in ("pixel_size_um", "detector_distance_m", "wavelength_angstrom", "beam_center_x_px", "beam_center_y_px"):
        given = getattr(params, name)
        if given is not None:
            values[name], sources[name] = float(given), "parameter"
            continue
        found = _first_present(f, name, file_label)
        if found is None:
            keys = [key for key, _ in FILE_KEYS[name]]
            raise ParameterError(
                f"{name} was not given and {file_label} has no {' nor '.join(keys)}; "
                f"pass {name} in the job parameters"
            )
        key, raw, unit = found
        values[name] = _convert(name, raw, unit, key, file_label, values.get("pixel_size_um"))
        sources[name] = f"file:{key}"
        if name == "pixel_size_um":
            _refuse_non_square_pixels(f, values[name], file_label)
    return DetectorGeometry(**values, sources=sources)


def geometry_attrs(geometry: DetectorGeometry) -> dict[str, Any]:
    """Flat HDF5 attributes recording the geometry used and where each value came from."""
    attrs: dict[str, Any] = dict(geometry.values())
    attrs.update({f"{name}_source": src for name, src in geometry.sources.items()})
    return attrs


# -- reading and converting ------------------------------------------------------------


def _first_present(f: h5py.File, name: str, file_label: str) -> tuple[str, float, str] | None:
    for key, default_unit in FILE_KEYS[name]:
        scalar = _read_scalar(f, key, file_label)
        if scalar is not None:
            value, unit = scalar
            return key, value, (unit or default_unit)
    return None


def _read_scalar(f: h5py.File, key: str, file_label: str) -> tuple[float, str | None] | None:
    try:
        obj = f.get(key)
    except (KeyError, OSError):  # a dangling soft or external link
        return None
    if obj is None:
        return None
    if not isinstance(obj, h5py.Dataset):
        raise InputDataError(f"{file_label}: {key} is a group; expected a dataset holding one number")
    if obj.size != 1 or obj.dtype.kind not in "uif":  # checked before reading: a crafted file may declare any shape
        raise InputDataError(
            f"{file_label}: {key} holds {obj.dtype} data of shape {obj.shape}; expected one number"
        )
    data = np.asarray(obj[()])
    unit = obj.attrs.get("units")
    if isinstance(unit, np.ndarray) and unit.size == 1:  # some writers store a one-element array
        unit = unit.item()
    if isinstance(unit, bytes):
        unit = unit.decode("utf-8", "replace")
    unit = str(unit).strip() if unit is not None else ""
    return float(data.reshape(())), unit or None


def _convert(name: str, raw: float, unit: str, key: str, file_label: str, pixel_size_um: float | None) -> float:
    unit_key = unit.strip().lower()
    if not math.isfinite(raw):
        raise InputDataError(f"{file_label}: {key} = {raw} is not a finite number; pass {name} explicitly")
    if name.startswith("beam_center"):
        if unit_key in _PIXEL_UNITS:
            return raw
        if unit_key in _METRES_PER_UNIT and pixel_size_um:
            return raw * _METRES_PER_UNIT[unit_key] / (pixel_size_um * 1e-6)
        raise InputDataError(
            f"{file_label}: {key} has units {unit!r}; expected pixels or a length (m, mm, um); pass {name} explicitly"
        )
    if unit_key not in _METRES_PER_UNIT:
        raise InputDataError(
            f"{file_label}: {key} has units {unit!r}, not a length rtlib knows "
            f"(m, mm, um, nm, angstrom, ...); fix the units attribute or pass {name} explicitly"
        )
    value = raw * _METRES_PER_UNIT[unit_key] / _TARGET_METRES[name]
    if value <= 0:
        raise InputDataError(f"{file_label}: {key} = {raw} {unit} must be > 0; fix the file or pass {name} explicitly")
    return value


def _refuse_non_square_pixels(f: h5py.File, x_pixel_size_um: float, file_label: str) -> None:
    scalar = _read_scalar(f, _Y_PIXEL_SIZE_KEY, file_label)
    if scalar is None:
        return
    raw, unit = scalar
    metres = _METRES_PER_UNIT.get((unit or "m").strip().lower())
    if metres is None:
        return  # unreadable y size: the x size is all the q map uses, so do not fail on it
    y_um = raw * metres * 1e6
    if not math.isclose(y_um, x_pixel_size_um, rel_tol=1e-6):
        raise InputDataError(
            f"{file_label}: pixels are not square (x {x_pixel_size_um:g} um, y {y_um:g} um) and saxs assumes square "
            "pixels; pass pixel_size_um to override"
        )
