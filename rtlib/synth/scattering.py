"""Isotropic small-angle scattering laws with a closed form: the ground truth of the synthetic data.

    I(q) = scale_counts * P(q) + background_counts        (counts per pixel per frame)

with P(0) = 1 and
  * ``guinier``: P(q) = exp(-(q Rg)² / 3), ``radius_angstrom`` is the radius of gyration Rg;
  * ``sphere``:  P(q) = [3 (sin qR - qR cos qR) / (qR)³]², ``radius_angstrom`` is the sphere radius R.

The synthetic detector gives every pixel the expectation I(q) at its centre
and nothing else: no solid-angle, polarisation or absorption factors, so the
azimuthal average of the data *is* I(q) (the saxs workload applies no
corrections either).
"""

from __future__ import annotations

import numpy as np

from .geometry import Geometry, pixel_q_map

FORMS = ("guinier", "sphere")

# Below this qR the sphere amplitude is taken from its Taylor series: the
# closed form subtracts two nearly equal numbers and loses all its digits.
_SPHERE_SERIES_BELOW = 1e-2


def form_factor(q_inv_angstrom: np.ndarray | float, form: str, radius_angstrom: float) -> np.ndarray:
    """P(q), normalised to P(0) = 1."""
    if form not in FORMS:
        raise ValueError(f"unknown scattering form {form!r}; choose one of {', '.join(FORMS)}")
    if not radius_angstrom > 0:
        raise ValueError(f"radius_angstrom must be > 0, got {radius_angstrom!r}")
    q = np.asarray(q_inv_angstrom, dtype=np.float64)
    x = q * radius_angstrom
    if form == "guinier":
        return np.exp(-(x**2) / 3.0)
    small = np.abs(x) < _SPHERE_SERIES_BELOW
    x_safe = np.where(small, 1.0, x)
    amplitude = np.where(
        small,
        1.0 - x**2 / 10.0 + x**4 / 280.0,
        3.0 * (np.sin(x_safe) - x_safe * np.cos(x_safe)) / x_safe**3,
    )
    return amplitude**2


def expected_intensity(
    q_inv_angstrom: np.ndarray | float,
    *,
    form: str = "guinier",
    radius_angstrom: float = 40.0,
    scale_counts: float = 2000.0,
    background_counts: float = 5.0,
) -> np.ndarray:
    """The noiseless I(q) in counts per pixel per frame; call it with ``**truth["model"]``."""
    return scale_counts * form_factor(q_inv_angstrom, form, radius_angstrom) + background_counts


def expected_image(geometry: Geometry, height: int, width: int, **model) -> np.ndarray:
    """The noiseless detector image (counts per pixel per frame) for a model as in ``expected_intensity``."""
    return expected_intensity(pixel_q_map(geometry, height, width), **model)
