"""The geometry of a wire scan: incident beam, wire, area detector; and the depth a wire edge points at.

Coordinates are beamline coordinates in micrometres. The incident beam is
the line ``origin_um + depth_um * direction``: depth 0 is ``origin_um`` and
depth grows along the beam. The wire is an infinite cylinder of diameter
``diameter_um`` whose axis, along ``axis``, passes through ``centres_um[i]``
at scan step ``i``. The detector is a flat array of ``height_px`` x
``width_px`` pixels: pixel (row, col) sits at
``position_um + R @ ((col - (width-1)/2) * pixel_size_x_um, (row - (height-1)/2) * pixel_size_y_um, 0)``
where ``R`` is the rotation whose rotation vector (axis times angle, as
the APS 34-ID geometry files give it) is ``rotation_rad``.

Why the depth is computed in a plane: a straight ray touches the wire
cylinder exactly where its projection along the wire axis touches the
wire's circular cross-section. So every ray, wire and beam is projected
onto the plane perpendicular to the wire axis, and the depth of a pixel's
ray at a wire edge is where the tangent from the pixel to the circle meets
the (projected) beam. Depths stay in true micrometres along the beam
because the projection is linear.

The *leading* edge is the side of the wire facing its motion: a ray is
blocked when the leading edge crosses it. The *trailing* edge unblocks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Edge = Literal["leading", "trailing"]
EDGES: tuple[Edge, ...] = ("leading", "trailing")


def rotation_matrix(rotation_rad: np.ndarray) -> np.ndarray:
    """The 3x3 rotation of a rotation vector (axis times angle in radians; Rodrigues' formula)."""
    vector = np.asarray(rotation_rad, dtype=np.float64).reshape(3)
    angle = float(np.linalg.norm(vector))
    if angle == 0.0:
        return np.eye(3)
    k = vector / angle
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.cos(angle) * np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * np.outer(k, k)


def unit(vector: np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64).reshape(3)
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError(f"{name} must be a non-zero, finite 3-vector, got {v.tolist()}")
    return v / norm


@dataclass(frozen=True)
class Beam:
    origin_um: np.ndarray  # (3,) the point of depth 0
    direction: np.ndarray  # (3,) unit vector of the incident beam

    def point_um(self, depth_um: np.ndarray | float) -> np.ndarray:
        return self.origin_um + np.multiply.outer(depth_um, self.direction)


@dataclass(frozen=True)
class Detector:
    position_um: np.ndarray  # (3,) centre of the pixel array
    rotation_rad: np.ndarray  # (3,) rotation vector from detector to beamline frame
    pixel_size_x_um: float
    pixel_size_y_um: float
    height_px: int
    width_px: int

    def pixel_positions_um(self, rows: np.ndarray | slice | None = None, cols: np.ndarray | slice | None = None) -> np.ndarray:
        """(len(rows), len(cols), 3) beamline positions of pixel centres; all pixels by default."""
        row_idx = np.arange(self.height_px, dtype=np.float64)[rows if rows is not None else slice(None)]
        col_idx = np.arange(self.width_px, dtype=np.float64)[cols if cols is not None else slice(None)]
        local_x = (col_idx - (self.width_px - 1) / 2.0) * self.pixel_size_x_um
        local_y = (row_idx - (self.height_px - 1) / 2.0) * self.pixel_size_y_um
        r = rotation_matrix(self.rotation_rad)
        return self.position_um + local_y[:, None, None] * r[:, 1] + local_x[None, :, None] * r[:, 0]


@dataclass(frozen=True)
class Wire:
    axis: np.ndarray  # (3,) unit vector along the wire
    diameter_um: float
    centres_um: np.ndarray  # (steps, 3) a point on the wire axis at each step

    @property
    def radius_um(self) -> float:
        return 0.5 * self.diameter_um


@dataclass(frozen=True)
class ScanGeometry:
    beam: Beam
    detector: Detector
    wire: Wire
    # The plane perpendicular to the wire axis, and the motion within it.
    _plane: np.ndarray = field(init=False, repr=False, compare=False)
    _motion_2d: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        axis = self.wire.axis
        helper = np.eye(3)[int(np.argmin(np.abs(axis)))]
        e1 = np.cross(axis, helper)
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(axis, e1)
        object.__setattr__(self, "_plane", np.stack([e1, e2]))
        centres = self.wire.centres_um
        travel = (centres[-1] - centres[0]) @ self._plane.T if len(centres) > 1 else np.zeros(2)
        norm = float(np.linalg.norm(travel))
        object.__setattr__(self, "_motion_2d", travel / norm if norm > 0 else travel)

    @property
    def steps(self) -> int:
        return int(self.wire.centres_um.shape[0])

    def project(self, points_um: np.ndarray) -> np.ndarray:
        """(..., 3) beamline points -> (..., 2) in the plane perpendicular to the wire axis."""
        return np.asarray(points_um, dtype=np.float64) @ self._plane.T

    def scan_positions_um(self) -> np.ndarray:
        """Each step's wire displacement from the first step, along the overall scan direction, in the plane."""
        return (self.wire.centres_um - self.wire.centres_um[0]) @ self._plane.T @ self._motion_2d

    def edge_depth_um(self, pixel_um: np.ndarray, step: int, edge: Edge) -> np.ndarray:
        """Depth along the beam of the ray to each pixel that the ``edge`` of the wire at ``step`` touches.

        ``pixel_um``: (..., 3) pixel positions. NaN where no such ray
        exists: the pixel inside the wire's shadow cylinder, the tangent
        parallel to the beam, or the wire moving straight at the pixel.
        """
        pixel_um = np.asarray(pixel_um, dtype=np.float64)
        return self.edge_depth_projected_um(self.project(pixel_um), step, edge)

    def edge_depth_projected_um(self, pixel_2d: np.ndarray, step: int, edge: Edge) -> np.ndarray:
        """``edge_depth_um`` for pixels already projected with ``project`` (the hot loop reuses them)."""
        if edge not in EDGES:
            raise ValueError(f"edge must be one of {EDGES}, got {edge!r}")
        wire_2d = self.project(self.wire.centres_um[step])
        origin_2d = self.project(self.beam.origin_um)
        beam_2d = self.project(self.beam.direction)
        qx, qy = pixel_2d[..., 0], pixel_2d[..., 1]
        ux, uy = wire_2d[0] - qx, wire_2d[1] - qy
        distance = np.hypot(ux, uy)
        with np.errstate(invalid="ignore", divide="ignore"):
            sin_a = self.wire.radius_um / distance
            cos_a = np.sqrt(1.0 - sin_a * sin_a)  # NaN inside the wire's shadow
            ux, uy = ux / distance, uy / distance
            # The wire's angular extent seen from the pixel is [angle(u) - a, angle(u) + a]; it moves
            # counter-clockwise when the motion has a positive cross product with u, and then the
            # leading edge is the tangent rotated by +a.
            turning = ux * self._motion_2d[1] - uy * self._motion_2d[0]
            sign = np.sign(turning) if edge == "leading" else -np.sign(turning)
            sign = np.where(sign == 0, np.nan, sign)
            sin_s = sign * sin_a
            tx = cos_a * ux - sin_s * uy
            ty = sin_s * ux + cos_a * uy
            # Where the tangent q + lambda t meets the beam o + d b.
            rel_x, rel_y = qx - origin_2d[0], qy - origin_2d[1]
            denominator = tx * beam_2d[1] - ty * beam_2d[0]
            depth = (tx * rel_y - ty * rel_x) / denominator
            # The ray must pass the wire on its way: the beam lies beyond the tangent point as seen from
            # the pixel (a wire behind the beam, or behind the pixel, occludes nothing).
            reach = (beam_2d[0] * rel_y - beam_2d[1] * rel_x) / denominator
            return np.where(reach > distance * cos_a, depth, np.nan)

    def occluded(self, pixel_um: np.ndarray, depth_um: np.ndarray, step: int) -> np.ndarray:
        """Whether the wire at ``step`` blocks the ray from depth ``depth_um`` to each pixel (broadcasting).

        Computed directly (distance of the wire axis from the ray segment), not from the edge depths,
        so that it can check them.
        """
        q = self.project(pixel_um)
        p = self.project(self.beam.point_um(depth_um))
        w = self.project(self.wire.centres_um[step])
        seg = q - p
        t = np.clip(np.sum((w - p) * seg, axis=-1) / np.sum(seg * seg, axis=-1), 0.0, 1.0)
        nearest = p + t[..., None] * seg
        return np.hypot(*np.moveaxis(nearest - w, -1, 0)) < self.wire.radius_um

    def to_attrs(self) -> dict[str, object]:
        """Flat values for HDF5 attributes and summaries."""
        d = self.detector
        return {
            "beam_origin_um": self.beam.origin_um.tolist(),
            "beam_direction": self.beam.direction.tolist(),
            "wire_axis": self.wire.axis.tolist(),
            "wire_diameter_um": float(self.wire.diameter_um),
            "detector_position_um": d.position_um.tolist(),
            "detector_rotation_rad": d.rotation_rad.tolist(),
            "pixel_size_x_um": float(d.pixel_size_x_um),
            "pixel_size_y_um": float(d.pixel_size_y_um),
        }


def make_geometry(
    *,
    beam_origin_um,
    beam_direction,
    wire_axis,
    wire_diameter_um: float,
    wire_centres_um,
    detector_position_um,
    detector_rotation_rad,
    pixel_size_x_um: float,
    pixel_size_y_um: float,
    height_px: int,
    width_px: int,
) -> ScanGeometry:
    """A ScanGeometry from plain values; ValueError names the first value that is unusable."""
    if not (np.isfinite(wire_diameter_um) and wire_diameter_um > 0):
        raise ValueError(f"wire_diameter_um must be > 0, got {wire_diameter_um}")
    for name, size in (("pixel_size_x_um", pixel_size_x_um), ("pixel_size_y_um", pixel_size_y_um)):
        if not (np.isfinite(size) and size > 0):
            raise ValueError(f"{name} must be > 0, got {size}")
    centres = np.asarray(wire_centres_um, dtype=np.float64)
    if centres.ndim != 2 or centres.shape[1] != 3 or not np.all(np.isfinite(centres)):
        raise ValueError(f"wire centres must be a finite (steps, 3) array, got shape {centres.shape}")
    vectors = {"beam_origin_um": beam_origin_um, "detector_position_um": detector_position_um,
               "detector_rotation_rad": detector_rotation_rad}
    checked = {}
    for name, value in vectors.items():
        v = np.asarray(value, dtype=np.float64).reshape(-1)
        if v.shape != (3,) or not np.all(np.isfinite(v)):
            raise ValueError(f"{name} must be a finite 3-vector, got {np.asarray(value).tolist()}")
        checked[name] = v
    axis = unit(wire_axis, "wire_axis")
    direction = unit(beam_direction, "beam_direction")
    if abs(float(axis @ direction)) > 1 - 1e-9:
        raise ValueError("the wire axis is parallel to the beam: the wire can never cross the diffracted rays")
    return ScanGeometry(
        beam=Beam(origin_um=checked["beam_origin_um"], direction=direction),
        detector=Detector(
            position_um=checked["detector_position_um"], rotation_rad=checked["detector_rotation_rad"],
            pixel_size_x_um=float(pixel_size_x_um), pixel_size_y_um=float(pixel_size_y_um),
            height_px=int(height_px), width_px=int(width_px),
        ),
        wire=Wire(axis=axis, diameter_um=float(wire_diameter_um), centres_um=centres),
    )
