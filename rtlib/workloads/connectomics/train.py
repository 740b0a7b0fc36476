"""Training the U-Net on synthetic EM volumes of the whole family (behind ``rtlib train em``).

The network must work on EM it has never seen, so it is trained on many
volumes, each a fresh world with its own rendering drawn from the family:
mostly dense neuropil (``rtlib.synth.neuropil``: cytoplasm grey 110-230,
membranes 1-4 px, blur, Poisson and Gaussian noise, vessel, soma, tissue
edge, pixel sizes over the working range) and some sparse neurites
(``rtlib.synth.em``). Each volume passes the detector model
(``imaging_effects``: gain, offset, illumination gradient, noise) and the
pipeline's own per-section normalisation (``normalize.normalize_section``),
so the network sees what the workload gives it. Patches are then
augmented heavily, on the fly: contrast, brightness and gamma, extra
noise and blur, an elastic warp, flips and rotations, and missing or
washed-out sections. Targets: a 2-px band on every interface between two
labels (``boundary``), the neurons' voxels (``foreground``; not
vessel, soma, resin or extracellular space) and the non-target objects
(``nontarget``: vessel, soma, resin; what the mask is made from).

Validation is on held-out seeds (a disjoint seed range, so other worlds
and other renderings): the loss and the boundary/foreground F1 scores are
returned with the weights' summary. A few minutes on two CPU cores give
the shipped weights; for real data, train on annotated volumes with the
same function.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from ...synth.em import make_world, render_world
from ...synth.neuropil import boundary_target, draw_rendering, imaging_effects, make_neuropil, render_neuropil
from .normalize import normalize_section
from .unet import CHANNELS, DEFAULT_WEIGHTS, build_unet, normalize

VALIDATION_SEED_OFFSET = 100_000  # validation volumes use seeds from here: never trained on


def training_volume(seed: int, shape=(16, 128, 128), style: str | None = None,
                    pixel_size_nm: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(normalised image uint8, targets (3, z, y, x) float32: boundary, foreground, non-target) of one synthetic
    volume at the working scale.

    ``style`` None draws neuropil (3 in 4) or sparse; ``pixel_size_nm`` None draws 6-16 nm for neuropil."""
    rng = np.random.default_rng(seed + 1000)
    style = style or ("neuropil" if rng.random() < 0.75 else "sparse")
    if style == "neuropil":
        px = pixel_size_nm or float(np.exp(rng.uniform(np.log(6.0), np.log(16.0))))
        vol = make_neuropil(shape, pixel_size_nm=px, seed=seed)
        rendering = draw_rendering(rng)
        raw = vol.frame(render_neuropil(vol, rendering, seed=seed))
        image = np.stack([imaging_effects(s, rendering, rng) for s in raw])
    else:
        vol = make_world(shape, seed=seed, num_neurites=int(rng.integers(10, 22)), pixel_size_nm=pixel_size_nm or 16.0)
        image = vol.frame(render_world(vol, seed=seed))
        image = image * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20) + rng.normal(0, rng.uniform(3, 9), image.shape)
    # the pipeline's interpolation (fusing tiles, warping sections) blurs a little
    image = ndi.gaussian_filter(image, (0, *(2 * [rng.uniform(0.0, 0.6)])))
    image = np.stack([normalize_section(np.clip(s, 0, 255)) for s in image])
    labels = vol.frame(vol.labels)
    targets = np.stack([boundary_target(labels), labels > 0, vol.truth_mask]).astype(np.float32)
    return image, targets


def augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Heavy augmentation of one patch (x: network units (z, y, x); y: (2, z, y, x)); new arrays."""
    if rng.random() < 0.5:
        x, y = x[:, :, ::-1], y[:, :, :, ::-1]
    if rng.random() < 0.5:
        x, y = x[::-1], y[:, ::-1]
    k = int(rng.integers(4))
    x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(2, 3))
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.ascontiguousarray(y)
    if rng.random() < 0.5:  # elastic: a smooth in-plane displacement, the same for image and targets
        z, h, w = x.shape
        d = [ndi.gaussian_filter(rng.normal(0, 1, (h, w)), 8) for _ in range(2)]
        d = [v / (np.abs(v).max() + 1e-9) * rng.uniform(1, 4) for v in d]
        grid = np.mgrid[0:h, 0:w].astype(np.float64)
        coords = grid + np.stack(d)
        x = np.stack([ndi.map_coordinates(s, coords, order=1, mode="reflect") for s in x]).astype(np.float32)
        y = np.stack([[ndi.map_coordinates(s, coords, order=0, mode="reflect") for s in c] for c in y])
    # contrast, brightness, gamma (on the 8-bit scale the network's units come from)
    gray = np.clip(x * 48 + 128, 0, 255) / 255
    if rng.random() < 0.7:
        gray = gray ** np.exp(rng.uniform(-0.4, 0.4))
    gray = (gray - 0.5) * rng.uniform(0.65, 1.35) + 0.5 + rng.uniform(-0.12, 0.12)
    if rng.random() < 0.5:  # per-section contrast changes
        gray = (gray - 0.5) * rng.uniform(0.8, 1.2, (len(gray), 1, 1)) + 0.5 + rng.uniform(-0.05, 0.05, (len(gray), 1, 1))
    if rng.random() < 0.4:  # a smooth illumination gradient
        h, w = gray.shape[1:]
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        theta = rng.uniform(0, 2 * np.pi)
        gray = gray + rng.uniform(0, 0.12) * (np.cos(theta) * (yy - 0.5) + np.sin(theta) * (xx - 0.5))
    if rng.random() < 0.3:
        gray = ndi.gaussian_filter(gray, (0, *(2 * [rng.uniform(0.3, 1.2)])))
    if rng.random() < 0.5:
        gray = gray + rng.normal(0, rng.uniform(0.01, 0.06), gray.shape)
    if rng.random() < 0.15:  # a missing or washed-out section: the targets stay, the network must bridge it
        s = int(rng.integers(len(gray)))
        gray[s] = gray[s].mean() if rng.random() < 0.5 else ndi.gaussian_filter(gray[s], 3)
    x = ((np.clip(gray, 0, 1) * 255 - 128) / 48).astype(np.float32)
    return x, y


def _patch(data, rng, patch):
    image, target = data[rng.integers(len(data))]
    corner = [rng.integers(0, s - p + 1) for s, p in zip(image.shape, patch)]
    sl = tuple(slice(c, c + p) for c, p in zip(corner, patch))
    return normalize(image[sl]), target[(slice(None), *sl)]


def validate(model, data, patch) -> dict:
    """Loss-free scores of ``model`` on whole validation volumes: boundary and foreground F1 at 0.5."""
    from .unet import predict_array

    model.eval()
    tp = np.zeros(len(CHANNELS))
    fp = np.zeros(len(CHANNELS))
    fn = np.zeros(len(CHANNELS))
    for image, target in data:
        prob = predict_array(model, image)
        for c in range(len(CHANNELS)):
            p, t = prob[c] >= 0.5, target[c] > 0
            tp[c] += (p & t).sum()
            fp[c] += (p & ~t).sum()
            fn[c] += (~p & t).sum()
    model.train()
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    return {f"{name}_f1": round(float(v), 4) for name, v in zip(CHANNELS, f1)}


def train(output: Path = DEFAULT_WEIGHTS, *, volumes: int = 24, steps: int = 2000, patch=(8, 64, 64), batch: int = 4,
          learning_rate: float = 3e-3, seed: int = 0, threads: int | None = None, volume_shape=(16, 128, 128),
          validation_volumes: int = 3, styles: tuple[str, ...] | None = None, cache_dir: Path | None = None,
          initial_weights: Path | None = None, progress: Callable[[int, float], None] | None = None) -> dict:
    """Train from scratch and save the weights to ``output``; returns the loss summary, validation and timing.

    ``patch`` (sections, px, px) is cut at random from ``volumes`` synthetic volumes of ``volume_shape`` (seeds
    ``seed`` ...); validation uses ``validation_volumes`` held-out ones. In-plane sides must be multiples of 4.
    With ``cache_dir`` the generated volumes are kept there (npz) and reused by the next run."""
    if any(p % 4 for p in patch[1:]) or any(p > v for p, v in zip(patch, volume_shape)):
        raise ValueError(f"patch {patch} must fit in the volumes {volume_shape} and have in-plane sides that are multiples of 4")
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    def style_of(i):
        return None if styles is None else styles[i % len(styles)]

    started = time.perf_counter()

    def volume(s, style):
        if cache_dir is None:
            return training_volume(s, volume_shape, style)
        path = Path(cache_dir) / f"em_{style or 'mix'}_{s}_{'x'.join(map(str, volume_shape))}.npz"
        if path.is_file():
            with np.load(path) as f:
                return f["image"], f["targets"]
        image, targets = training_volume(s, volume_shape, style)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, image=image, targets=targets.astype(np.uint8))
        return image, targets

    data = [volume(seed + i, style_of(i)) for i in range(volumes)]
    held_out = [volume(VALIDATION_SEED_OFFSET + seed + i, style_of(i)) for i in range(validation_volumes)]
    generate_s = time.perf_counter() - started
    model = build_unet()
    if initial_weights is not None:  # go on from earlier weights (a longer schedule in several bounded runs)
        state = torch.load(Path(initial_weights), map_location="cpu", weights_only=True)
        own = model.state_dict()
        for key, value in state.items():  # weights of a net with fewer output channels fill the channels they have
            if key in own and own[key].shape != value.shape and own[key].shape[1:] == value.shape[1:]:
                own[key][: len(value)] = value
            elif key in own:
                own[key] = value
        model.load_state_dict(own)
    optimiser = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=learning_rate, total_steps=steps)
    # boundaries are a fifth of the voxels in dense neuropil, fewer in sparse: weight them up
    pos_weight = torch.tensor([2.0, 1.0, 1.0]).view(1, len(CHANNELS), 1, 1, 1)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    losses = []
    started = time.perf_counter()
    model.train()
    for step in range(steps):
        xs, ys = [], []
        for _ in range(batch):
            x, y = augment(*_patch(data, rng, patch), rng)
            xs.append(x[None])
            ys.append(y)
        logits = model(torch.from_numpy(np.stack(xs)))
        loss = loss_fn(logits, torch.from_numpy(np.stack(ys).astype(np.float32)))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(step, losses[-1])
    train_s = time.perf_counter() - started
    model.eval()
    scores = validate(model, held_out, patch) if held_out else {}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), output)
    return {"weights": str(output), "steps": steps, "seed": seed, "losses": [round(v, 5) for v in losses], "volumes": volumes,
            "channels": list(CHANNELS), "validation": scores, "validation_seeds": [VALIDATION_SEED_OFFSET + seed + i for i in range(validation_volumes)],
            "first_loss": float(np.mean(losses[:20])), "final_loss": float(np.mean(losses[-20:])),
            "generate_s": round(generate_s, 1), "train_s": round(train_s, 1)}
