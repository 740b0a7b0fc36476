"""Masking what is not neuropil, from the data: unimaged pixels, and what the network finds is no neuron.

Nothing here compares a grey level with a fixed number. A section's mask
starts as the pixels no tile covered (known from stitching). The rest
comes from the U-Net's third output, ``nontarget``: the probability of
a vessel (lumen and wall), a cell body (soma with its nucleus) or resin
beyond the tissue's edge, trained on a family of renderings of both
synthetic styles (so the texture between sparse neurites is not masked,
and neither is the thin extracellular space of neuropil). Smoothed
in-plane over ``smoothing_nm`` (a Gaussian), isolated false pixels stay
below ``threshold`` while regions wider than about twice ``smoothing_nm``
rise above it: those are masked. The rule reads a
bounded neighbourhood, so block-wise masking with a halo of ``reach_px``
gives the same mask as the whole volume. True means: excluded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class MaskSettings:
    smoothing_px: float = 6.0  # Gaussian sigma in-plane, px (the workload sets it from smoothing_nm)
    threshold: float = 0.5  # smoothed non-target probability above this: masked
    truncate: float = 3.0  # the Gaussian's reach in sigmas

    @property
    def reach_px(self) -> int:
        return int(np.ceil(self.truncate * self.smoothing_px)) + 1

    @classmethod
    def from_nm(cls, smoothing_nm: float, pixel_size_nm: float, threshold: float = 0.5) -> "MaskSettings":
        return cls(smoothing_px=max(1.0, smoothing_nm / pixel_size_nm), threshold=threshold)


def network_mask(nontarget: np.ndarray, settings: MaskSettings | None = None) -> np.ndarray:
    """Bool (z, y, x): where the in-plane smoothed non-target probability (float or uint8 x 255) is high."""
    from .segment import as_probability

    settings = settings or MaskSettings()
    prob = as_probability(nontarget)
    smooth = ndi.gaussian_filter(prob, (0, settings.smoothing_px, settings.smoothing_px), mode="nearest",
                                 truncate=settings.truncate)
    return smooth > np.float32(settings.threshold)


def fill_uncovered(section: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """``section`` with every pixel no tile covered set to its nearest covered pixel's value (a copy if any changed).

    The stitched frame's edges can lack data where tiles lay up to 15 px off their nominal place; a black
    band there reads as membrane to the U-Net, whose 3D receptive field then doubts the interior of a
    neuron at the frame edge in the sections around too. Filled, the band continues the tissue beside it.
    """
    if covered.all() or not covered.any():
        return section
    _, nearest = ndi.distance_transform_edt(~covered, return_indices=True)
    return section[tuple(nearest)]
