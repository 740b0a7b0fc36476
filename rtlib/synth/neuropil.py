"""Synthetic dense neuropil: space-filling neurites at 4-16 nm, rendered from a family of EM appearances.

Real connectomics data is dense: nearly every voxel of the tissue belongs to
some neurite, and each neurite touches its neighbours across a dark
membrane 1-4 px wide. The world volume (z, y, x) is built as

* *neurites*: tubes of log-normally distributed radius (thin axons and
  thicker dendrites, mean profile diameter ``mean_diameter_nm``) placed by
  dart throwing so that no tube swallows another, running through the
  sections with random tilts of zero mean (so section alignment has a true
  answer) and a few branching; every tissue pixel of a section belongs to
  the neurite whose tube is nearest (an additively weighted Voronoi
  partition in smoothly warped, per-neurite elliptic coordinates), so the
  profiles are curved polygons that fill the plane;
* *extracellular space*: small pockets at three-neurite junctions and thin
  gaps along some interfaces (label 0, not masked: it is part of neuropil);
* *mitochondria* (ellipsoids with cristae) and *vesicle clusters* inside
  neurites (part of their neuron);
* *non-target objects* in the truth mask: a blood vessel (lumen and wall),
  a cell body (soma with its nucleus) and the tissue's edge (resin beyond).

Rendering is drawn per volume from a family (``draw_rendering``):
cytoplasm grey anywhere in 110-230, membrane darkness and thickness, blur,
Poisson (photon) and Gaussian noise; per section a contrast and
brightness change; per tile a gain of 0.8-1.2, an offset of +-20 grey
levels and an illumination gradient. Imaging (drift, tiles, positions) is
the sparse generator's (``rtlib.synth.em``), so the output layout on disk
is the same and the rest of the chain reads it unchanged.

Ground truth ``cable_length_nm`` of a neuron is the length of the path
through its profiles' centroids, section to section (a profile joins the
profiles it overlaps in the next section), plus half a section at each
end on the volume's top and bottom faces: the centreline a skeleton of
the labelled shape should follow.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from .em import MARGIN_PX, EmVolume, _displacement_at, drift_parameters

__all__ = ["NeuropilVolume", "Rendering", "draw_rendering", "make_neuropil", "render_neuropil", "imaging_effects",
           "boundary_target", "centroid_cable_nm", "write_neuropil_dataset"]


@dataclass
class NeuropilVolume(EmVolume):
    soma: np.ndarray | None = None  # bool: a cell body (non-target), nucleus included
    nucleus: np.ndarray | None = None  # bool
    ecs: np.ndarray | None = None  # bool: extracellular space in tissue
    vesicles: np.ndarray | None = None  # float 0..1: vesicle membrane weight
    vesicle_lumen: np.ndarray | None = None  # bool
    mito_membrane: np.ndarray | None = None  # float 0..1
    cristae: np.ndarray | None = None  # float 0..1
    neuron_shade: dict[int, float] = field(default_factory=dict)  # per-neuron cytoplasm shade, -1..1

    @property
    def truth_mask(self) -> np.ndarray:
        return self.frame(self.vessel_wall | self.vessel_lumen | self.outside | self.soma)


@dataclass
class Rendering:
    """One member of the family of EM appearances (grey levels are 8-bit)."""

    cytoplasm_gray: float  # 110-230
    membrane_contrast: float  # membranes are this much darker than cytoplasm
    membrane_nm: float  # membrane (pair) thickness; 1-4 px at the pixel size
    mito_contrast: float
    ecs_delta: float  # extracellular space is this much brighter than cytoplasm
    lumen_delta: float  # vessel lumen and resin: this much brighter
    wall_contrast: float
    nucleus_contrast: float
    texture_gray: float  # amplitude of cytoplasm texture
    neuron_shade_gray: float  # spread of cytoplasm grey between neurons
    blur_nm: float
    photons_per_gray: float  # Poisson: counts per grey level (lower: noisier)
    gaussian_noise_gray: float
    section_contrast: float  # per-section contrast factor spread (1 +- this)
    section_brightness_gray: float  # per-section brightness spread
    tile_gain: tuple[float, float] = (0.8, 1.2)
    tile_offset_gray: float = 20.0
    tile_gradient_gray: float = 20.0

    def membrane_px(self, pixel_size_nm: float) -> float:
        return float(np.clip(self.membrane_nm / pixel_size_nm, 1.0, 4.0))


def draw_rendering(rng: np.random.Generator) -> Rendering:
    cytoplasm = rng.uniform(110, 230)
    return Rendering(
        cytoplasm_gray=cytoplasm,
        membrane_contrast=rng.uniform(45, min(120, cytoplasm - 20)),
        membrane_nm=rng.uniform(8, 20),
        mito_contrast=rng.uniform(25, 70),
        ecs_delta=rng.uniform(5, 30),
        lumen_delta=rng.uniform(30, 70),  # resin and lumens are the brightest things in the section
        wall_contrast=rng.uniform(20, 60),
        nucleus_contrast=rng.uniform(10, 40),
        texture_gray=rng.uniform(2, 9),
        neuron_shade_gray=rng.uniform(0, 14),
        blur_nm=rng.uniform(2, 9),
        photons_per_gray=float(np.exp(rng.uniform(np.log(1.0), np.log(8.0)))),
        gaussian_noise_gray=rng.uniform(1, 7),
        section_contrast=rng.uniform(0, 0.15),
        section_brightness_gray=rng.uniform(0, 8),
    )


def _smooth_noise(rng, shape, sigma) -> np.ndarray:
    n = ndi.gaussian_filter(rng.normal(0, 1, shape), sigma)
    return (n - n.mean()) / (n.std() + 1e-12)


def _non_target(rng, world, frame_hw, vessel, soma, outside):
    """(vessel lumen, vessel wall, soma, nucleus, outside) 2D masks per section (z, H, W)."""
    z, H, W = world
    h, w = frame_hw
    side = min(h, w)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    lumen = np.zeros(world, bool)
    wall = np.zeros(world, bool)
    soma_m = np.zeros(world, bool)
    nucleus = np.zeros(world, bool)
    out = np.zeros(world, bool)
    taken = []
    if vessel:
        r = rng.uniform(0.08, 0.13) * side
        c = rng.uniform(0.25, 0.75, 2) * np.array([h, w]) + MARGIN_PX
        drift = rng.normal(0, 0.1, 2)
        e = rng.uniform(0.85, 1.15)
        thick = max(2.0, rng.uniform(0.18, 0.3) * r)
        for s in range(z):
            cy, cx = c + drift * (s - z / 2)
            d = np.hypot((yy - cy) * e, (xx - cx) / e)
            wall[s] = d < r
            lumen[s] = d < r - thick
        wall &= ~lumen
        taken.append((c, r))
    if soma:
        r = rng.uniform(0.13, 0.2) * side
        for _ in range(50):
            c = rng.uniform(0.15, 0.85, 2) * np.array([h, w]) + MARGIN_PX
            if all(np.hypot(*(c - c2)) > r + r2 + 0.05 * side for c2, r2 in taken):
                break
        else:
            c = None
        if c is not None:
            harmonics = rng.normal(0, 0.06, (3, 2))
            rn = rng.uniform(0.6, 0.75)
            for s in range(z):
                rr = r * np.sqrt(max(0.2, 1 - ((s - z / 2) / (3 * z)) ** 2))
                ang = np.arctan2(yy - c[0], xx - c[1])
                wobble = 1 + sum(a * np.cos((k + 2) * ang) + b * np.sin((k + 2) * ang) for k, (a, b) in enumerate(harmonics))
                d = np.hypot(yy - c[0], xx - c[1]) / wobble
                soma_m[s] = d < rr
                nucleus[s] = d < rn * rr
    if outside:
        where = rng.integers(4)
        frac = rng.uniform(0.82, 0.92)
        phase, amp = rng.uniform(0, 6), rng.uniform(0.02, 0.05)
        along, across = (yy, xx) if where < 2 else (xx, yy)
        length = (W if where >= 2 else H)
        extent = (w if where < 2 else h)
        edge = MARGIN_PX + extent * frac + amp * extent * np.sin(along / length * 2 * np.pi + phase)
        beyond = across > edge if where % 2 == 0 else across < (2 * MARGIN_PX + extent) - edge
        out[:] = beyond[None]
    return lumen & ~out, wall & ~out, soma_m & ~out, nucleus & ~out, out


def _place_neurites(rng, plane_hw, mean_radius_px, fill=0.75, max_tries=20000):
    """Dart throwing: centres (n, 2) and radii (n,) of tubes that do not swallow each other."""
    H, W = plane_hw
    centres, radii = [], []
    target = fill * H * W
    area = 0.0
    tree_pts = np.zeros((0, 2))
    for t in range(max_tries):
        r = mean_radius_px * float(np.clip(rng.lognormal(0, 0.4), 0.35, 2.0))
        p = rng.uniform(0, 1, 2) * np.array([H, W])
        if len(centres):
            d = np.hypot(*(tree_pts - p).T)
            if np.any(d < 0.85 * (r + np.asarray(radii))):
                continue
        centres.append(p)
        radii.append(r)
        tree_pts = np.asarray(centres)
        area += np.pi * r * r
        if area >= target:
            break
    return np.asarray(centres), np.asarray(radii)


def make_neuropil(shape=(16, 192, 192), *, pixel_size_nm=8.0, section_thickness_nm=40.0, seed=0,
                  mean_diameter_nm: float | None = None, vessel: bool | None = None, soma: bool | None = None,
                  outside: bool | None = None) -> NeuropilVolume:
    """Dense labelled neuropil with non-target objects in a world of ``shape`` plus margins (see the module)."""
    rng = np.random.default_rng(seed)
    z, h, w = shape
    H, W = h + 2 * MARGIN_PX, w + 2 * MARGIN_PX
    world = (z, H, W)
    px = float(pixel_size_nm)
    vessel = bool(rng.random() < 0.7) if vessel is None else vessel
    soma = bool(rng.random() < 0.4) if soma is None else soma
    outside = bool(rng.random() < 0.5) if outside is None else outside
    diameter_nm = rng.uniform(230, 380) if mean_diameter_nm is None else mean_diameter_nm
    lumen, wall, soma_m, nucleus, out = _non_target(rng, world, (h, w), vessel, soma, outside)
    non_target = lumen | wall | soma_m | out

    # neurites: tubes through the sections, tilts of zero mean, some branching
    mean_r = 0.5 * diameter_nm / px
    centres, radii = _place_neurites(rng, (H, W), mean_r)
    n = len(centres)
    tilt_spread = rng.uniform(0.03, 0.2)
    tilts = rng.normal(0, tilt_spread, (n, 2))
    tilts -= tilts.mean(0)
    velocity = tilts * section_thickness_nm / px  # px per section
    wobble = np.cumsum(rng.normal(0, 0.04, (z, n, 2)) * radii[None, :, None], axis=0)
    wobble -= wobble.mean(0)
    zs = np.arange(z) - (z - 1) / 2
    tracks = centres[None] + velocity[None] * zs[:, None, None] + wobble  # (z, n, 2)
    aspect = rng.uniform(1.0, 1.5, n)
    angle = rng.uniform(0, np.pi, n)
    # points per section: (y, x, r, owner index, aspect, angle); branches add points
    owners = np.arange(n)
    branch_of = []
    for i in rng.choice(n, size=int(round(rng.uniform(0.05, 0.15) * n)), replace=False):
        zb = int(rng.integers(1, max(2, z - 2)))
        direction = rng.normal(0, 1, 2)
        direction /= np.linalg.norm(direction)
        speed = rng.uniform(0.25, 0.5) * radii[i]
        up = rng.random() < 0.5
        steps = np.where(np.arange(z) >= zb, np.arange(z) - zb, 0) if up else np.where(np.arange(z) <= zb, zb - np.arange(z), 0)
        branch_of.append((i, tracks[:, i] + direction * speed * steps[:, None], steps > 0, 0.7 * radii[i]))
        tracks[:, i] -= 0.3 * direction * speed * steps[:, None]
    warp_len = max(2.0, 0.35 * mean_r * 2)
    warp = np.stack([_smooth_noise(rng, (z, H, W), (1.5, warp_len, warp_len)) for _ in range(2)]) * 0.18 * mean_r
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    labels = np.zeros(world, np.uint32)
    for s in range(z):
        pts = [tracks[s]]
        rad = [radii]
        own = [owners]
        asp, ang = [aspect], [angle]
        for i, track, alive, rb in branch_of:
            if alive[s]:
                pts.append(track[s][None])
                rad.append(np.array([rb]))
                own.append(np.array([i]))
                asp.append(aspect[i:i + 1])
                ang.append(angle[i:i + 1])
        pts, rad, own = np.concatenate(pts), np.concatenate(rad), np.concatenate(own)
        asp, ang = np.concatenate(asp), np.concatenate(ang)
        q = np.stack([(yy + warp[0, s]).ravel(), (xx + warp[1, s]).ravel()], 1)
        k = min(8, len(pts))
        _, idx = cKDTree(pts).query(q, k=k)
        idx = idx.reshape(len(q), k)
        dy = q[:, 0:1] - pts[idx, 0]
        dx = q[:, 1:2] - pts[idx, 1]
        c, sn = np.cos(ang[idx]), np.sin(ang[idx])
        u, v = c * dy + sn * dx, -sn * dy + c * dx
        a = np.sqrt(asp[idx])
        dist = np.hypot(u * a, v / a) - rad[idx]
        best = idx[np.arange(len(q)), np.argmin(dist, axis=1)]
        labels[s] = (own[best] + 1).reshape(H, W).astype(np.uint32)
    labels[non_target] = 0

    # extracellular space: pockets at junctions of three neurites, thin gaps along some interfaces
    ecs = np.zeros(world, bool)
    pocket_px = max(1.0, rng.uniform(8, 25) / px)
    gap_share = rng.uniform(0.1, 0.35)
    gap_pairs = set()
    for s in range(z):
        lab = labels[s]
        hi = ndi.maximum_filter(lab, size=3)
        lo = ndi.minimum_filter(np.where(lab > 0, lab, np.iinfo(np.uint32).max), size=3)
        mid = ndi.median_filter(lab, size=3)
        triple = (hi != lo) & (mid != hi) & (mid != lo) & (lab > 0)
        if triple.any():
            ecs[s] |= ndi.distance_transform_edt(~triple) <= pocket_px
    neighbour = np.roll(labels, 1, axis=2)
    pairs = np.unique(np.stack([labels[(labels != neighbour) & (labels > 0) & (neighbour > 0)],
                                neighbour[(labels != neighbour) & (labels > 0) & (neighbour > 0)]], 1), axis=0)
    for a, b in pairs.tolist():
        key = (min(a, b), max(a, b))
        if rng.random() < gap_share:
            gap_pairs.add(key)
    if gap_pairs:
        # one pixel of the lower label's side of a gapped interface (two at fine pixels) becomes ECS
        width = 2 if px <= 6 else 1
        for s in range(z):
            lab = labels[s]
            for axis in (0, 1):
                for shift in (1, -1):
                    other = np.roll(lab, shift, axis=axis)
                    edge = (lab != other) & (lab > 0) & (other > lab)
                    if not edge.any():
                        continue
                    cand = np.argwhere(edge)
                    keys = np.stack([lab[edge], other[edge]], 1)
                    sel = np.array([tuple(k) in gap_pairs for k in keys.tolist()])
                    if sel.any():
                        m = np.zeros(lab.shape, bool)
                        m[tuple(cand[sel].T)] = True
                        if width > 1:
                            m = ndi.binary_dilation(m, iterations=width - 1) & (lab > 0)
                        ecs[s] |= m
    ecs &= ~non_target
    labels[ecs] = 0
    # a neurite cut into pieces within a section by the partition keeps them: real profiles can be too

    mito, mito_membrane, cristae = _mitochondria(rng, labels, px, section_thickness_nm)
    vesicles, vesicle_lumen = _vesicles(rng, labels, px)
    # per-neuron shade and the cable along the profiles' centroids, in the output frame
    ids = np.unique(labels[labels > 0])
    shade = {int(i): float(rng.uniform(-1, 1)) for i in ids}
    frame_labels = labels[:, MARGIN_PX:MARGIN_PX + h, MARGIN_PX:MARGIN_PX + w]
    cable = centroid_cable_nm(frame_labels, (section_thickness_nm, px, px))
    return NeuropilVolume(labels=labels, vessel_wall=wall, vessel_lumen=lumen, outside=out, mito=mito, cable_nm=cable,
                          pixel_size_nm=px, section_thickness_nm=float(section_thickness_nm), frame_shape=(z, h, w),
                          soma=soma_m, nucleus=nucleus, ecs=ecs, vesicles=vesicles, vesicle_lumen=vesicle_lumen,
                          mito_membrane=mito_membrane, cristae=cristae, neuron_shade=shade)


def _mitochondria(rng, labels, px, thickness_nm):
    """Ellipsoids inside neurites (away from their membranes), with a dark outline and cristae."""
    world = labels.shape
    interior = np.stack([ndi.binary_erosion(labels[s] > 0, iterations=max(2, int(round(25 / px))))
                         & (ndi.grey_erosion(labels[s], size=3) == ndi.grey_dilation(labels[s], size=3)) for s in range(world[0])])
    interior_idx = np.argwhere(interior)
    mito = np.zeros(world, bool)
    if len(interior_idx) == 0:
        return mito, np.zeros(world, np.float32), np.zeros(world, np.float32)
    count = int(rng.uniform(0.3, 0.8) * len(np.unique(labels[labels > 0])))
    for c in interior_idx[rng.choice(len(interior_idx), size=min(count, len(interior_idx)), replace=False)]:
        ry = rng.uniform(30, 80) / px
        rx = ry * rng.uniform(0.5, 1.0)
        rz = rng.uniform(120, 400) / thickness_nm
        th = rng.uniform(0, np.pi)
        sl = tuple(slice(max(0, int(c[i] - r) - 1), min(world[i], int(c[i] + r) + 2)) for i, r in enumerate((rz, ry, ry)))
        gz, gy, gx = np.ogrid[sl]
        dy, dx = gy - c[1], gx - c[2]
        u, v = np.cos(th) * dy + np.sin(th) * dx, -np.sin(th) * dy + np.cos(th) * dx
        blob = ((gz - c[0]) / rz) ** 2 + (u / ry) ** 2 + (v / rx) ** 2 <= 1
        mito[sl] |= blob & interior[sl] & (labels[sl] == labels[tuple(c)])
    outline = np.zeros(world, np.float32)
    for s in range(world[0]):
        if mito[s].any():
            outline[s] = (ndi.distance_transform_edt(mito[s]) <= max(1.0, 6 / px)) & mito[s]
    period = rng.uniform(18, 35) / px
    phi = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:world[1], 0:world[2]]
    stripes = 0.5 + 0.5 * np.cos(2 * np.pi * (np.cos(phi) * yy + np.sin(phi) * xx) / max(period, 2.0))
    cristae = (mito * stripes[None]).astype(np.float32)
    return mito, outline, cristae


def _vesicles(rng, labels, px):
    """Vesicle clusters in some neurites (boutons): (membrane weight 0..1, lumen) per pixel."""
    world = labels.shape
    weight = np.zeros(world, np.float32)
    lumen = np.zeros(world, bool)
    ids = np.unique(labels[labels > 0])
    if not len(ids):
        return weight, lumen
    boutons = rng.choice(ids, size=max(1, int(rng.uniform(0.1, 0.3) * len(ids))), replace=False)
    radius_px = rng.uniform(17, 24) / px
    in_bouton = np.isin(labels, boutons)
    for s in range(world[0]):
        region = ndi.binary_erosion(in_bouton[s], iterations=max(2, int(round(20 / px))))
        cand = np.argwhere(region)
        if not len(cand):
            continue
        count = int(0.25 * len(cand) / (np.pi * max(radius_px, 0.7) ** 2))
        centres = np.zeros(world[1:], bool)
        centres[tuple(cand[rng.choice(len(cand), size=min(count, len(cand)), replace=False)].T)] = True
        d = ndi.distance_transform_edt(~centres)
        weight[s] = np.clip(1 - np.abs(d - radius_px) / 0.8, 0, 1) * region
        lumen[s] = (d < radius_px - 0.5) & region
    return weight, lumen


def _membrane_weight(labels2d: np.ndarray, thickness_px: float) -> np.ndarray:
    """Darkness 0..1 of the membranes between labels (and around neurons), whose total width is ``thickness_px``.

    The membrane is centred on the pixels of one side of each interface (the one before it in y or x), so a
    1-px membrane is one fully dark pixel, a 2-px one that pixel and half of each neighbour, and so on."""
    boundary = np.zeros(labels2d.shape, bool)
    for axis in (0, 1):
        other = np.roll(labels2d, -1, axis=axis)
        boundary |= (labels2d != other) & ((labels2d > 0) | (other > 0))
    e = ndi.distance_transform_edt(~boundary)
    return np.clip((thickness_px + 1) / 2 - e, 0, 1)


def render_neuropil(vol: NeuropilVolume, rendering: Rendering, *, seed=0) -> np.ndarray:
    """EM-like float image (z, H, W) of the world before imaging (no noise; per-section contrast applied)."""
    rng = np.random.default_rng(seed + 11)
    r = rendering
    px = vol.pixel_size_nm
    C = r.cytoplasm_gray
    shape = vol.labels.shape
    grain_px = max(0.6, 8 / px)
    texture = _smooth_noise(rng, shape, (0.7, grain_px, grain_px))
    coarse = _smooth_noise(rng, shape, (1.0, 3 * grain_px, 3 * grain_px))
    img = C + r.texture_gray * texture
    shade = np.zeros(int(vol.labels.max()) + 1)
    for k, v in vol.neuron_shade.items():
        shade[k] = v
    img += r.neuron_shade_gray * shade[vol.labels]
    img[vol.ecs] = C + r.ecs_delta + 0.5 * r.texture_gray * texture[vol.ecs]
    # vesicles: light lumens with dark rims
    img += 8 * vol.vesicle_lumen
    img -= 0.6 * r.membrane_contrast * vol.vesicles
    # mitochondria: darker, with lighter cristae and a dark outline
    m = vol.mito
    img[m] = C - r.mito_contrast + 0.35 * r.mito_contrast * vol.cristae[m] + 0.4 * r.texture_gray * texture[m]
    img -= 0.5 * r.membrane_contrast * vol.mito_membrane
    # soma: cytoplasm with coarser texture, a darker mottled nucleus with its envelope
    soma_cyto = vol.soma & ~vol.nucleus
    img[soma_cyto] = C + 0.6 * r.neuron_shade_gray + 1.5 * r.texture_gray * coarse[soma_cyto]
    nuc = vol.nucleus
    img[nuc] = C - r.nucleus_contrast + 12 * coarse[nuc] + 0.8 * r.texture_gray * texture[nuc]
    img[vol.vessel_wall] = C - r.wall_contrast + 1.5 * r.texture_gray * coarse[vol.vessel_wall]
    img[vol.vessel_lumen] = C + r.lumen_delta
    img[vol.outside] = C + r.lumen_delta + 5
    # membranes last: plasma membranes between all objects, the nuclear envelope, the vessel's basal lamina
    t = r.membrane_px(px)
    dark = C - r.membrane_contrast
    objects = vol.labels.astype(np.int64)
    objects[vol.soma] = -1
    objects[vol.nucleus] = -2
    objects[vol.vessel_wall | vol.vessel_lumen] = -3
    objects[vol.outside] = 0
    for s in range(shape[0]):
        lab = objects[s] + 3  # >= 0, non-zero for every object but ECS and resin... ECS (0 + 3) too: membranes around it
        lab[vol.outside[s]] = 0
        wgt = _membrane_weight(lab, t)
        wgt[vol.vessel_lumen[s]] = 0
        img[s] = img[s] * (1 - wgt) + dark * wgt
    blur = float(np.clip(r.blur_nm / px, 0.25, 2.0))
    img = ndi.gaussian_filter(img, (0, blur, blur))
    # section-to-section contrast and brightness
    k = 1 + rng.uniform(-r.section_contrast, r.section_contrast, shape[0])
    b = rng.normal(0, r.section_brightness_gray + 1e-9, shape[0])
    return C + (img - C) * k[:, None, None] + b[:, None, None]


def imaging_effects(image: np.ndarray, rendering: Rendering, rng: np.random.Generator) -> np.ndarray:
    """One tile's detector: gain, offset, an illumination gradient, Poisson and Gaussian noise (float, not clipped)."""
    r = rendering
    h, w = image.shape[-2:]
    gain = rng.uniform(*r.tile_gain)
    offset = rng.uniform(-r.tile_offset_gray, r.tile_offset_gray)
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = (np.cos(theta) * (yy / max(h - 1, 1) - 0.5) + np.sin(theta) * (xx / max(w - 1, 1) - 0.5))
    out = image * gain + offset + rng.uniform(0, r.tile_gradient_gray) * ramp
    counts = rng.poisson(np.clip(out, 0, None) * r.photons_per_gray)
    return counts / r.photons_per_gray + rng.normal(0, r.gaussian_noise_gray, out.shape)


def boundary_target(labels: np.ndarray) -> np.ndarray:
    """The network's boundary target (bool, z y x): pixels whose 3x3 in-plane neighbourhood holds two labels
    (0 included), i.e. a 2-px band on every interface; deep inside non-neuron regions, none."""
    hi = ndi.maximum_filter(labels, size=(1, 3, 3))
    lo = ndi.minimum_filter(labels, size=(1, 3, 3))
    return hi != lo


def centroid_cable_nm(labels: np.ndarray, spacing_nm: tuple[float, float, float]) -> dict[int, float]:
    """{label: cable in nm} as the path through each label's profile centroids (see the module docstring)."""
    dz, dy, dx = spacing_nm
    z = labels.shape[0]
    profiles = []  # per section: (component image, {comp: (label, centroid_nm)})
    for s in range(z):
        comp, n = ndi.label(labels[s] > 0, structure=np.ones((3, 3)))
        # a component may hold several labels (touching neurons): split by label
        key = comp.astype(np.int64) * (int(labels.max()) + 1) + labels[s]
        key[comp == 0] = 0
        ids, inverse = np.unique(key, return_inverse=True)
        inverse = inverse.reshape(key.shape)
        cy = ndi.mean(np.broadcast_to(np.arange(labels.shape[1])[:, None], key.shape), inverse, np.arange(len(ids)))
        cx = ndi.mean(np.broadcast_to(np.arange(labels.shape[2])[None, :], key.shape), inverse, np.arange(len(ids)))
        table = {}
        for j, k in enumerate(ids.tolist()):
            if k:
                table[j] = (int(k % (int(labels.max()) + 1)), np.array([s * dz, cy[j] * dy, cx[j] * dx]))
        profiles.append((inverse, table))
    cable: dict[int, float] = {int(k): 0.0 for k in np.unique(labels[labels > 0])}
    for s in range(z - 1):
        (ia, ta), (ib, tb) = profiles[s], profiles[s + 1]
        both = np.stack([ia.ravel(), ib.ravel()], 1)
        pairs = np.unique(both, axis=0)
        for a, b in pairs.tolist():
            if a in ta and b in tb and ta[a][0] == tb[b][0]:
                cable[ta[a][0]] += float(np.linalg.norm(ta[a][1] - tb[b][1]))
    for s in (0, z - 1):  # ends on the top and bottom faces: the skeleton reaches the face, half a section out
        for label, _ in profiles[s][1].values():
            cable[label] += 0.5 * dz
    return cable


def write_neuropil_dataset(directory: Path, shape=(16, 192, 192), *, tile_px=96, overlap_px=64, max_offset_px=15.0,
                           pixel_size_nm=8.0, section_thickness_nm=40.0, drift_step_px=1.0, deformation_px=0.8, seed=0,
                           mean_diameter_nm: float | None = None, vessel: bool | None = None, soma: bool | None = None,
                           outside: bool | None = None, rendering: Rendering | None = None) -> dict[str, Any]:
    """Write tiles, layout.json and ground_truth/ for a neuropil volume (the sparse generator's layout)."""
    from PIL import Image

    z, h, w = shape
    pitch = tile_px - overlap_px
    rows, cols = (h - overlap_px) // pitch, (w - overlap_px) // pitch
    if rows < 1 or cols < 1 or rows * pitch + overlap_px != h or cols * pitch + overlap_px != w:
        raise ValueError(f"frame {h}x{w} is not a whole grid of {tile_px}-px tiles overlapping by {overlap_px} px")
    vol = make_neuropil(shape, pixel_size_nm=pixel_size_nm, section_thickness_nm=section_thickness_nm, seed=seed,
                        mean_diameter_nm=mean_diameter_nm, vessel=vessel, soma=soma, outside=outside)
    rng = np.random.default_rng(seed + 3)
    rendering = rendering or draw_rendering(np.random.default_rng(seed + 5))
    image = render_neuropil(vol, rendering, seed=seed)
    drift = drift_parameters(z, drift_step_px=drift_step_px, deformation_px=deformation_px, seed=seed)
    nominal = np.array([[r * pitch, c * pitch] for r in range(rows) for c in range(cols)], dtype=float)
    positions = nominal[None] + rng.uniform(-max_offset_px, max_offset_px, (z, rows * cols, 2))
    positions[:, 0] = 0.0
    directory = Path(directory)
    for s in range(z):
        coeffs = ndi.spline_filter(image[s], order=3)
        folder = directory / "sections" / f"{s:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, pos in enumerate(positions[s]):
            q = np.mgrid[0:tile_px, 0:tile_px].astype(np.float64) + pos[:, None, None]
            coords = q + _displacement_at(drift, s, q) + MARGIN_PX
            tile = ndi.map_coordinates(coeffs, coords, order=3, prefilter=False, mode="nearest")
            tile = imaging_effects(tile, rendering, rng)
            Image.fromarray(np.clip(np.rint(tile), 0, 255).astype(np.uint8)).save(folder / f"tile_{i // cols:02d}_{i % cols:02d}.png")
    layout = {"tile_size_px": [tile_px, tile_px], "overlap_px": overlap_px, "rows": rows, "cols": cols,
              "pixel_size_nm": pixel_size_nm, "section_thickness_nm": section_thickness_nm}
    (directory / "layout.json").write_text(json.dumps(layout, indent=2))
    truth_dir = directory / "ground_truth"
    truth_dir.mkdir(exist_ok=True)
    truth = {"shape": list(shape), "tile_positions_px": positions.tolist(), "drift": drift, "style": "neuropil",
             "cable_length_nm": {str(k): v for k, v in vol.cable_nm.items()}, "seed": seed, "layout": layout,
             "rendering": asdict(rendering)}
    (truth_dir / "truth.json").write_text(json.dumps(truth))
    np.save(truth_dir / "labels.npy", vol.frame(vol.labels))
    np.save(truth_dir / "mask.npy", vol.truth_mask)
    return truth
