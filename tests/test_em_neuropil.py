"""The connectomics chain on held-out dense neuropil at 8 nm and 4 nm, against ground truth; its result read by
the OME-Zarr and navis readers; a suspect result is a warning, and an error with --strict.

The volumes are small (8 sections) so that ``make test`` stays short; docs/benchmarks.md has the full table
over 5 held-out volumes per pixel size (benchmarks/em_neuropil.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from rtlib.synth.em import read_ground_truth
from rtlib.synth.neuropil import write_neuropil_dataset
from rtlib.workloads import connectomics
from rtlib.workloads.connectomics import io
from rtlib.workloads.connectomics.evaluate import evaluate_segmentation, match_labels
from rtlib.workloads.connectomics.graph import contact_graph, read_graphml
from rtlib.workloads.connectomics.params import ConnectomicsParams
from rtlib.workloads.connectomics.segment import baseline_segment

# held-out seeds: training uses 0.., validation 100 000..
CASES = {"8nm": (8.0, 300_501, (8, 192, 192), 128), "4nm": (4.0, 300_502, (8, 256, 256), 160)}
# What the shipped weights reach on these two volumes (measured: adapted Rand error 0.24 at 8 nm, 0.19 at 4 nm;
# graph precision/recall 0.80/0.80 and 0.67/0.84; cable +33 % and +14 % over 8 sections; neuron voxels masked 0 %
# and 2.4 %), guarded with a margin. The targets (ARE <= 0.10, precision and recall >= 0.9, cable within
# 5 %) are NOT met yet: docs/connectomics.md and docs/benchmarks.md say so, with the numbers over 10 volumes.
MAX_ADAPTED_RAND_ERROR = 0.30
MIN_GRAPH_PRECISION_RECALL = 0.6
MAX_CABLE_ERROR = 0.45
MAX_NEURON_VOXELS_MASKED = 0.05  # the target, met


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    done = {}

    def run(case):
        if case not in done:
            px, seed, shape, tile = CASES[case]
            base = tmp_path_factory.mktemp(f"neuropil_{case}")
            write_neuropil_dataset(base / "em", shape, tile_px=tile, overlap_px=64, pixel_size_nm=px, seed=seed)
            summary = connectomics.run(ConnectomicsParams(), [base / "em"], base, lambda *a: None)
            result = base / connectomics.RESULT_NAME
            done[case] = (read_ground_truth(base / "em"), result, summary)
        return done[case]

    return run


@pytest.mark.parametrize("case", sorted(CASES))
def test_neuropil_segmentation_against_ground_truth(runs, case):
    truth, result, summary = runs(case)
    group = zarr.open_group(str(result), mode="r")
    labels, mask = group[io.SEGMENTATION][...], group[io.MASK][...]
    spacing = tuple(group.attrs["scale_nm"])
    assert spacing == (40.0, CASES[case][0], CASES[case][0])
    true = truth["labels"]
    scores = evaluate_segmentation(true, labels)
    assert scores["adapted_rand_error"] <= MAX_ADAPTED_RAND_ERROR, scores
    # the mask takes the vessel, the soma and the resin, not the neurons (pixels no tile imaged are apart)
    unimaged = group[connectomics.UNIMAGED][...]
    assert (unimaged <= mask).all() and summary["unimaged_fraction"] == pytest.approx(unimaged.mean(), abs=1e-4)
    assert (mask & ~unimaged & (true > 0)).sum() / (true > 0).sum() <= MAX_NEURON_VOXELS_MASKED
    # contacts: each segment stands for the true neuron holding most of its voxels
    min_area = ConnectomicsParams().min_contact_area_nm2
    true_edges = {tuple(sorted(e)) for e in contact_graph(true, spacing, min_area_nm2=min_area).edges}
    to_truth = match_labels(labels, true)
    found = {tuple(sorted((to_truth[a], to_truth[b]))) for a, b in read_graphml(result / io.GRAPH).edges}
    precision, recall = len(found & true_edges) / len(found), len(found & true_edges) / len(true_edges)
    assert len(true_edges) >= 10 and min(precision, recall) >= MIN_GRAPH_PRECISION_RECALL, (precision, recall)
    true_cable = sum(truth["cable_length_nm"].values())
    assert abs(summary["cable_length_um"] * 1000 - true_cable) / true_cable <= MAX_CABLE_ERROR, (summary, true_cable)
    # far better than a plain threshold + watershed on the same image and mask
    baseline = evaluate_segmentation(true, baseline_segment(group[io.IMAGE][...], mask))
    assert scores["adapted_rand_error"] < baseline["adapted_rand_error"] - 0.4, (scores, baseline)
    assert scores["voi"] < baseline["voi"] - 1.5, (scores, baseline)
    assert summary["warnings"] == []


def test_result_opens_in_ome_zarr_with_the_right_scale(runs):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    _, result, _ = runs("4nm")
    group = zarr.open_group(str(result), mode="r")
    nodes = list(Reader(parse_url(str(result)))())
    image = next(n for n in nodes if n.specs and isinstance(n.specs[0], Multiscales) and not any(isinstance(s, Label) for s in n.specs))
    label = next(n for n in nodes if any(isinstance(s, Label) for s in n.specs))
    for node in (image, label):
        axes = node.metadata["axes"]
        assert [a["name"] for a in axes] == ["z", "y", "x"] and {a["unit"] for a in axes} == {"nanometer"}
        scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
        assert scales == [[40.0, 4.0, 4.0], [40.0, 8.0, 8.0]]
    np.testing.assert_array_equal(np.asarray(image.data[0]), group[io.IMAGE][...])
    np.testing.assert_array_equal(np.asarray(label.data[0]), group[io.SEGMENTATION][...])
    np.testing.assert_array_equal(np.asarray(label.data[1]), group[io.SEGMENTATION][:, ::2, ::2])
    assert np.asarray(image.data[1]).shape == (8, 128, 128)


def test_skeletons_load_in_navis_with_the_graphs_cable_length(runs):
    import navis

    _, result, summary = runs("8nm")
    graph = read_graphml(result / io.GRAPH)
    swcs = sorted((result / io.SKELETONS).glob("*.swc"))
    assert len(swcs) == summary["skeletons"] >= 10
    total = 0.0
    for swc in swcs:
        neuron = navis.read_swc(swc)
        reported = graph.nodes[int(swc.stem)]["cable_length_nm"]
        assert neuron.cable_length == pytest.approx(reported, rel=1e-4), swc.name
        total += neuron.cable_length
    assert total / 1000 == pytest.approx(summary["cable_length_um"], abs=2e-3)


def test_a_suspect_result_is_a_warning_and_an_error_with_strict(tmp_path):
    from typer.testing import CliRunner

    from rtlib.cli import app
    from rtlib.workloads.connectomics import SuspectResult, result_warnings

    assert result_warnings(0, 0.1, ConnectomicsParams())[0].startswith("no neuron was segmented")
    assert result_warnings(5, 0.6, ConnectomicsParams()) and not result_warnings(5, 0.2, ConnectomicsParams())
    write_neuropil_dataset(tmp_path / "em", (3, 128, 128), pixel_size_nm=8.0, seed=300_503, vessel=True, soma=False,
                           outside=True)
    args = ["em", "run", str(tmp_path / "em"), "-o", str(tmp_path / "r.zarr"), "--quiet", "-p", "max_masked_fraction", "0.01"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, (out.output, out.exception)
    assert "WARNING" in out.output and "max_masked_fraction" in out.output
    summary = json.loads(out.output[out.output.index("{"):])
    assert len(summary["warnings"]) == 1 and summary["masked_fraction"] > 0.01
    assert zarr.open_group(str(tmp_path / "r.zarr"), mode="r").attrs["warnings"] == summary["warnings"]
    out = CliRunner().invoke(app, [*args[:3], "-o", str(tmp_path / "strict.zarr"), *args[5:], "--strict"])
    assert out.exit_code != 0 and isinstance(out.exception, SuspectResult), (out.output, out.exception)
    assert "max_masked_fraction" in str(out.exception) and not (tmp_path / "strict.zarr").exists()
