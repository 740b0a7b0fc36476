"""The saxs workload against synthetic data of known I(q), geometry handling, streaming and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

import rtlib
from rtlib.errors import InputDataError, ParameterError
from rtlib.synth.detector import Geometry, corrupt_file, expected_image, expected_intensity, write_detector_file
from rtlib.synth.geometry import pixel_q_map
from rtlib.workloads import get_workload
from rtlib.workloads.saxs import SaxsParams, workload
from rtlib.workloads.saxs.geometry import DetectorGeometry

HEIGHT, WIDTH, FRAMES = 256, 256, 64
# Short distance, big pixels: 2θ reaches ~9°, where the small-angle q would be off by ~0.3 %.
WIDE = Geometry(beam_center_x_px=100.3, beam_center_y_px=140.6, detector_distance_m=0.2,
                pixel_size_um=172.0, wavelength_angstrom=1.0)
MODEL = dict(form="guinier", radius_angstrom=8.0, scale_counts=5000.0, background_counts=50.0)


def run_saxs(inputs, outdir: Path, progress=None, **params) -> dict:
    outdir.mkdir(parents=True, exist_ok=True)
    calls = progress if progress is not None else []
    return workload.run(workload.validate(params), [Path(p) for p in inputs], outdir, lambda f, m: calls.append((f, m)))


def read_result(outdir: Path) -> dict[str, np.ndarray]:
    with h5py.File(outdir / "saxs.h5", "r") as f:
        out = {name: f["saxs"][name][()] for name in f["saxs"]}
        out["attrs"] = dict(f["saxs"].attrs)
    return out


@pytest.fixture(scope="module")
def wide_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("saxs") / "wide.h5"
    truth = write_detector_file(path, frames=FRAMES, height=HEIGHT, width=WIDTH, geometry=WIDE, seed=11, **MODEL)
    return path, truth


@pytest.fixture(scope="module")
def wide_result(wide_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("wide-out")
    summary = run_saxs([wide_file[0]], out)
    return summary, read_result(out), out


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "scan.h5"
    truth = write_detector_file(path, frames=10, height=40, width=48, seed=2)
    return path, truth


def _mean_of_truth_per_bin(truth, edges):
    """The noiseless expectation averaged over the pixels of each bin, from the synth's own q map."""
    geometry = Geometry(**truth["geometry"])
    q = pixel_q_map(geometry, HEIGHT, WIDTH).ravel()
    image = expected_image(geometry, HEIGHT, WIDTH, **truth["model"]).ravel()
    index = np.clip(np.searchsorted(edges, q, side="right") - 1, 0, edges.size - 2)
    return np.bincount(index, image, edges.size - 1) / np.bincount(index, minlength=edges.size - 1)


# -- I(q) against the ground truth ------------------------------------------------------


def test_iq_matches_the_analytic_form_within_one_percent(wide_file, wide_result):
    _, truth = wide_file
    _, res, _ = wide_result
    q, intensity, err, pixels = res["q_inv_angstrom"], res["intensity"], res["intensity_err"], res["pixels_per_bin"]
    # Well sampled: >= 100 pixels per bin, so noise per bin is < 0.3 %, over 3 sigma below 1 %.
    well = pixels >= 100
    assert q[well].min() < 0.1 * q.max() and q[well].max() > 0.8 * q.max()  # not a vacuous range
    assert well.sum() > 150
    # The honest comparison: the data average over a bin's pixels, so compare with
    # the noiseless I(q) averaged over the same pixels.
    expected = _mean_of_truth_per_bin(truth, res["q_edges_inv_angstrom"])
    relative = np.abs(intensity - expected) / expected
    assert relative[well].max() < 0.01, f"worst bin off by {relative[well].max():.2%}"
    # Bins are fine enough here that I(q) at the bin centre is also within 1 %.
    at_centres = expected_intensity(q, **truth["model"])
    assert (np.abs(intensity - at_centres) / at_centres)[well].max() < 0.01
    # The profile spans the pattern: from near scale + background down to a few % of it.
    assert intensity[0] > 0.95 * (MODEL["scale_counts"] + MODEL["background_counts"])
    assert intensity[well][-1] < 0.2 * intensity[0]


def test_errors_are_the_real_statistical_scatter(wide_file, wide_result):
    _, truth = wide_file
    _, res, _ = wide_result
    well = res["pixels_per_bin"] >= 100
    expected = _mean_of_truth_per_bin(truth, res["q_edges_inv_angstrom"])
    chi2 = ((res["intensity"] - expected) / res["intensity_err"])[well] ** 2
    assert 0.7 < chi2.mean() < 1.3, chi2.mean()
    # And they are what Poisson statistics predict for the counts in each bin.
    poisson = np.sqrt(expected / FRAMES / res["pixels_per_bin"])
    assert np.median(res["intensity_err"][well] / poisson[well]) == pytest.approx(1.0, abs=0.05)


def test_q_is_exact_not_small_angle():
    q = DetectorGeometry(**WIDE.to_dict()).q_map(HEIGHT, WIDTH)
    np.testing.assert_allclose(q, pixel_q_map(WIDE, HEIGHT, WIDTH), rtol=1e-12, atol=1e-15)
    # The geometry is wide enough that the small-angle q would differ visibly.
    y, x = np.indices((HEIGHT, WIDTH))
    r_m = np.hypot(x - WIDE.beam_center_x_px, y - WIDE.beam_center_y_px) * WIDE.pixel_size_um * 1e-6
    small_angle = 2 * math.pi * (r_m / WIDE.detector_distance_m) / WIDE.wavelength_angstrom
    assert np.max(np.abs(small_angle - q) / np.maximum(q, 1e-12)) > 3e-3


def test_sphere_minimum_is_where_theory_puts_it(tmp_path):
    radius = 120.0  # first minimum at q = 0.037 1/Å, inside the full rings (q < 0.040 1/Å here)
    geometry = Geometry(beam_center_x_px=128.4, beam_center_y_px=127.7, detector_distance_m=1.5,
                        pixel_size_um=75.0, wavelength_angstrom=1.0)
    path = tmp_path / "sphere.h5"
    write_detector_file(path, frames=16, height=HEIGHT, width=WIDTH, geometry=geometry, seed=1,
                        form="sphere", radius_angstrom=radius, scale_counts=20000.0, background_counts=1.0)
    run_saxs([path], tmp_path / "out", num_q_bins=150)
    res = read_result(tmp_path / "out")
    q, intensity = res["q_inv_angstrom"], res["intensity"]
    inside = (q > 2.0 / radius) & (q < 6.0 / radius)  # around the first minimum, qR = 4.4934
    lowest = np.argmin(intensity[inside])
    assert 0 < lowest < inside.sum() - 1  # a real minimum, not the edge of the window
    q_min_found = q[inside][lowest]
    bin_width = q[1] - q[0]
    assert abs(q_min_found - 4.493409457909064 / radius) <= 1.5 * bin_width


# -- outputs ----------------------------------------------------------------------------


def test_outputs_layout_units_csv_and_summary(wide_file, wide_result):
    path, truth = wide_file
    summary, res, out = wide_result
    n = 200
    assert res["q_inv_angstrom"].shape == res["intensity"].shape == res["intensity_err"].shape == (n,)
    assert res["pixels_per_bin"].shape == (n,) and res["pixels_per_bin"].sum() == HEIGHT * WIDTH
    assert res["q_edges_inv_angstrom"].shape == (n + 1,)
    assert res["scattering_2d"].shape == (HEIGHT, WIDTH)
    with h5py.File(path) as f:
        np.testing.assert_allclose(res["scattering_2d"], f["/entry/data/data"][()].mean(axis=0), rtol=1e-6)
    with h5py.File(out / "saxs.h5") as f:
        assert f["saxs/q_inv_angstrom"].attrs["units"] == "1/angstrom"
        assert f["saxs/intensity"].attrs["units"] == "counts/pixel/frame"
    attrs = res["attrs"]
    for name, value in truth["geometry"].items():
        assert attrs[name] == pytest.approx(value), name
    assert attrs["rtlib_version"] == rtlib.__version__
    assert attrs["input_file"] == "wide.h5" and attrs["frames"] == FRAMES

    table = np.genfromtxt(out / "saxs_iq.csv", delimiter=",", names=True)
    assert table.dtype.names == ("q_inv_angstrom", "intensity", "intensity_err")
    np.testing.assert_allclose(table["q_inv_angstrom"], res["q_inv_angstrom"], rtol=1e-9)
    np.testing.assert_allclose(table["intensity"], res["intensity"], rtol=1e-9)
    np.testing.assert_allclose(table["intensity_err"], res["intensity_err"], rtol=1e-9)

    assert json.loads(json.dumps(summary)) == summary
    assert summary["frames"] == FRAMES and summary["num_q_bins"] == n
    assert summary["q_min"] == pytest.approx(pixel_q_map(WIDE, HEIGHT, WIDTH).min())
    assert summary["q_max"] == pytest.approx(pixel_q_map(WIDE, HEIGHT, WIDTH).max())
    assert summary["mean_intensity"] == pytest.approx(float(res["scattering_2d"].mean()), rel=1e-6)
    assert not list(out.glob("*.partial"))


def test_registered_under_its_entry_point():
    assert get_workload("saxs") is workload
    assert workload.params_model is SaxsParams
    assert set(SaxsParams.model_fields) == {
        "dataset_path", "beam_center_x_px", "beam_center_y_px", "detector_distance_m",
        "pixel_size_um", "wavelength_angstrom", "num_q_bins", "frames_per_chunk",
    }


@pytest.mark.parametrize("params, named", [
    ({"wavelength_angstrom": 0}, "wavelength_angstrom"),
    ({"detector_distance_m": -1.0}, "detector_distance_m"),
    ({"pixel_size_um": float("nan")}, "pixel_size_um"),
    ({"num_q_bins": 1}, "num_q_bins"),
    ({"frames_per_chunk": 0}, "frames_per_chunk"),
    ({"q_bins": 10}, "q_bins"),
])
def test_bad_parameters_are_refused_by_name(params, named):
    with pytest.raises(ParameterError, match=named):
        workload.validate(params)


# -- geometry: from the file, from parameters, parameters win ---------------------------


def test_geometry_from_file_then_overridden_by_parameters(small_file, tmp_path):
    path, truth = small_file
    from_file = read_result_of(path, tmp_path / "file")
    for name, value in truth["geometry"].items():
        assert from_file["attrs"][name] == pytest.approx(value)
        assert from_file["attrs"][f"{name}_source"].startswith("file:/entry/instrument/")

    # The same values given as parameters: the same result.
    given = read_result_of(path, tmp_path / "given", **truth["geometry"])
    np.testing.assert_array_equal(given["intensity"], from_file["intensity"])
    assert {given["attrs"][f"{k}_source"] for k in truth["geometry"]} == {"parameter"}

    # Parameters override the file.
    far = read_result_of(path, tmp_path / "far", detector_distance_m=2 * truth["geometry"]["detector_distance_m"])
    assert far["attrs"]["detector_distance_m"] == pytest.approx(2 * truth["geometry"]["detector_distance_m"])
    assert far["attrs"]["detector_distance_m_source"] == "parameter"
    assert far["attrs"]["wavelength_angstrom_source"] == "file:/entry/instrument/monochromator/wavelength"
    assert far["q_edges_inv_angstrom"][-1] == pytest.approx(from_file["q_edges_inv_angstrom"][-1] / 2, rel=1e-3)
    moved = read_result_of(path, tmp_path / "moved", beam_center_x_px=0.0, beam_center_y_px=0.0)
    assert moved["attrs"]["beam_center_x_px"] == 0.0
    assert moved["q_edges_inv_angstrom"][-1] > 1.5 * from_file["q_edges_inv_angstrom"][-1]


def read_result_of(path, outdir, **params):
    run_saxs([path], outdir, **params)
    return read_result(outdir)


def _rewrite(path: Path, key: str, value, units=None) -> None:
    with h5py.File(path, "r+") as f:
        del f[key]
        f[key] = value
        if units is not None:
            f[key].attrs["units"] = units


def test_file_values_are_converted_by_their_units(small_file, tmp_path):
    path, truth = small_file
    g = truth["geometry"]
    other = tmp_path / "units.h5"
    other.write_bytes(path.read_bytes())
    pixel_m = g["pixel_size_um"] * 1e-6
    _rewrite(other, "/entry/instrument/detector/distance", g["detector_distance_m"] * 1000, "mm")
    _rewrite(other, "/entry/instrument/detector/x_pixel_size", g["pixel_size_um"], "um")
    _rewrite(other, "/entry/instrument/detector/y_pixel_size", g["pixel_size_um"], "µm")
    _rewrite(other, "/entry/instrument/monochromator/wavelength", g["wavelength_angstrom"] / 10, "nm")
    _rewrite(other, "/entry/instrument/detector/beam_center_x", g["beam_center_x_px"] * pixel_m * 1000, "mm")
    _rewrite(other, "/entry/instrument/detector/beam_center_y", g["beam_center_y_px"])  # no units: pixels
    converted = read_result_of(other, tmp_path / "converted")
    reference = read_result_of(path, tmp_path / "reference")
    for name, value in g.items():
        assert converted["attrs"][name] == pytest.approx(value, rel=1e-9), name
    np.testing.assert_allclose(converted["intensity"], reference["intensity"], rtol=1e-9)


def test_unknown_unit_is_named(small_file, tmp_path):
    path, _ = small_file
    other = tmp_path / "furlong.h5"
    other.write_bytes(path.read_bytes())
    _rewrite(other, "/entry/instrument/detector/distance", 1.0, "furlong")
    with pytest.raises(InputDataError) as info:
        run_saxs([other], tmp_path / "out")
    message = str(info.value)
    assert "/entry/instrument/detector/distance" in message and "'furlong'" in message
    assert "detector_distance_m" in message and str(other) in message


def test_missing_geometry_names_the_parameter_and_the_file_key(small_file, tmp_path):
    path, _ = small_file
    other = tmp_path / "nowavelength.h5"
    other.write_bytes(path.read_bytes())
    with h5py.File(other, "r+") as f:
        del f["/entry/instrument/monochromator"]
    with pytest.raises(ParameterError) as info:
        run_saxs([other], tmp_path / "out")
    message = str(info.value)
    assert "wavelength_angstrom was not given" in message
    assert "/entry/instrument/monochromator/wavelength" in message and str(other) in message
    # Given as a parameter, the file's lack of it does not matter.
    assert run_saxs([other], tmp_path / "ok", wavelength_angstrom=1.0)["frames"] == 10


def test_non_square_pixels_are_refused_unless_a_size_is_given(small_file, tmp_path):
    path, truth = small_file
    other = tmp_path / "rect.h5"
    other.write_bytes(path.read_bytes())
    _rewrite(other, "/entry/instrument/detector/y_pixel_size", 2 * truth["geometry"]["pixel_size_um"] * 1e-6, "m")
    with pytest.raises(InputDataError, match="not square"):
        run_saxs([other], tmp_path / "out")
    assert run_saxs([other], tmp_path / "ok", pixel_size_um=75.0)["frames"] == 10


# -- streaming --------------------------------------------------------------------------


def test_chunked_streaming_equals_reading_all_frames_at_once(small_file, tmp_path):
    path, _ = small_file
    calls: list[tuple[float, str]] = []
    chunked = read_result_of_with_progress(path, tmp_path / "chunked", calls, frames_per_chunk=3)
    whole = read_result_of(path, tmp_path / "whole", frames_per_chunk=10)
    # Integer counts sum exactly in float64, so chunking changes nothing, not even the last bit.
    for name in ("intensity", "intensity_err", "scattering_2d", "pixels_per_bin", "q_inv_angstrom"):
        np.testing.assert_array_equal(chunked[name], whole[name], err_msg=name)
    # One progress report per chunk (10 frames in chunks of 3: 4), plus start and end.
    fractions = [f for f, _ in calls]
    assert len(fractions) == 4 + 2
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert any("10/10" in m for _, m in calls)


def read_result_of_with_progress(path, outdir, calls, **params):
    run_saxs([path], outdir, progress=calls, **params)
    return read_result(outdir)


@pytest.mark.parametrize("compression", ["gzip", "lz4", "bslz4"])
def test_compressed_file_gives_the_same_result(small_file, tmp_path, compression):
    path, _ = small_file
    packed = tmp_path / f"{compression}.h5"
    write_detector_file(packed, frames=10, height=40, width=48, seed=2, compression=compression)
    a = read_result_of(packed, tmp_path / "packed", frames_per_chunk=4)
    b = read_result_of(path, tmp_path / "plain", frames_per_chunk=4)
    np.testing.assert_array_equal(a["intensity"], b["intensity"])
    np.testing.assert_array_equal(a["scattering_2d"], b["scattering_2d"])


def test_single_frame_falls_back_to_the_spread_around_the_ring(tmp_path):
    path = tmp_path / "one.h5"
    write_detector_file(path, frames=1, height=64, width=64, seed=4)
    summary = run_saxs([path], tmp_path / "out", num_q_bins=20)
    res = read_result(tmp_path / "out")
    assert summary["frames"] == 1
    assert np.all(np.isfinite(res["intensity_err"][res["pixels_per_bin"] > 1]))
    assert np.all(res["intensity_err"][res["pixels_per_bin"] > 1] > 0)


# -- choosing the input -----------------------------------------------------------------


def test_first_hdf5_input_is_reduced_and_the_rest_reported(small_file, tmp_path):
    path, _ = small_file
    notes = tmp_path / "notes.txt"
    notes.write_text("beamline log")
    summary = run_saxs([notes, path, path.with_name("other.h5")], tmp_path / "out")
    assert summary["input"] == path.name
    assert summary["ignored_inputs"] == ["notes.txt", "other.h5"]


def test_hdf5_without_a_known_suffix_is_found_by_content(small_file, tmp_path):
    path, _ = small_file
    cxi = tmp_path / "scan.cxi"
    cxi.write_bytes(path.read_bytes())
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    assert run_saxs([notes, cxi], tmp_path / "out")["input"] == "scan.cxi"


# -- bad input --------------------------------------------------------------------------


def _expect_input_error(inputs, outdir, *parts, **params) -> str:
    with pytest.raises(InputDataError) as info:
        run_saxs(inputs, outdir, **params)
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    assert not (outdir / "saxs.h5").exists()
    return message


def test_missing_file(tmp_path):
    missing = tmp_path / "gone.h5"
    _expect_input_error([missing], tmp_path / "out", str(missing), "does not exist")


def test_not_an_hdf5_file(tmp_path):
    text = tmp_path / "scan.h5"
    text.write_text("this is a TIFF, honest\n" * 100)
    _expect_input_error([text], tmp_path / "out", str(text), "not an HDF5 file", "Re-transfer")


def test_truncated_file(small_file, tmp_path):
    path, _ = small_file
    cut = tmp_path / "cut.h5"
    cut.write_bytes(path.read_bytes())
    corrupt_file(cut, "truncate", keep_fraction=0.6)
    _expect_input_error([cut], tmp_path / "out", str(cut), "is truncated", "interrupted transfer")


def test_garbage_header(small_file, tmp_path):
    path, _ = small_file
    bad = tmp_path / "bad.h5"
    bad.write_bytes(path.read_bytes())
    corrupt_file(bad, "garbage")
    _expect_input_error([bad], tmp_path / "out", str(bad), "not an HDF5 file")


def test_corrupt_compressed_frames_fail_at_the_chunk_that_holds_them(tmp_path):
    path = tmp_path / "rot.h5"
    write_detector_file(path, frames=12, height=32, width=32, seed=1, compression="gzip")
    with h5py.File(path, "r") as f:
        info = f["/entry/data/data"].id.get_chunk_info(5)  # the chunk of frame 5
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    _expect_input_error([path], tmp_path / "out", str(path), "reading frames 4..7", "damaged", frames_per_chunk=4)


def test_missing_dataset_path_lists_what_the_file_has(small_file, tmp_path):
    path, _ = small_file
    message = _expect_input_error(
        [path], tmp_path / "out", str(path), "no dataset /entry/data/frames",
        "nearest existing group /entry/data holds data", "top level holds entry", "/entry/data/data",
        dataset_path="/entry/data/frames",
    )
    assert "Set dataset_path" in message


def test_dataset_path_naming_a_group(small_file, tmp_path):
    path, _ = small_file
    _expect_input_error([path], tmp_path / "out", "/entry/instrument is a group", "detector", "monochromator",
                        dataset_path="/entry/instrument")


def test_wrong_shape(tmp_path):
    path = tmp_path / "image.h5"
    with h5py.File(path, "w") as f:
        f["/entry/data/data"] = np.ones((64, 48), dtype=np.uint16)
    _expect_input_error([path], tmp_path / "out", str(path), "shape (64, 48)", "3-D stack (frames, y, x)",
                        "has no 3-D dataset")


def test_empty_frame_stack(tmp_path):
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", shape=(0, 16, 16), dtype=np.uint16)
    _expect_input_error([path], tmp_path / "out", str(path), "is empty", "(0, 16, 16)")


def test_no_hdf5_among_the_inputs(tmp_path):
    files = [tmp_path / "a.txt", tmp_path / "b.tif"]
    for p in files:
        p.write_text("not hdf5")
    _expect_input_error(files, tmp_path / "out", "no input HDF5 file", "a.txt", "b.tif", ".h5")
    _expect_input_error([], tmp_path / "out2", "no input files")
