"""Synthetic serial-section EM with known ground truth: neurites, a blood vessel, tissue edge, tiles, drift.

A *world* volume (z, y, x) is built first: branching tube-shaped neurites
(labels 1..N) grown as random walks mostly along z, which touch where their
tubes meet; a thick blood vessel (a non-target object with a dark wall and a
bright lumen); and an out-of-tissue region beyond a wavy edge. Each section
of the world is rendered as an EM-like 8-bit image: bright cytoplasm with
dark mitochondria, dark 2-px membranes, grainy neuropil around the neurites.

Imaging is then simulated: section ``z`` is seen through a displacement
``d_z(q)`` (a random-walk translation plus a smooth sinusoidal deformation,
zero for section 0), and cut into an R x C grid of overlapping tiles whose
top-left corners sit at the nominal positions plus a random sub-pixel
offset (tile 00_00 exactly at the origin). Each tile gets its own noise.
By default tiles are 96 px, overlap by 64 px and are off their nominal
place by up to +-15 px in y and x (the issue's worst case; a pair of tiles
then differs by up to 30 px, which a 64-px overlap still holds).

On disk (what ``rtlib em run`` reads)::

    DIR/layout.json                       tile size, overlap, grid, pixel size and section thickness in nm
    DIR/sections/0000/tile_00_00.png      8-bit grayscale tiles
    DIR/ground_truth/truth.json           tile positions, drift parameters, cable lengths (not read by the workload)
    DIR/ground_truth/labels.npy           (z, y, x) uint32 neurons in the output frame, 0 = none
    DIR/ground_truth/mask.npy             (z, y, x) bool, true = vessel or out of tissue

The output frame is section 0's imaged frame: the top-left pixel of its tile
00_00 is the origin; its size is the nominal mosaic extent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = ["EmVolume", "make_world", "render_world", "section_displacement", "inverse_displacement",
           "write_em_dataset", "read_ground_truth", "cut_tiles"]

MARGIN_PX = 40  # world border around the output frame, so drifted and offset tiles still see tissue
TILT = 0.06

# gray levels of the rendering
_CYTOPLASM, _MEMBRANE, _MITO, _NEUROPIL = 180.0, 45.0, 85.0, 115.0
_LUMEN, _WALL, _OUTSIDE = 228.0, 60.0, 236.0


@dataclass
class EmVolume:
    """A world volume and its truth; arrays are (z, y, x) over the world, the output frame at MARGIN_PX."""

    labels: np.ndarray  # uint32 neurons
    vessel_wall: np.ndarray  # bool
    vessel_lumen: np.ndarray  # bool
    outside: np.ndarray  # bool: out of tissue
    mito: np.ndarray  # bool: mitochondria (inside neurons, part of them)
    cable_nm: dict[int, float]  # centreline length of each neuron inside the output frame and in tissue (branches from where they leave their parent's tube)
    pixel_size_nm: float
    section_thickness_nm: float
    frame_shape: tuple[int, int, int]  # (z, y, x) of the output frame

    def frame(self, array: np.ndarray) -> np.ndarray:
        _, h, w = self.frame_shape
        return array[:, MARGIN_PX:MARGIN_PX + h, MARGIN_PX:MARGIN_PX + w]

    @property
    def truth_mask(self) -> np.ndarray:
        return self.frame(self.vessel_wall | self.vessel_lumen | self.outside)


def _grow_tree(rng, start, direction, radius_nm, bounds_nm, step_nm, branch_prob):
    """Centreline points (n, 3) in nm, per-point radius and arm number (0 = the trunk, in order of growth)
    of one branching neurite."""
    points, radii, arms = [], [], []
    stack = [(np.asarray(start, float), np.asarray(direction, float), radius_nm, 0)]
    arm = -1
    while stack:
        pos, d, r, depth = stack.pop()
        arm += 1
        for _ in range(4000):
            points.append(pos.copy())
            radii.append(r)
            arms.append(arm)
            d = d + rng.normal(0, 0.012, 3) * np.array([0.3, 1, 1])
            d[0] = max(d[0], 0.55)  # keep growing along z so every section sees the neurite
            d /= np.linalg.norm(d)
            pos = pos + step_nm * d
            if np.any(pos < -bounds_nm * 0.1) or np.any(pos > bounds_nm * 1.1):
                break
            if depth < 2 and rng.random() < branch_prob:
                side = rng.normal(0, 1, 3)
                side[0] = 0
                side /= np.linalg.norm(side)
                # a symmetric bifurcation: the tissue as a whole keeps no preferred tilt
                stack.append((pos.copy(), d + 0.3 * side, r * 0.75, depth + 1))
                d = d - 0.3 * side
                depth += 1
    return np.array(points), np.array(radii), np.array(arms)


def _cable_nm(points: np.ndarray, radii: np.ndarray, arms: np.ndarray, inside: np.ndarray, step_nm: float) -> float:
    """Centreline length of one neurite counted inside the frame (``inside``), as its labelled shape shows it.

    Where a branch leaves its parent, the two tubes overlap for a while and the labels show one thick
    process there: the branch's centreline inside the parent's tube is no cable of the labelled neuron
    (no skeleton can see it). A branch is counted from where it leaves the parent's tube, plus its
    shortest join from there to the parent's centreline."""
    from scipy.spatial import cKDTree

    visible = inside.copy()
    joins = 0.0
    for arm in np.unique(arms)[1:]:
        earlier, own = np.flatnonzero(arms < arm), np.flatnonzero(arms == arm)
        dist, nearest = cKDTree(points[earlier]).query(points[own])
        out = dist > radii[earlier][nearest]
        visible[own] &= out
        if out.any():
            first = int(np.argmax(out))
            if inside[own[first]] and inside[earlier[nearest[first]]]:
                joins += float(dist[first])
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    # a centreline step counts when both its ends are visible; branch starts are not joined to their parent
    return float(np.sum(seg[visible[:-1] & visible[1:] & (seg < 2 * step_nm)])) + joins


def make_world(shape=(32, 128, 128), *, num_neurites=16, pixel_size_nm=16.0, section_thickness_nm=40.0,
               vessel=True, outside=True, seed=0) -> EmVolume:
    """Labelled neurites, a vessel and an out-of-tissue region in a world of ``shape`` plus margins."""
    rng = np.random.default_rng(seed)
    z, h, w = shape
    world = (z, h + 2 * MARGIN_PX, w + 2 * MARGIN_PX)
    spacing = np.array([section_thickness_nm, pixel_size_nm, pixel_size_nm])
    bounds = np.array(world) * spacing
    step = 0.5 * pixel_size_nm

    centre_idx = np.zeros(world, dtype=np.int32)  # 1-based index into `owners` of the centreline voxel
    owners, owner_radius = [0], [0.0]
    cable: dict[int, float] = {}
    # the frame's extent in nm: voxel k holds the points within half a voxel of k * spacing (painted by rint)
    frame_lo = (np.array([0, MARGIN_PX, MARGIN_PX]) - 0.5) * spacing
    frame_hi = (np.array([z, MARGIN_PX + h, MARGIN_PX + w]) - 0.5) * spacing

    def paint(points, radii, owner):
        vox = np.rint(points / spacing).astype(int)
        ok = np.all((vox >= 0) & (vox < np.array(world)), axis=1)
        for (a, b, c), r in zip(vox[ok], radii[ok]):
            owners.append(owner)
            owner_radius.append(r)
            centre_idx[a, b, c] = len(owners) - 1

    vy, vx = rng.uniform(0.3, 0.7, 2) * np.array([h, w]) + MARGIN_PX
    vessel_r = 0.14 * min(h, w)
    edge_phase = rng.uniform(0, 6)

    def edge_x(y):  # the tissue edge: out of tissue beyond it
        return MARGIN_PX + w * 0.84 + 0.05 * w * np.sin(y / world[1] * 2 * np.pi + edge_phase)

    if vessel:
        pts = np.stack([np.arange(-1, world[0] + 1, 0.25) * section_thickness_nm, np.full(4 * world[0] + 8, vy * pixel_size_nm),
                        np.full(4 * world[0] + 8, vx * pixel_size_nm)], axis=1)
        paint(pts, np.full(len(pts), vessel_r * pixel_size_nm), -1)
    for label in range(1, num_neurites + 1):
        for _ in range(100):  # start in tissue, away from the vessel
            y0, x0 = rng.uniform(0.05, 0.95, 2) * np.array([h, w]) + MARGIN_PX
            if np.hypot(y0 - vy, x0 - vx) > vessel_r + 8 and (not outside or x0 < edge_x(y0) - 4):
                break
        start = np.array([-0.05 * bounds[0], y0 * pixel_size_nm, x0 * pixel_size_nm])
        # tilts come in opposite pairs: on average the neurites run straight through the sections,
        # so that section-to-section alignment has a true answer to find
        tilt = rng.normal(0, TILT, 2) if label % 2 else -tilt
        direction = np.array([1.0, *tilt])
        points, radii, arms = _grow_tree(rng, start, direction / np.linalg.norm(direction), rng.uniform(6, 10) * pixel_size_nm,
                                         bounds, step, branch_prob=0.004)
        paint(points, radii, label)
        inside = np.all((points >= frame_lo) & (points < frame_hi), axis=1)
        if outside:  # and in tissue: beyond the tissue edge the neuron has no voxels
            vy_px, vx_px = np.rint(points[:, 1] / pixel_size_nm), np.rint(points[:, 2] / pixel_size_nm)
            inside &= vx_px <= edge_x(vy_px)
        cable[label] = _cable_nm(points, radii, arms, inside, step)

    dist, (iz, iy, ix) = ndi.distance_transform_edt(centre_idx == 0, sampling=spacing, return_indices=True)
    nearest = centre_idx[iz, iy, ix]
    owner = np.asarray(owners)[nearest]
    radius = np.asarray(owner_radius)[nearest]
    within = dist <= radius
    labels = np.where(within & (owner > 0), owner, 0).astype(np.uint32)
    in_vessel = within & (owner == -1)
    lumen = in_vessel & (dist <= radius - 5 * pixel_size_nm)
    wall = in_vessel & ~lumen

    out = np.zeros(world, dtype=bool)
    if outside:
        yy = np.arange(world[1])[:, None]
        xx = np.arange(world[2])[None, :]
        edge = edge_x(yy)
        out[:] = (xx > edge)[None]
        labels[out] = 0
        wall &= ~out
        lumen &= ~out
    for label in list(cable):  # a neuron that lies wholly beyond the tissue edge is not one
        if not np.any(labels == label):
            cable.pop(label)

    mito = np.zeros(world, dtype=bool)
    centres = np.argwhere(labels > 0)
    for c in centres[rng.choice(len(centres), size=min(len(centres), 6 * num_neurites), replace=False)]:
        rz, ry, rx = 2.5, 3.0 + 2 * rng.random(), 1.5 + rng.random()
        sl = tuple(slice(max(0, int(c[i] - r) - 1), min(world[i], int(c[i] + r) + 2)) for i, r in enumerate((rz, ry, rx)))
        gz, gy, gx = np.ogrid[sl]
        blob = ((gz - c[0]) / rz) ** 2 + ((gy - c[1]) / ry) ** 2 + ((gx - c[2]) / rx) ** 2 <= 1
        mito[sl] |= blob & (labels[sl] == labels[tuple(c)])
    # mitochondria stay off the membrane, so the neuron outline is always drawn
    mito &= ndi.binary_erosion(labels > 0, structure=np.ones((1, 7, 7)))
    return EmVolume(labels, wall, lumen, out, mito, cable, float(pixel_size_nm), float(section_thickness_nm), (z, h, w))


def membranes(labels: np.ndarray) -> np.ndarray:
    """2-px in-plane boundaries of each labelled object (anisotropic EM shows membranes section by section)."""
    edge = np.zeros(labels.shape, dtype=bool)
    for axis in (1, 2):
        for shift in (1, -1):
            edge |= (labels != np.roll(labels, shift, axis=axis)) & (labels > 0)
    return edge | ((ndi.grey_erosion(labels, size=(1, 3, 3)) != labels) & (labels > 0))


def _unit(a: np.ndarray) -> np.ndarray:
    return (a - a.mean()) / a.std()


def render_world(vol: EmVolume, *, seed=0) -> np.ndarray:
    """EM-like float image of the world (before imaging noise), same shape as ``vol.labels``."""
    rng = np.random.default_rng(seed + 1)
    # Textures continue across a few sections, as the thin processes of real neuropil do, and
    # have no preferred direction: they are what lets sections be aligned without bias.
    grain = _unit(ndi.gaussian_filter(rng.normal(0, 1, vol.labels.shape), (1.5, 1.2, 1.2)))
    fine = _unit(ndi.gaussian_filter(rng.normal(0, 1, vol.labels.shape), (1.0, 0.7, 0.7)))
    img = _NEUROPIL + 22 * grain
    inside = vol.labels > 0
    img[inside] = _CYTOPLASM + 5 * fine[inside]
    img[vol.mito] = _MITO + 5 * fine[vol.mito]
    img[membranes(vol.labels)] = _MEMBRANE
    img[vol.vessel_wall] = _WALL + 5 * fine[vol.vessel_wall]
    img[vol.vessel_lumen] = _LUMEN
    img[vol.outside] = _OUTSIDE
    return ndi.gaussian_filter(img, (0, 0.6, 0.6))


# -- imaging: drift and tiles -------------------------------------------------------------


def drift_parameters(num_sections: int, *, drift_step_px=1.0, deformation_px=0.8, seed=0) -> dict[str, Any]:
    rng = np.random.default_rng(seed + 2)
    steps = rng.normal(0, drift_step_px, (num_sections, 2))
    steps[0] = 0
    waves = rng.uniform(-1, 1, (num_sections, 2, 2)) * deformation_px  # amplitude per axis and wave
    waves[0] = 0
    phases = rng.uniform(0, 2 * np.pi, (num_sections, 2, 2))
    return {"translation_px": np.cumsum(steps, axis=0).tolist(), "wave_amplitude_px": waves.tolist(),
            "wave_phase": phases.tolist(), "wavelength_px": 256.0}


def section_displacement(drift: dict[str, Any], z: int, shape: tuple[int, int]) -> np.ndarray:
    """d_z at every pixel q of the imaged section: it shows the world at q + d_z(q). Shape (2, h, w)."""
    h, w = shape
    return _displacement_at(drift, z, np.mgrid[0:h, 0:w].astype(np.float64))


def inverse_displacement(drift: dict[str, Any], z: int, shape: tuple[int, int], iterations=8) -> np.ndarray:
    """f_z with section_z(p + f_z(p)) = world(p): the field that aligns section z to section 0. Shape (2, h, w)."""
    grid = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    f = np.zeros_like(grid)
    for _ in range(iterations):  # fixed point of f = -d(p + f); d is smooth and small, so it contracts fast
        f = -_displacement_at(drift, z, grid + f)
    return f


def cut_tiles(world_section: np.ndarray, displacement_of, positions: np.ndarray, tile_px: int, rng,
              noise_gray=7.0) -> list[np.ndarray]:
    """8-bit tiles of one imaged section; ``positions`` (n, 2) top-left corners in the imaged frame."""
    tiles = []
    coeffs = ndi.spline_filter(world_section, order=3)
    for pos in positions:
        q = np.mgrid[0:tile_px, 0:tile_px].astype(np.float64) + np.asarray(pos)[:, None, None]
        d = displacement_of(q)
        coords = q + d + MARGIN_PX
        tile = ndi.map_coordinates(coeffs, coords, order=3, prefilter=False, mode="nearest")
        tile = tile + rng.normal(0, noise_gray, tile.shape)
        tiles.append(np.clip(np.rint(tile), 0, 255).astype(np.uint8))
    return tiles


def write_em_dataset(directory: Path, shape=(32, 128, 128), *, style: str = "sparse", tile_px=96, overlap_px=64,
                     max_offset_px=15.0, num_neurites=16, pixel_size_nm: float | None = None, section_thickness_nm=40.0,
                     drift_step_px=1.0, deformation_px=0.8, seed=0, vessel=True, outside=True) -> dict[str, Any]:
    """Write tiles, layout.json and ground_truth/ for a synthetic volume whose output frame is ``shape``.

    ``style="sparse"``: this module's neurites in texture (16 nm pixels by default); ``"neuropil"``: dense
    tissue from ``rtlib.synth.neuropil`` (8 nm by default; its vessel, soma and edge drawn per seed).
    ``rtlib synth em`` defaults to neuropil."""
    if style == "neuropil":
        from .neuropil import write_neuropil_dataset

        return write_neuropil_dataset(directory, shape, tile_px=tile_px, overlap_px=overlap_px, max_offset_px=max_offset_px,
                                      pixel_size_nm=pixel_size_nm or 8.0, section_thickness_nm=section_thickness_nm,
                                      drift_step_px=drift_step_px, deformation_px=deformation_px, seed=seed)
    if style != "sparse":
        raise ValueError(f"style {style!r}: choose 'neuropil' or 'sparse'")
    pixel_size_nm = pixel_size_nm or 16.0
    from PIL import Image

    z, h, w = shape
    pitch = tile_px - overlap_px
    rows, cols = (h - overlap_px) // pitch, (w - overlap_px) // pitch
    if rows * pitch + overlap_px != h or cols * pitch + overlap_px != w:
        raise ValueError(f"frame {h}x{w} is not a whole grid of {tile_px}-px tiles overlapping by {overlap_px} px")
    vol = make_world(shape, num_neurites=num_neurites, pixel_size_nm=pixel_size_nm,
                     section_thickness_nm=section_thickness_nm, vessel=vessel, outside=outside, seed=seed)
    image = render_world(vol, seed=seed)
    drift = drift_parameters(z, drift_step_px=drift_step_px, deformation_px=deformation_px, seed=seed)
    rng = np.random.default_rng(seed + 3)
    nominal = np.array([[r * pitch, c * pitch] for r in range(rows) for c in range(cols)], dtype=float)
    positions = nominal[None] + rng.uniform(-max_offset_px, max_offset_px, (z, rows * cols, 2))
    positions[:, 0] = 0.0  # tile 00_00 defines each section's frame

    directory = Path(directory)
    for s in range(z):
        def displacement_of(q, s=s):
            return _displacement_at(drift, s, q)
        tiles = cut_tiles(image[s], displacement_of, positions[s], tile_px, rng)
        folder = directory / "sections" / f"{s:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, tile in enumerate(tiles):
            Image.fromarray(tile).save(folder / f"tile_{i // cols:02d}_{i % cols:02d}.png")
    layout = {"tile_size_px": [tile_px, tile_px], "overlap_px": overlap_px, "rows": rows, "cols": cols,
              "pixel_size_nm": pixel_size_nm, "section_thickness_nm": section_thickness_nm}
    (directory / "layout.json").write_text(json.dumps(layout, indent=2))
    truth_dir = directory / "ground_truth"
    truth_dir.mkdir(exist_ok=True)
    truth = {"shape": list(shape), "tile_positions_px": positions.tolist(), "drift": drift, "style": "sparse",
             "cable_length_nm": {str(k): v for k, v in vol.cable_nm.items()}, "seed": seed, "layout": layout}
    (truth_dir / "truth.json").write_text(json.dumps(truth))
    np.save(truth_dir / "labels.npy", vol.frame(vol.labels))
    np.save(truth_dir / "mask.npy", vol.truth_mask)
    return truth


def _displacement_at(drift: dict[str, Any], z: int, q: np.ndarray) -> np.ndarray:
    """d_z at arbitrary points q (2, ...) of the imaged frame (the analytic form of section_displacement)."""
    t = np.asarray(drift["translation_px"][z])
    amp = np.asarray(drift["wave_amplitude_px"][z])
    ph = np.asarray(drift["wave_phase"][z])
    k = 2 * np.pi / drift["wavelength_px"]
    return np.stack([t[a] + amp[a, 0] * np.sin(k * q[0] + ph[a, 0]) + amp[a, 1] * np.sin(k * q[1] + ph[a, 1])
                     for a in range(2)])


def read_ground_truth(directory: Path) -> dict[str, Any]:
    truth_dir = Path(directory) / "ground_truth"
    truth = json.loads((truth_dir / "truth.json").read_text())
    truth["tile_positions_px"] = np.asarray(truth["tile_positions_px"])
    truth["labels"] = np.load(truth_dir / "labels.npy")
    truth["mask"] = np.load(truth_dir / "mask.npy")
    truth["cable_length_nm"] = {int(k): v for k, v in truth["cable_length_nm"].items()}
    return truth
