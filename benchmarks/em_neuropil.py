"""Connectomics on held-out dense neuropil: the workload against ground truth, next to threshold + watershed.

Each volume is a fresh neuropil world and rendering (``rtlib.synth.neuropil``)
from seeds that no training or validation run used (``HELD_OUT_SEED``
onwards), written as tiles and analysed by the workload exactly as
``rtlib em run`` does. Scored against the truth:

* adapted Rand error and variation of information (split + merge, nats)
  over the true neurons' voxels (``evaluate.evaluate_segmentation``);
* contact-graph precision and recall: each segment stands for the true
  neuron holding most of its voxels; a found contact counts when that pair
  of true neurons touch (both graphs keep contacts of at least the
  workload's ``min_contact_area_nm2``);
* total skeleton cable against the true centroid-path cable;
* the share of true neuron voxels the mask excludes;
* the baseline: Otsu threshold + distance-transform watershed
  (``segment.baseline_segment``) on the same normalised image and mask.

    python benchmarks/em_neuropil.py                    # 5 volumes at 4 nm and 5 at 8 nm, 16 x 256 x 256
    python benchmarks/em_neuropil.py --volumes 2 --shape 8 192 192   # quick
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

HELD_OUT_SEED = 300_000  # training uses seeds 0.., validation 100 000..: these worlds and renderings are new


def score_run(root: Path, result: Path, summary: dict) -> dict:
    import zarr

    from rtlib.synth.em import read_ground_truth
    from rtlib.workloads.connectomics import io
    from rtlib.workloads.connectomics.evaluate import evaluate_segmentation, match_labels
    from rtlib.workloads.connectomics.graph import contact_graph, read_graphml
    from rtlib.workloads.connectomics.params import ConnectomicsParams
    from rtlib.workloads.connectomics.segment import baseline_segment

    from rtlib.workloads.connectomics import UNIMAGED

    truth = read_ground_truth(root)
    group = zarr.open_group(str(result), mode="r")
    labels, mask, image = group[io.SEGMENTATION][...], group[io.MASK][...], group[io.IMAGE][...]
    unimaged = group[UNIMAGED][...]
    spacing = tuple(group.attrs["scale_nm"])
    true_labels = truth["labels"]
    scores = evaluate_segmentation(true_labels, labels)
    # where no tile imaged the tissue (tiles up to 15 px off their place at the frame's edge) nothing can be segmented:
    # also scored over the imaged voxels only
    imaged_scores = evaluate_segmentation(np.where(unimaged, 0, true_labels), labels)
    min_area = ConnectomicsParams().min_contact_area_nm2
    true_edges = {tuple(sorted(e)) for e in contact_graph(true_labels, spacing, min_area_nm2=min_area).edges}
    graph = read_graphml(result / io.GRAPH)
    to_truth = match_labels(labels, true_labels)
    found = {tuple(sorted((to_truth[a], to_truth[b]))) for a, b in graph.edges}
    precision = len(found & true_edges) / len(found) if found else 0.0
    recall = len(found & true_edges) / len(true_edges) if true_edges else 1.0
    true_cable = sum(truth["cable_length_nm"].values())
    cable = summary["cable_length_um"] * 1000
    voxel_nm3 = float(np.prod(spacing))
    min_voxels = max(1, int(ConnectomicsParams().min_object_volume_um3 * 1e9 / voxel_nm3))
    baseline = evaluate_segmentation(true_labels, baseline_segment(image, mask, min_voxels=min_voxels))
    neuron = true_labels > 0
    return {
        "adapted_rand_error": round(scores["adapted_rand_error"], 4), "voi": round(scores["voi"], 4),
        "voi_split": round(scores["voi_split"], 4), "voi_merge": round(scores["voi_merge"], 4),
        "coverage": round(scores["coverage"], 4),
        "imaged_adapted_rand_error": round(imaged_scores["adapted_rand_error"], 4), "imaged_voi": round(imaged_scores["voi"], 4),
        "baseline_adapted_rand_error": round(baseline["adapted_rand_error"], 4), "baseline_voi": round(baseline["voi"], 4),
        "graph_precision": round(precision, 4), "graph_recall": round(recall, 4), "true_contacts": len(true_edges),
        "cable_error": round((cable - true_cable) / true_cable, 4),
        "neuron_voxels_masked": round(float((mask & ~unimaged & neuron).sum() / max(neuron.sum(), 1)), 4),
        "neuron_voxels_unimaged": round(float((unimaged & neuron).sum() / max(neuron.sum(), 1)), 4),
        "true_neurons": int(len(np.unique(true_labels[neuron]))), "neurons": summary["neurons"],
        "masked_fraction": summary["masked_fraction"], "warnings": summary["warnings"],
        "rendering": {k: round(v, 2) for k, v in truth.get("rendering", {}).items() if isinstance(v, float)},
    }


def run_one(seed: int, pixel_nm: float, shape, tile_px: int, overlap_px: int, workdir: Path, weights: str | None) -> dict:
    from rtlib.synth.neuropil import write_neuropil_dataset
    from rtlib.workloads import connectomics
    from rtlib.workloads.connectomics.params import ConnectomicsParams

    root = workdir / f"em_{seed}_{pixel_nm:g}nm"
    write_neuropil_dataset(root, tuple(shape), tile_px=tile_px, overlap_px=overlap_px, pixel_size_nm=pixel_nm, seed=seed)
    out = workdir / f"out_{seed}_{pixel_nm:g}nm"
    started = time.perf_counter()
    summary = connectomics.run(ConnectomicsParams(weights=weights), [root], out, lambda *a: None)
    wall = time.perf_counter() - started
    record = {"seed": seed, "pixel_size_nm": pixel_nm, "wall_s": round(wall, 1),
              **score_run(root, out / connectomics.RESULT_NAME, summary)}
    print(json.dumps(record), flush=True)
    return record


def table(records: list[dict]) -> str:
    lines = ["| pixel | volumes | adapted Rand error (mean, max) | VI nats (mean) | baseline ARE (mean) | baseline VI (mean) | "
             "graph precision (min) | graph recall (min) | cable error (mean abs, max abs) | neuron voxels masked (max) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for px in sorted({r["pixel_size_nm"] for r in records}):
        rs = [r for r in records if r["pixel_size_nm"] == px]
        are = [r["adapted_rand_error"] for r in rs]
        cable = [abs(r["cable_error"]) for r in rs]
        lines.append(f"| {px:g} nm | {len(rs)} | {np.mean(are):.3f}, {max(are):.3f} | {np.mean([r['voi'] for r in rs]):.3f} | "
                     f"{np.mean([r['baseline_adapted_rand_error'] for r in rs]):.3f} | {np.mean([r['baseline_voi'] for r in rs]):.3f} | "
                     f"{min(r['graph_precision'] for r in rs):.3f} | {min(r['graph_recall'] for r in rs):.3f} | "
                     f"{np.mean(cable):.3f}, {max(cable):.3f} | {max(r['neuron_voxels_masked'] for r in rs):.3f} |")
    lines.append("")
    lines.append("| seed | pixel | ARE | VI | baseline ARE | baseline VI | precision | recall | cable error | masked neuron voxels | neurons (true) |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        lines.append(f"| {r['seed']} | {r['pixel_size_nm']:g} nm | {r['adapted_rand_error']:.3f} | {r['voi']:.3f} | "
                     f"{r['baseline_adapted_rand_error']:.3f} | {r['baseline_voi']:.3f} | {r['graph_precision']:.3f} | "
                     f"{r['graph_recall']:.3f} | {r['cable_error']:+.3f} | {r['neuron_voxels_masked']:.3f} | "
                     f"{r['neurons']} ({r['true_neurons']}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=5)
    parser.add_argument("--pixel-sizes", type=float, nargs="+", default=[4.0, 8.0])
    parser.add_argument("--shape", type=int, nargs=3, default=[16, 256, 256])
    parser.add_argument("--tile-px", type=int, default=160)
    parser.add_argument("--overlap-px", type=int, default=64)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--no-save", action="store_true", help="print, do not write benchmarks/results or the docs")
    args = parser.parse_args()
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for px in args.pixel_sizes:
            for i in range(args.volumes):
                records.append(run_one(HELD_OUT_SEED + i, px, args.shape, args.tile_px, args.overlap_px, Path(tmp), args.weights))
    md = table(records)
    print(md)
    if not args.no_save:
        from common import write_result

        command = ("python benchmarks/em_neuropil.py --volumes {} --pixel-sizes {} --shape {}".format(
            args.volumes, " ".join(f"{p:g}" for p in args.pixel_sizes), " ".join(map(str, args.shape))))
        write_result("em_neuropil", "Connectomics on held-out dense neuropil (segmentation quality)", {"volumes": records}, md,
                     command=command, notes=(
                         "Held-out seeds (300000 onwards): worlds and renderings no training or validation run saw. "
                         "ARE and VI over the true neurons' voxels; the baseline is Otsu threshold + distance-transform "
                         "watershed on the same normalised image and mask. Cable: total skeleton cable against the true "
                         "centroid-path cable. See docs/connectomics.md."))


if __name__ == "__main__":
    main()
