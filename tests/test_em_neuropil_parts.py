"""The neuropil generator, intensity normalisation, masking from the network's output and reading at a coarser
scale, each against a known answer (small, fast: no pipeline run here; see test_em_neuropil.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rtlib.synth.neuropil import (boundary_target, centroid_cable_nm, draw_rendering, make_neuropil, render_neuropil,
                                  write_neuropil_dataset)
from rtlib.workloads.connectomics import io
from rtlib.workloads.connectomics.graph import contact_graph
from rtlib.workloads.connectomics.mask import MaskSettings, network_mask
from rtlib.workloads.connectomics.normalize import correct_tiles, normalize_section, tile_corrections


@pytest.fixture(scope="module")
def world():
    return make_neuropil((6, 128, 128), pixel_size_nm=8.0, seed=4, vessel=True, soma=True, outside=True)


def test_neuropil_is_dense_every_neuron_touches_a_neighbour(world):
    labels = world.frame(world.labels)
    tissue = ~world.truth_mask
    # most of the tissue is inside neurons; the rest is thin extracellular space
    assert (labels[tissue] > 0).mean() > 0.9, (labels[tissue] > 0).mean()
    ecs = world.frame(world.ecs)
    assert 0.002 < ecs.mean() < 0.1 and not (labels[ecs] > 0).any()
    ids = np.unique(labels[labels > 0])
    assert len(ids) >= 12
    graph = contact_graph(labels, (40.0, 8.0, 8.0))
    touching = {n for e in graph.edges for n in e}
    # every neuron with a real profile (not a sliver at the frame's edge) touches another one
    big = [int(i) for i in ids if (labels == i).sum() > 200]
    assert set(big) <= touching, set(big) - touching
    assert graph.number_of_edges() >= len(big)
    # non-target objects are there and hold no neuron
    assert world.frame(world.soma).any() and world.frame(world.vessel_lumen).any() and world.frame(world.outside).any()
    assert not (labels.astype(bool) & world.truth_mask).any()
    # mitochondria lie inside neurons, away from their membranes
    assert world.mito.any() and (world.labels[world.mito] > 0).all()


def test_rendering_family_spans_the_ranges_and_membranes_are_1_to_4_px(world):
    renderings = [draw_rendering(np.random.default_rng(s)) for s in range(200)]
    cytoplasm = np.array([r.cytoplasm_gray for r in renderings])
    assert cytoplasm.min() >= 110 and cytoplasm.max() <= 230 and cytoplasm.max() - cytoplasm.min() > 100
    for px in (4.0, 8.0, 16.0):
        widths = [r.membrane_px(px) for r in renderings]
        assert min(widths) >= 1 and max(widths) <= 4
    # a rendered membrane between two neurons is darker than both sides' cytoplasm, by the drawn contrast
    r = renderings[0]
    image = world.frame(render_neuropil(world, r, seed=4))
    labels = world.frame(world.labels)
    band = boundary_target(labels) & (labels > 0)
    inside = (labels > 0) & ~boundary_target(np.where(labels > 0, labels, 0)) & ~world.frame(world.mito)
    # (a 1-px membrane at 8 nm splits its darkness over the 2-px band, then blurs: a fifth of the contrast or more)
    assert np.median(image[inside]) - np.median(image[band]) > 0.2 * r.membrane_contrast
    assert abs(np.median(image[inside]) - r.cytoplasm_gray) < 15


def test_centroid_cable_of_straight_and_tilted_tubes():
    labels = np.zeros((10, 40, 40), np.uint32)
    yy, xx = np.mgrid[0:40, 0:40]
    for z in range(10):
        labels[z][np.hypot(yy - 10, xx - 10) < 4] = 1  # straight through 10 sections
        labels[z][np.hypot(yy - 25, xx - 12 - 2 * z) < 4] = 2  # 2 px per section sideways
    cable = centroid_cable_nm(labels, (40.0, 8.0, 8.0))
    assert cable[1] == pytest.approx(10 * 40.0)  # 9 steps and half a section out at each face
    assert cable[2] == pytest.approx(9 * np.hypot(40.0, 16.0) + 40.0, rel=1e-3)


def test_written_dataset_has_the_sparse_layout_at_4_nm(tmp_path):
    truth = write_neuropil_dataset(tmp_path / "em", (2, 128, 128), pixel_size_nm=4.0, seed=9)
    layout = io.read_layout(tmp_path / "em")
    assert layout.frame_shape == (128, 128) and layout.pixel_size_nm == 4.0 and (layout.rows, layout.cols) == (2, 2)
    tiles = io.read_section(io.section_dirs(tmp_path / "em")[1], layout)
    assert all(t.dtype == np.uint8 and t.shape == (96, 96) for t in tiles.values())
    saved = json.loads((tmp_path / "em" / "ground_truth" / "truth.json").read_text())
    assert saved["style"] == "neuropil" and 110 <= saved["rendering"]["cytoplasm_gray"] <= 230
    labels = np.load(tmp_path / "em" / "ground_truth" / "labels.npy")
    assert labels.shape == (2, 128, 128) and set(truth["cable_length_nm"]) == {str(i) for i in np.unique(labels[labels > 0])}


def test_rtlib_synth_em_defaults_to_neuropil_and_keeps_sparse(tmp_path):
    from typer.testing import CliRunner

    from rtlib.cli import app

    out = CliRunner().invoke(app, ["synth", "em", str(tmp_path / "a"), "--sections", "2", "--seed", "3"])
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "a/ground_truth/truth.json").read_text())["style"] == "neuropil"
    assert io.read_layout(tmp_path / "a").pixel_size_nm == 8.0
    out = CliRunner().invoke(app, ["synth", "em", str(tmp_path / "b"), "--sections", "2", "--style", "sparse"])
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "b/ground_truth/truth.json").read_text())["style"] == "sparse"
    assert io.read_layout(tmp_path / "b").pixel_size_nm == 16.0
    out = CliRunner().invoke(app, ["synth", "em", str(tmp_path / "c"), "--style", "dense"])
    assert out.exit_code != 0 and "neuropil or sparse" in str(out.exception)


def test_tile_gains_and_offsets_are_recovered_from_the_overlaps():
    rng = np.random.default_rng(0)
    from scipy import ndimage as ndi

    scene = 128 + 40 * ndi.gaussian_filter(rng.normal(0, 1, (160, 160)), 2) / 0.14
    positions = {(r, c): np.array([r * 64.0, c * 64.0]) for r in range(2) for c in range(2)}
    truth_gain = {(0, 0): 1.0, (0, 1): 1.2, (1, 0): 0.8, (1, 1): 1.1}
    truth_offset = {(0, 0): 0.0, (0, 1): -20.0, (1, 0): 15.0, (1, 1): 5.0}
    tiles = {k: scene[int(p[0]):int(p[0]) + 96, int(p[1]):int(p[1]) + 96] * truth_gain[k] + truth_offset[k]
             for k, p in positions.items()}
    corrected = correct_tiles(tiles, tile_corrections(tiles, positions))
    # the scene's square [64, 96) is in all four tiles: after correction they agree there (one common gain and offset)
    views = [corrected[k][64 - int(p[0]):96 - int(p[0]), 64 - int(p[1]):96 - int(p[1])] for k, p in positions.items()]
    assert all(np.abs(v - views[0]).max() < 0.5 for v in views), [np.abs(v - views[0]).max() for v in views]
    raw = [tiles[k][64 - int(p[0]):96 - int(p[0]), 64 - int(p[1]):96 - int(p[1])] for k, p in positions.items()]
    assert max(np.abs(v - raw[0]).max() for v in raw) > 20  # they did not before


def test_section_normalisation_ignores_gain_and_offset():
    rng = np.random.default_rng(1)
    section = rng.normal(170, 10, (64, 64))
    section[::8] = 80  # membranes
    a = normalize_section(section)
    for gain, offset in ((0.8, 20.0), (1.2, -20.0), (0.6, 60.0)):
        b = normalize_section(section * gain + offset)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, (gain, offset)
    assert abs(np.median(a) - 150) <= 1


def test_network_mask_takes_wide_regions_not_thin_false_alarms_and_is_the_same_in_blocks():
    from rtlib.workloads.connectomics.blockwise import BlockGrid, mask_blocks

    nontarget = np.zeros((3, 128, 128), np.float32)
    yy, xx = np.mgrid[0:128, 0:128]
    nontarget[:, np.hypot(yy - 40, xx - 40) < 20] = 1  # a vessel, 40 px wide
    nontarget[:, :, 90:92] = 1  # a 2-px line the network was unsure of
    nontarget[:, 100:104, :] = 0.8  # a 4-px band
    settings = MaskSettings.from_nm(48.0, 8.0)
    mask = network_mask(nontarget, settings)
    disc = np.hypot(yy - 40, xx - 40) < 14
    assert mask[:, disc].all() and not mask[:, 60:, 60:].any()
    assert not mask[:, np.hypot(yy - 40, xx - 40) > 26].any()
    arrays = {"nontarget": (nontarget * 255).astype(np.uint8), "mask": np.zeros(nontarget.shape, bool)}
    mask_blocks(arrays, BlockGrid(nontarget.shape, (3, 32, 48)), settings)
    np.testing.assert_array_equal(arrays["mask"], network_mask(arrays["nontarget"], settings))


def test_reading_at_half_resolution_is_the_same_in_blocks():
    """4 nm data is read at 8 nm (factor 2): block-wise inference with the halo gives the whole volume's numbers."""
    from rtlib.workloads.connectomics.unet import build_unet, predict, scale_factor

    assert [scale_factor(p, 8.0) for p in (4.0, 5.0, 6.0, 8.0, 16.0)] == [2, 2, 1, 1, 1]
    import torch

    torch.manual_seed(0)
    model = build_unet().eval()
    image = np.random.default_rng(2).integers(0, 255, (6, 120, 112)).astype(np.uint8)
    whole = predict(model, image, factor=2)
    blocks = predict(model, image, block_shape=(3, 48, 56), factor=2)
    assert whole.shape == (3, 6, 120, 112)
    np.testing.assert_allclose(blocks, whole, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 8"):
        predict(model, image, block_shape=(3, 44, 56), factor=2)


def test_a_segment_enclosed_by_another_is_merged_into_it_two_touching_neurons_are_not():
    """An organelle the network outlined (a disc ringed by membrane inside one neuron) joins its neuron; two
    neighbouring neurons, each with most of its surface on the background, stay apart."""
    from rtlib.workloads.connectomics.segment import SegmentSettings, segment

    z, n = 4, 64
    yy, xx = np.mgrid[0:n, 0:n]
    boundary = np.zeros((z, n, n), np.float32)
    fg = np.zeros((z, n, n), np.float32)
    fg[:, 4:60, 4:32] = fg[:, 4:60, 33:60] = 1  # two neurons side by side ...
    boundary[:, :, 31:34] = 1  # ... across a membrane
    ring = np.abs(np.hypot(yy - 30, xx - 16) - 6) < 1.5  # a mitochondrion's outline inside the left one
    boundary[:, ring] = 1
    for edge in (fg == 0,):
        boundary[edge] = 1
    probabilities = np.stack([boundary, fg])
    plain = segment(probabilities, None, SegmentSettings(min_voxels=10, min_seed_voxels=5, enclosed_share=1.1))
    merged = segment(probabilities, None, SegmentSettings(min_voxels=10, min_seed_voxels=5))
    inside = np.hypot(yy - 30, xx - 16) < 4
    assert plain[0][inside].min() != plain[0, 30, 8]  # the disc is a segment of its own without the rule
    assert (merged[:, inside] == merged[0, 30, 8]).all()  # and part of its neuron with it
    assert merged[0, 30, 8] != merged[0, 30, 45] and len(np.unique(merged[merged > 0])) == 2


def test_eroded_seeds_split_a_bridge_and_blocks_give_the_whole_volumes_segmentation(world):
    """Seed erosion cuts a membrane gap's bridge; with it, block-wise segmentation (a halo for the erosion)
    still equals the whole volume's, voxel for voxel."""
    from rtlib.workloads.connectomics.blockwise import BlockGrid, segment_blocks
    from rtlib.workloads.connectomics.segment import SegmentSettings, segment

    labels = world.frame(world.labels)
    boundary = boundary_target(labels).astype(np.float32)
    fg = (labels > 0).astype(np.float32)
    settings = SegmentSettings(min_voxels=50, min_seed_voxels=10, seed_erosion_px=2.0)
    whole = segment(np.stack([boundary, fg]), None, settings)
    arrays = {"boundary": boundary, "foreground": fg, "mask": np.zeros(labels.shape, bool)}
    blocks = segment_blocks(arrays, BlockGrid(labels.shape, (3, 48, 40)), settings)
    np.testing.assert_array_equal(blocks, whole)
    assert len(np.unique(whole)) > 10
    # a bridge: two discs joined by a 3-px wide neck with no membrane; eroded seeds keep them apart
    yy, xx = np.mgrid[0:40, 0:80]
    two = (np.hypot(yy - 20, xx - 20) < 14) | (np.hypot(yy - 20, xx - 60) < 14) | ((np.abs(yy - 20) <= 1) & (xx > 20) & (xx < 60))
    fg2 = np.repeat(two[None], 3, axis=0).astype(np.float32)
    b2 = 1 - fg2
    plain = segment(np.stack([b2, fg2]), None, SegmentSettings(min_voxels=10, min_seed_voxels=5, merge_threshold=0.0))
    eroded = segment(np.stack([b2, fg2]), None, SegmentSettings(min_voxels=10, min_seed_voxels=5, merge_threshold=0.0,
                                                                 seed_erosion_px=2.0))
    assert plain[0, 20, 20] == plain[0, 20, 60]
    assert eroded[0, 20, 20] != eroded[0, 20, 60] and eroded[0, 20, 20] > 0 and eroded[0, 20, 60] > 0
