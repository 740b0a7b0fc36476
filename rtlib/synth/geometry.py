"""Detector geometry of synthetic data, and the q of each pixel.

Pixel coordinates: the centre of pixel column ``i`` is at ``x = i`` and of
pixel row ``j`` at ``y = j`` (0-based, in pixels); the beam centre is given
in the same coordinates, so ``(0, 0)`` is the centre of the first pixel.

This module deliberately does not share code with the saxs workload: the
synthetic data are the ground truth the workload is tested against, and a
shared bug would cancel out instead of failing a test.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Where the beam hits the detector and how far away, in the units the names carry."""

    beam_center_x_px: float
    beam_center_y_px: float
    detector_distance_m: float = 1.0
    pixel_size_um: float = 75.0  # a DECTRIS Eiger pixel
    wavelength_angstrom: float = 1.0  # 12.4 keV

    def __post_init__(self) -> None:
        for name in ("detector_distance_m", "pixel_size_um", "wavelength_angstrom"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"Geometry.{name} must be a finite number > 0, got {value!r}")
        for name in ("beam_center_x_px", "beam_center_y_px"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"Geometry.{name} must be finite, got {getattr(self, name)!r}")

    @classmethod
    def for_detector(cls, height: int, width: int, **overrides: float) -> "Geometry":
        """A beam centre a little off the middle and off the pixel grid, as on a real detector."""
        values = {"beam_center_x_px": round(0.53 * width + 0.3, 2), "beam_center_y_px": round(0.47 * height - 0.2, 2)}
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def pixel_q_map(geometry: Geometry, height: int, width: int) -> np.ndarray:
    """q in 1/Å at each pixel centre: q = 4π sin(θ)/λ with 2θ = atan(r / distance), exact (no small-angle)."""
    pixel_m = geometry.pixel_size_um * 1e-6
    dx_m = (np.arange(width, dtype=np.float64) - geometry.beam_center_x_px) * pixel_m
    dy_m = (np.arange(height, dtype=np.float64) - geometry.beam_center_y_px) * pixel_m
    radius_m = np.hypot(dy_m[:, None], dx_m[None, :])
    two_theta = np.arctan2(radius_m, geometry.detector_distance_m)
    return 4.0 * np.pi * np.sin(two_theta / 2.0) / geometry.wavelength_angstrom
