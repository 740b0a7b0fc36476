"""The U-Net trains: on a tiny run the loss falls; augmentation keeps image and targets in register; the shipped
weights load, are small, and separate membranes from interiors on held-out volumes of both styles."""

from __future__ import annotations

import numpy as np
import pytest

from rtlib.workloads.connectomics.train import VALIDATION_SEED_OFFSET, augment, train, training_volume
from rtlib.workloads.connectomics.unet import DEFAULT_WEIGHTS, load_model, normalize, predict


def test_training_loss_decreases_on_a_tiny_run(tmp_path):
    result = train(tmp_path / "w.pt", volumes=1, steps=40, patch=(6, 32, 32), batch=2, seed=1, threads=1,
                   volume_shape=(8, 64, 64), validation_volumes=1, styles=("neuropil",))
    losses = np.array(result["losses"])
    assert len(losses) == 40 and np.isfinite(losses).all()
    assert losses[-10:].mean() < 0.85 * losses[:5].mean(), losses
    assert set(result["validation"]) == {"boundary_f1", "foreground_f1", "nontarget_f1"}
    assert result["validation_seeds"] == [VALIDATION_SEED_OFFSET + 1]
    model = load_model(tmp_path / "w.pt")  # what was saved is a model the workload can load
    image, _ = training_volume(3, (8, 64, 64))
    assert predict(model, image).shape == (3, 8, 64, 64)


def test_training_refuses_a_patch_the_network_cannot_pool(tmp_path):
    with pytest.raises(ValueError, match="multiples of 4"):
        train(tmp_path / "w.pt", steps=1, patch=(6, 30, 32), volume_shape=(8, 64, 64), volumes=1)


def test_augmentation_keeps_image_and_targets_in_register():
    image, target = training_volume(5, (8, 64, 64), "neuropil")
    x = normalize(image)
    membranes = []
    for seed in range(12):
        xa, ya = augment(x, target, np.random.default_rng(seed))
        assert xa.shape == x.shape and ya.shape == target.shape and xa.dtype == np.float32
        assert set(np.unique(ya)) <= {0.0, 1.0}  # targets are warped by nearest neighbour, never blended
        # after flips, rotations and the elastic warp, membranes (targets) still sit on the image's dark lines
        inside, on = xa[(ya[1] > 0) & (ya[0] == 0)], xa[ya[0] > 0]
        membranes.append(np.median(inside) - np.median(on))
    assert np.median(membranes) > 0.5 and min(membranes) > 0, membranes


def test_shipped_weights_are_small_and_separate_membranes_from_interiors():
    assert DEFAULT_WEIGHTS.stat().st_size < 2**20
    model = load_model()
    for style, seed in (("neuropil", VALIDATION_SEED_OFFSET + 91), ("neuropil", VALIDATION_SEED_OFFSET + 92),
                        ("sparse", VALIDATION_SEED_OFFSET + 93)):
        image, target = training_volume(seed, (8, 96, 96), style)  # volumes the weights were not trained on
        prob = predict(model, image)
        membrane, interior = target[0] > 0, (target[1] > 0) & (target[0] == 0)
        outside = (target[1] == 0) & (target[0] == 0)
        scores = (prob[0][membrane].mean(), prob[0][interior].mean(), prob[1][interior].mean(), prob[1][outside].mean(),
                  prob[2][target[2] > 0].mean(), prob[2][target[1] > 0].mean())
        # an untrained net gives about 0.5 everywhere
        assert scores[0] > 0.6 and scores[1] < 0.15 and scores[2] > 0.85 and scores[3] < 0.3, (style, seed, scores)
        assert scores[4] > 0.7 and scores[5] < 0.1, (style, seed, scores)  # vessel, soma, resin: not neurons
