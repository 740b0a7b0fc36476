"""Laue wire-scan (DAXM) workload: geometry by hand, synthetic ground truth recovered, peaks, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from rtlib.errors import InputDataError, ParameterError
from rtlib.synth.laue import LaueSource, default_geometry, expected_images, read_ground_truth, write_laue_scan
from rtlib.workloads import get_workload
from rtlib.workloads.laue import read_results
from rtlib.workloads.laue.geometry import make_geometry, rotation_matrix
from rtlib.workloads.laue.peaks import find_peaks
from rtlib.workloads.laue.reader import images_dataset, open_scan_file, read_geometry
from rtlib.workloads.laue.reconstruct import (
    DepthBins,
    deposit,
    reconstruct_block,
    reconstruct_file,
    reconstruct_pixel_loop,
)

DEPTH_RANGE = {"depth_start_um": -10.0, "depth_end_um": 50.0, "depth_step_um": 1.0}


def _plane_geometry(wire_z_um=(0.0, 1.0), beam_origin_um=(0, 0, 0), pixel_y_um=1000.0, height=1, width=1):
    """Beam along +z, wire along x at height 500 um (diameter 600 um) moving along z, one pixel at y = 1000 um."""
    return make_geometry(
        beam_origin_um=beam_origin_um, beam_direction=[0, 0, 1], wire_axis=[1, 0, 0], wire_diameter_um=600.0,
        wire_centres_um=[[0, 500, z] for z in wire_z_um],
        detector_position_um=[0, pixel_y_um, 0], detector_rotation_rad=[np.pi / 2, 0, 0],
        pixel_size_x_um=1.0, pixel_size_y_um=1.0, height_px=height, width_px=width,
    )


# -- geometry, against hand-computed cases ----------------------------------------------


def test_edge_depths_hand_computed():
    # Tangents from (y, z) = (1000, 0) to the circle at (500, 0) of radius 300: sin a = 3/5, and the
    # tangent lines meet the beam (y = 0) at z = +-300 * 1000 / 400 = +-750.
    g = _plane_geometry()
    pixel = g.detector.pixel_positions_um()[0, 0]
    np.testing.assert_allclose(pixel, [0, 1000, 0])
    # Moving along +z the leading edge is the +z side of the wire: it blocks the ray from +750.
    assert float(g.edge_depth_um(pixel, 0, "leading")) == pytest.approx(750.0, abs=1e-9)
    assert float(g.edge_depth_um(pixel, 0, "trailing")) == pytest.approx(-750.0, abs=1e-9)
    # Scanning the other way swaps the edges.
    back = _plane_geometry(wire_z_um=(0.0, -1.0))
    assert float(back.edge_depth_um(pixel, 0, "leading")) == pytest.approx(-750.0, abs=1e-9)
    assert float(back.edge_depth_um(pixel, 0, "trailing")) == pytest.approx(750.0, abs=1e-9)
    # Depth is measured from the beam origin: moving it 10 um along the beam moves every depth by -10.
    shifted = _plane_geometry(beam_origin_um=(0, 0, 10))
    assert float(shifted.edge_depth_um(pixel, 0, "leading")) == pytest.approx(740.0, abs=1e-9)
    # The wire at (500, 300): the line z = 0 (pixel straight down to the origin) is 300 um from its
    # centre, so it is the trailing tangent (depth 0); the leading one solves 16 d^2 - 30000 d = 0.
    moved = _plane_geometry(wire_z_um=(300.0, 301.0))
    assert float(moved.edge_depth_um(pixel, 0, "leading")) == pytest.approx(1875.0, abs=1e-9)
    assert float(moved.edge_depth_um(pixel, 0, "trailing")) == pytest.approx(0.0, abs=1e-9)
    # A pixel inside the wire's shadow cylinder has no tangent; a pixel at the wire's height has no
    # ray through the beam in front of it.
    inside = _plane_geometry(pixel_y_um=600.0)
    assert np.isnan(inside.edge_depth_um(inside.detector.pixel_positions_um()[0, 0], 0, "leading"))


def test_edge_depth_ignores_where_along_the_wire_the_pixel_is():
    g = _plane_geometry(width=5)
    pixels = g.detector.pixel_positions_um()[0]
    assert np.ptp(pixels[:, 0]) == pytest.approx(4.0)
    np.testing.assert_allclose(g.edge_depth_um(pixels, 0, "leading"), 750.0, atol=1e-9)


def test_detector_pixel_positions_and_rotation():
    np.testing.assert_allclose(rotation_matrix([np.pi / 2, 0, 0]), [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-15)
    np.testing.assert_allclose(rotation_matrix([0, 0, 0]), np.eye(3))
    g = make_geometry(
        beam_origin_um=[0, 0, 0], beam_direction=[0, 0, 1], wire_axis=[1, 0, 0], wire_diameter_um=50,
        wire_centres_um=[[0, 300, 0], [0, 300, 1]], detector_position_um=[0, 510_000, 0],
        detector_rotation_rad=[np.pi / 2, 0, 0], pixel_size_x_um=200, pixel_size_y_um=100, height_px=3, width_px=4,
    )
    pixels = g.detector.pixel_positions_um()
    assert pixels.shape == (3, 4, 3)
    # Column index runs along beamline x, row index along z (the detector's y maps to beamline z).
    np.testing.assert_allclose(pixels[0, 0], [-300, 510_000, -100])
    np.testing.assert_allclose(pixels[2, 3], [300, 510_000, 100])
    np.testing.assert_allclose(g.detector.pixel_positions_um(rows=slice(1, 2))[0, 1], [-100, 510_000, 0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_edge_rays_touch_the_wire_in_any_geometry(seed):
    """For random beams, wires and detectors, the ray from the edge depth is at one radius from the wire axis,
    and the direct occlusion test flips there, blocked on the inner side of the edge."""
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    beam = rng.normal(size=3)
    motion = np.cross(axis, rng.normal(size=3))
    centre = np.array([0.0, 400.0, 0.0]) + rng.normal(scale=50, size=3)
    g = make_geometry(
        beam_origin_um=rng.normal(scale=20, size=3), beam_direction=beam, wire_axis=axis, wire_diameter_um=60.0,
        wire_centres_um=[centre, centre + motion / np.linalg.norm(motion)],
        detector_position_um=[0, 100_000, 0], detector_rotation_rad=rng.normal(scale=0.3, size=3) + [np.pi / 2, 0, 0],
        pixel_size_x_um=2000, pixel_size_y_um=2000, height_px=6, width_px=6,
    )
    pixels = g.detector.pixel_positions_um().reshape(-1, 3)
    a = g.wire.axis
    checked = 0
    for edge in ("leading", "trailing"):
        depths = g.edge_depth_um(pixels, 0, edge)
        for pixel, depth in zip(pixels, depths):
            if not np.isfinite(depth):
                continue
            source = g.beam.point_um(depth)
            ray = pixel - source
            n = np.cross(ray, a)
            distance = abs((centre - source) @ n) / np.linalg.norm(n)
            assert distance == pytest.approx(30.0, rel=1e-9)
            # Blocked just past the edge on one side, free on the other.
            near = g.occluded(pixel, np.array([depth - 0.01, depth + 0.01]), 0)
            assert near[0] != near[1]
            checked += 1
    assert checked > 20


# -- reconstruction ------------------------------------------------------------------


def test_deposit_shares_by_overlap():
    bins = DepthBins.from_range(0.0, 4.0, 1.0)
    out = np.zeros((4, 4))
    # pixel 0: 10 counts over [0.5, 2.5]; pixel 1: a point at 3.2; pixel 2: half outside; pixel 3: outside.
    deposit(out, np.array([2.5, 3.2, -1.0, 7.0]), np.array([0.5, 3.2, 1.0, 9.0]), np.array([10.0, 4.0, 6.0, 5.0]), bins)
    np.testing.assert_allclose(out[:, 0], [2.5, 5.0, 2.5, 0.0])
    np.testing.assert_allclose(out[:, 1], [0, 0, 0, 4.0])
    np.testing.assert_allclose(out[:, 2], [3.0, 0, 0, 0])
    np.testing.assert_allclose(out[:, 3], 0.0)


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory):
    path = tmp_path_factory.mktemp("laue") / "small.h5"
    write_laue_scan(path, height_px=12, width_px=14, num_sources=1, seed=3, depth_end_um=10.0)
    with open_scan_file(path) as f:
        images = images_dataset(f, "/entry/data/data", str(path))
        geometry = read_geometry(f, str(path), images.shape)
        stack = images[()]
    return path, geometry, stack


@pytest.mark.parametrize("edge", ["leading", "trailing", "both"])
def test_vectorised_equals_the_pixel_loop(small_scan, edge):
    _, geometry, images = small_scan
    bins = DepthBins.from_range(-5.0, 15.0, 0.5)
    reference = reconstruct_pixel_loop(images, geometry, bins, edge)
    fast = reconstruct_block(images.astype(np.float64), geometry.detector.pixel_positions_um(), geometry, bins, edge)
    assert np.abs(reference).max() > 100
    np.testing.assert_allclose(fast, reference, rtol=0, atol=1e-9)


def test_dask_split_equals_one_process(small_scan):
    from distributed import Client

    path, geometry, _ = small_scan
    bins = DepthBins.from_range(-5.0, 15.0, 0.5)
    alone = reconstruct_file(str(path), "/entry/data/data", geometry, bins, "both", rows_per_block=12)
    with Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        split = reconstruct_file(str(path), "/entry/data/data", geometry, bins, "both", rows_per_block=5, client=client)
    np.testing.assert_array_equal(split, alone)


def test_forward_model_blocks_each_source_once_per_edge():
    sources = [LaueSource(depth_um=12.0, x_px=10.0, y_px=10.0, counts=1000.0)]
    geometry = default_geometry(20, 20, depth_start_um=0, depth_end_um=20)
    images = expected_images(geometry, sources, background_counts=1.0)
    total = images.sum(axis=(1, 2)) - 400.0
    # Free at the start and at the end of the scan, blocked for a stretch in between.
    assert total[0] == pytest.approx(1000.0) and total[-1] == pytest.approx(1000.0)
    assert total.min() == pytest.approx(0.0, abs=1e-9)
    blocked = total < 500
    assert np.count_nonzero(np.diff(blocked.astype(int))) == 2


# -- the workload on a synthetic scan with ground truth ----------------------------------


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    path = tmp_path_factory.mktemp("laue") / "scan.h5"
    write_laue_scan(path, height_px=64, width_px=64, num_sources=5, seed=4)
    return path, read_ground_truth(path)


def run_laue(inputs, outdir, progress=None, **params):
    wl = get_workload("laue")
    outdir.mkdir(parents=True, exist_ok=True)
    calls = progress if progress is not None else []
    return wl.run(wl.validate(params), [Path(p) for p in inputs], outdir, lambda f, m: calls.append((f, m)))


def _match(peaks, truth):
    """Each true source paired with the nearest found peak in the detector plane."""
    pairs = []
    for source in truth:
        d = np.hypot(peaks["x_px"] - source.x_px, peaks["y_px"] - source.y_px)
        pairs.append((source, peaks[int(np.argmin(d))]))
    return pairs


@pytest.mark.parametrize("edge", ["leading", "trailing"])
def test_sources_recovered_within_one_depth_bin(scan, tmp_path, edge):
    path, truth = scan
    calls: list = []
    summary = run_laue([path], tmp_path / "out", calls, wire_edge=edge, **DEPTH_RANGE)
    result = read_results(tmp_path / "out" / "laue.h5")
    peaks = result["peaks"]
    # Every source found, and nothing else (no noise peaks).
    assert summary["num_peaks"] == len(truth) == len(peaks)
    for source, peak in _match(peaks, truth):
        assert abs(peak["x_px"] - source.x_px) < 0.5 and abs(peak["y_px"] - source.y_px) < 0.5
        assert abs(peak["depth_um"] - source.depth_um) < DEPTH_RANGE["depth_step_um"]
        assert peak["intensity"] == pytest.approx(source.counts, rel=0.08)
    assert summary["depth_resolution_um"] == pytest.approx(1.0)
    assert 0.6 < summary["depth_per_wire_step_um"] < 0.8  # 1 um wire steps at 45 degrees
    assert [f for f, _ in calls] == sorted(f for f, _ in calls) and calls[-1][0] == 1.0


def test_leading_and_trailing_edges_agree(scan, tmp_path):
    path, truth = scan
    run_laue([path], tmp_path / "lead", wire_edge="leading", **DEPTH_RANGE)
    run_laue([path], tmp_path / "trail", wire_edge="trailing", **DEPTH_RANGE)
    lead = read_results(tmp_path / "lead" / "laue.h5")
    trail = read_results(tmp_path / "trail" / "laue.h5")
    for (_, a), (_, b) in zip(_match(lead["peaks"], truth), _match(trail["peaks"], truth)):
        assert abs(a["depth_um"] - b["depth_um"]) < DEPTH_RANGE["depth_step_um"]
        assert a["intensity"] == pytest.approx(b["intensity"], rel=0.05)
    # Over the whole stack, both edges place the same total intensity.
    assert lead["depth_resolved"].sum() == pytest.approx(trail["depth_resolved"].sum(), rel=0.02)


def test_line_source_is_spread_over_its_length(tmp_path):
    source = LaueSource(depth_um=10.0, length_um=15.0, x_px=16.0, y_px=16.0, counts=20000.0)
    path = tmp_path / "line.h5"
    # Without counting noise (a line this bright has +-15 % per bin of it), to test the shape itself.
    write_laue_scan(path, height_px=32, width_px=32, sources=[source], depth_end_um=30.0, seed=1, noise=False)
    run_laue([path], tmp_path / "out", **DEPTH_RANGE)
    result = read_results(tmp_path / "out" / "laue.h5")
    profile = result["depth_resolved"][:, 12:21, 12:21].sum(axis=(1, 2))
    depth = result["depth_um"]
    inside = (depth > 11) & (depth < 24)
    outside = (depth < 8) | (depth > 27)
    per_um = source.counts / source.length_um
    np.testing.assert_allclose(profile[inside], per_um, rtol=0.05)
    assert np.abs(profile[outside]).max() < 0.02 * per_um
    centroid = (profile * depth).sum() / profile.sum()
    assert centroid == pytest.approx(source.mean_depth_um, abs=0.5)


def test_result_file_layout(scan, tmp_path):
    path, truth = scan
    summary = run_laue([path], tmp_path / "out", **DEPTH_RANGE)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["laue.h5", "laue_peaks.csv"]
    with h5py.File(out / "laue.h5") as f:
        assert f["/laue/depth_resolved"].shape == (60, 64, 64)
        assert f["/laue/depth_resolved"].attrs["units"] == "counts/image"
        np.testing.assert_allclose(f["/laue/depth_um"][()], np.arange(60) - 9.5)
        assert f["/laue/depth_edges_um"].shape == (61,)
        assert set(f["/laue/peaks"].dtype.names) >= {"depth_um", "x_px", "y_px", "intensity"}
        assert f["/laue/peak_profiles"].shape == (len(truth), 60)
        params = json.loads(f["/laue"].attrs["parameters"])
        assert params["depth_step_um"] == 1.0 and params["wire_edge"] == "leading"
        assert f["/laue"].attrs["rtlib_version"]
        assert f["/laue"].attrs["wire_diameter_um"] == 52.0
        assert f["/laue"].attrs["wire_steps"] == summary["wire_steps"]
    rows = (out / "laue_peaks.csv").read_text().splitlines()
    assert rows[0].startswith("depth_um,x_px,y_px,intensity") and len(rows) == len(truth) + 1
    json.dumps(summary)


def test_peaks_on_a_hand_made_stack():
    stack = np.random.default_rng(0).normal(0.0, 1.0, size=(30, 40, 40)).astype(np.float32) + 5.0
    yy, xx = np.mgrid[:40, :40]
    truth = [(8, 10.3, 12.6, 900.0), (20, 30.0, 25.25, 400.0)]
    for k, x, y, total in truth:
        spot = np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / 1.1**2)
        stack[k] += total * spot / spot.sum()
    peaks, profiles = find_peaks(stack, np.arange(30) * 2.0 + 1.0, threshold_sigma=6.0)
    assert len(peaks) == 2 and profiles.shape == (2, 30)
    for (k, x, y, total), peak in zip(truth, peaks):
        assert abs(peak["x_px"] - x) < 0.1 and abs(peak["y_px"] - y) < 0.1
        assert peak["depth_um"] == pytest.approx(2.0 * k + 1.0, abs=0.2)
        assert peak["intensity"] == pytest.approx(total, rel=0.1)
        assert int(np.argmax(profiles[list(peaks).index(peak)])) == k
    assert len(find_peaks(stack, np.arange(30.0), min_intensity=500.0)[0]) == 1


# -- bad input and parameters ----------------------------------------------------------------


def _copy(scan_path: Path, tmp_path: Path, name: str) -> Path:
    other = tmp_path / name
    other.write_bytes(scan_path.read_bytes())
    return other


def _expect_input_error(inputs, outdir, *parts, **params):
    with pytest.raises(InputDataError) as info:
        run_laue(inputs, outdir, **params)
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    assert not (outdir / "laue.h5").exists()
    return message


def test_wire_positions_not_matching_the_images(scan, tmp_path):
    other = _copy(scan[0], tmp_path, "short.h5")
    with h5py.File(other, "r+") as f:
        positions = f["/entry/wire/position_um"][()]
        del f["/entry/wire/position_um"]
        f["/entry/wire/position_um"] = positions[:-3]
        steps = f["/entry/data/data"].shape[0]
    _expect_input_error([other], tmp_path / "out", f"{steps - 3} wire positions", f"{steps} images", "one wire position per image")


def test_non_monotonic_scan(scan, tmp_path):
    other = _copy(scan[0], tmp_path, "zigzag.h5")
    with h5py.File(other, "r+") as f:
        positions = f["/entry/wire/position_um"]
        swapped = positions[()]
        swapped[[10, 11]] = swapped[[11, 10]]
        positions[...] = swapped
    _expect_input_error([other], tmp_path / "out", "not monotonic", "step 11")


@pytest.mark.parametrize("key", ["/entry/wire/position_um", "/entry/wire/diameter_um", "/entry/detector/rotation_rad", "/entry/beam/direction"])
def test_missing_geometry_dataset(scan, tmp_path, key):
    other = _copy(scan[0], tmp_path, "missing.h5")
    with h5py.File(other, "r+") as f:
        del f[key]
    _expect_input_error([other], tmp_path / "out", str(other), f"no dataset {key}")


def test_wire_diameter_parameter_replaces_a_missing_one(scan, tmp_path):
    other = _copy(scan[0], tmp_path, "nodiameter.h5")
    with h5py.File(other, "r+") as f:
        del f["/entry/wire/diameter_um"]
    assert run_laue([other], tmp_path / "out", wire_diameter_um=52.0, **DEPTH_RANGE)["num_peaks"] == 5


def test_truncated_and_garbage_files(scan, tmp_path):
    data = scan[0].read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    _expect_input_error([cut], tmp_path / "out", str(cut), "truncated")
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5\n" * 100)
    _expect_input_error([text], tmp_path / "out2", "not an HDF5 file")
    _expect_input_error([tmp_path / "gone.h5"], tmp_path / "out3", "does not exist")
    _expect_input_error([], tmp_path / "out4", "no input files")


def test_missing_or_wrong_image_stack(scan, tmp_path):
    _expect_input_error([scan[0]], tmp_path / "out", "no dataset /entry/data/frames", dataset_path="/entry/data/frames")
    other = tmp_path / "one.h5"
    with h5py.File(other, "w") as f:
        f["/entry/data/data"] = np.zeros((1, 8, 8), dtype=np.uint16)
    _expect_input_error([other], tmp_path / "out2", "at least 2 steps")


def test_parameters_are_validated():
    wl = get_workload("laue")
    with pytest.raises(ParameterError, match="unknown parameter 'depth_um'"):
        wl.validate({"depth_um": 3})
    with pytest.raises(ParameterError, match="must be greater than depth_start_um"):
        wl.validate({"depth_start_um": 10, "depth_end_um": 5})
    with pytest.raises(ParameterError, match="wire_edge"):
        wl.validate({"wire_edge": "middle"})
    with pytest.raises(ParameterError, match="depth_step_um"):
        wl.validate({"depth_step_um": 0})
    with pytest.raises(ParameterError, match="larger depth_step_um"):
        wl.validate({"depth_start_um": 0, "depth_end_um": 1e6, "depth_step_um": 1})
