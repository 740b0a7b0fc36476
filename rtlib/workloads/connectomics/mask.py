"""Masking what is not neuropil: out-of-tissue regions, blood-vessel lumens and walls, areas without data.

Empty resin and vessel lumens image as bright, nearly flat regions; the
tissue around them is textured. A section's mask is the large bright and
flat regions, holes filled, grown by ``margin_px`` to take in the vessel
wall and the tissue edge, joined with the pixels no tile covered. True
means: excluded from segmentation.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def flat_bright(section: np.ndarray, *, min_gray: float, max_texture_gray: float, window_px: int = 7) -> np.ndarray:
    image = ndi.gaussian_filter(section.astype(np.float64), 1.0)
    mean = ndi.uniform_filter(image, window_px)
    sq = ndi.uniform_filter(image * image, window_px)
    texture = np.sqrt(np.maximum(sq - mean * mean, 0))
    return (mean >= min_gray) & (texture <= max_texture_gray)


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


def section_mask(section: np.ndarray, covered: np.ndarray, *, min_gray: float = 205.0, max_texture_gray: float = 6.0,
                 min_area_px: int = 80, margin_px: int = 6, window_px: int = 7) -> np.ndarray:
    """Bool mask of one aligned section (true = not target tissue)."""
    if not covered.any():
        return np.ones(section.shape, dtype=bool)
    section = fill_uncovered(section, covered)  # so borders look flat, not edged
    candidate = flat_bright(section, min_gray=min_gray, max_texture_gray=max_texture_gray, window_px=window_px) & covered
    candidate = ndi.binary_opening(candidate, iterations=2)
    labels, n = ndi.label(candidate)
    if n:
        sizes = ndi.sum_labels(candidate, labels, index=np.arange(1, n + 1))
        candidate = np.isin(labels, 1 + np.flatnonzero(sizes >= min_area_px))
    candidate = ndi.binary_fill_holes(candidate)
    if candidate.any():
        # The texture window eats about half its width off every flat region: give it back, plus the margin.
        # Grown by distance, not by iterated 3x3 dilation, so a round vessel stays round.
        candidate = ndi.distance_transform_edt(~candidate) <= margin_px + window_px // 2
    return candidate | ~covered


def mask_volume(image: np.ndarray, covered: np.ndarray, **kwargs) -> np.ndarray:
    return np.stack([section_mask(s, c, **kwargs) for s, c in zip(image, covered)])
