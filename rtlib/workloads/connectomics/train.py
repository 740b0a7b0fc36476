"""Training the U-Net on synthetic EM volumes (behind ``rtlib train em``).

Each volume is a fresh synthetic world (``rtlib.synth.em``) rendered as EM,
then degraded the way the imaging and the pipeline degrade it: camera
noise, the blur of interpolation when tiles are fused and sections warped,
and a gain and offset of the 8-bit range. Targets are the neurons'
membranes (2-px in-plane outlines) and their interiors. A few minutes on
two CPU cores give weights good enough for the synthetic data; for real
data, train on annotated volumes with the same function.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from ...synth.em import make_world, membranes, render_world
from .unet import CHANNELS, DEFAULT_WEIGHTS, build_unet, normalize


def training_volume(seed: int, shape=(24, 128, 128)) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8, targets (2, z, y, x) float32) of one synthetic volume."""
    rng = np.random.default_rng(seed + 1000)
    vol = make_world(shape, seed=seed, num_neurites=int(rng.integers(10, 22)))
    image = vol.frame(render_world(vol, seed=seed))
    image = ndi.gaussian_filter(image, (0, *(2 * [rng.uniform(0.0, 0.8)])))
    image = image * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12) + rng.normal(0, rng.uniform(3, 9), image.shape)
    labels = vol.frame(vol.labels)
    targets = np.stack([membranes(labels), labels > 0]).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), targets


def train(output: Path = DEFAULT_WEIGHTS, *, volumes: int = 6, steps: int = 600, patch=(12, 64, 64), batch: int = 2,
          learning_rate: float = 3e-3, seed: int = 0, threads: int | None = None, volume_shape=(24, 128, 128),
          progress: Callable[[int, float], None] | None = None) -> dict:
    """Train from scratch and save the weights to ``output``; returns the loss summary and timing.

    ``patch`` (sections, px, px) is cut at random from ``volumes`` synthetic volumes of ``volume_shape``;
    its in-plane sides must be multiples of 4 (the U-Net pools twice)."""
    if any(p % 4 for p in patch[1:]) or any(p > v for p, v in zip(patch, volume_shape)):
        raise ValueError(f"patch {patch} must fit in the volumes {volume_shape} and have in-plane sides that are multiples of 4")
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = [training_volume(seed + i, volume_shape) for i in range(volumes)]
    model = build_unet()
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=learning_rate, total_steps=steps)
    # membranes are a small fraction of voxels: weight them up so the net does not learn to skip them
    pos_weight = torch.tensor([4.0, 1.0]).view(1, 2, 1, 1, 1)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    losses = []
    started = time.perf_counter()
    model.train()
    for step in range(steps):
        xs, ys = [], []
        for _ in range(batch):
            image, target = data[rng.integers(len(data))]
            corner = [rng.integers(0, s - p + 1) for s, p in zip(image.shape, patch)]
            sl = tuple(slice(c, c + p) for c, p in zip(corner, patch))
            x, y = normalize(image[sl]), target[(slice(None), *sl)]
            if rng.random() < 0.5:
                x, y = x[:, :, ::-1], y[:, :, :, ::-1]
            k = int(rng.integers(4))
            x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(2, 3))
            xs.append(np.ascontiguousarray(x)[None])
            ys.append(np.ascontiguousarray(y))
        logits = model(torch.from_numpy(np.stack(xs)))
        loss = loss_fn(logits, torch.from_numpy(np.stack(ys)))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(step, losses[-1])
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), output)
    return {"weights": str(output), "steps": steps, "seed": seed, "losses": [round(v, 5) for v in losses], "volumes": volumes, "channels": list(CHANNELS),
            "first_loss": float(np.mean(losses[:20])), "final_loss": float(np.mean(losses[-20:])),
            "train_s": round(time.perf_counter() - started, 1)}
