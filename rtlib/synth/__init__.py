"""Synthetic detector data with known ground truth, for tests, demos and benchmarks."""

from .detector import (
    DATASET_PATH,
    Geometry,
    corrupt_file,
    frames_for_size,
    read_ground_truth,
    write_detector_file,
)
from .geometry import pixel_q_map
from .scattering import FORMS, expected_image, expected_intensity, form_factor

__all__ = [
    "DATASET_PATH",
    "FORMS",
    "Geometry",
    "corrupt_file",
    "expected_image",
    "expected_intensity",
    "form_factor",
    "frames_for_size",
    "pixel_q_map",
    "read_ground_truth",
    "write_detector_file",
]
