"""Scoring a segmentation against ground truth: variation of information, adapted Rand error, label matching.

Scores are taken over the voxels inside true neurons (the truth's background
and membranes between neurons are not scored against, as in the CREMI
challenge); a true-neuron voxel the segmentation left empty counts as
one more segment, so leaving voxels out is penalised, and ``coverage`` says
how many were labelled.
"""

from __future__ import annotations

import numpy as np


def evaluate_segmentation(truth: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """{voi_split, voi_merge, voi (nats), adapted_rand_error, coverage} of ``labels`` against ``truth``."""
    from skimage.metrics import adapted_rand_error, variation_of_information

    inside = truth > 0
    t, s = truth[inside], labels[inside]
    split, merge = variation_of_information(t, s)
    are = adapted_rand_error(t, s, ignore_labels=())[0]
    return {"voi_split": float(split), "voi_merge": float(merge), "voi": float(split + merge),
            "adapted_rand_error": float(are), "coverage": float((s > 0).mean()) if s.size else 0.0}


def match_labels(labels: np.ndarray, truth: np.ndarray) -> dict[int, int]:
    """{segment: the true neuron holding most of its voxels} for every non-zero segment (0 if only background)."""
    sel = labels > 0
    pairs, counts = np.unique(np.stack([labels[sel], truth[sel]]), axis=1, return_counts=True)
    best: dict[int, tuple[int, int]] = {}
    for (a, b), n in zip(pairs.T.tolist(), counts.tolist()):
        if b and (a not in best or n > best[a][1]):
            best[a] = (b, n)
    return {a: best[a][0] if a in best else 0 for a in np.unique(labels[sel]).tolist()}
