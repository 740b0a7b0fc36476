"""The detector geometry where APS 8-ID-I files keep it, for raw files that lack the NeXus NXdetector fields.

8-ID-I's files (and the results rtlib writes in their layout) keep the geometry under
``/entry/instrument/detector_1`` (``distance``, ``x_pixel_size``, ``beam_center_x``/``_y`` in pixels) and the
beam energy, not its wavelength, at ``/entry/instrument/incident_beam/incident_energy`` (keV). Each value
still comes from the job's parameters first; a value neither there, nor at the NeXus keys
(``saxs.geometry.FILE_KEYS``), nor here leaves the geometry unknown.
"""

from __future__ import annotations

import h5py

from ...errors import InputDataError, ParameterError
from ..saxs.geometry import DetectorGeometry, _convert, _read_scalar, resolve_geometry
from .params import XpcsParams

HC_KEV_ANGSTROM = 12.398419843320026

KEYS = {
    "pixel_size_um": ("/entry/instrument/detector_1/x_pixel_size", "m"),
    "detector_distance_m": ("/entry/instrument/detector_1/distance", "m"),
    "beam_center_x_px": ("/entry/instrument/detector_1/beam_center_x", "pixel"),
    "beam_center_y_px": ("/entry/instrument/detector_1/beam_center_y", "pixel"),
}
ENERGY_KEY = "/entry/instrument/incident_beam/incident_energy"


def resolve_any_geometry(params: XpcsParams, f: h5py.File, label: str) -> DetectorGeometry:
    """The geometry from the parameters and the NeXus keys, else from the parameters and 8-ID-I's keys;
    the NeXus reader's error when neither gives every value."""
    try:
        return resolve_geometry(params, f, label)  # type: ignore[arg-type]  (same field names as SaxsParams)
    except (ParameterError, InputDataError) as nexus_error:
        try:
            return _from_8idi(params, f, label)
        except (ParameterError, InputDataError):
            raise nexus_error from None


def _from_8idi(params: XpcsParams, f: h5py.File, label: str) -> DetectorGeometry:
    values: dict[str, float] = {}
    sources: dict[str, str] = {}
    for name, (key, default_unit) in KEYS.items():  # the pixel size first: a beam centre may be a length
        if getattr(params, name) is not None:
            values[name], sources[name] = float(getattr(params, name)), "parameter"
            continue
        scalar = _read_scalar(f, key, label)
        if scalar is None:
            raise ParameterError(f"{label} has no {key}")
        raw, unit = scalar
        values[name] = _convert(name, raw, unit or default_unit, key, label, values.get("pixel_size_um"))
        sources[name] = f"file:{key}"
    if params.wavelength_angstrom is not None:
        values["wavelength_angstrom"], sources["wavelength_angstrom"] = params.wavelength_angstrom, "parameter"
    else:
        scalar = _read_scalar(f, ENERGY_KEY, label)
        if scalar is None:
            raise ParameterError(f"{label} has no {ENERGY_KEY}")
        energy, unit = scalar
        per_kev = {"kev": 1.0, "ev": 1e-3}.get((unit or "keV").strip().lower())
        if per_kev is None or not energy > 0:
            raise InputDataError(f"{label}: {ENERGY_KEY} = {energy} {unit}; expected a positive energy in keV or eV")
        values["wavelength_angstrom"] = HC_KEV_ANGSTROM / (energy * per_kev)
        sources["wavelength_angstrom"] = f"file:{ENERGY_KEY}"
    return DetectorGeometry(**values, sources=sources)
