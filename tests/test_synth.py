"""Synthetic detector files: layout, ground truth, noise, size, compression and corruption."""

from __future__ import annotations

import json
import math
import time

import h5py
import numpy as np
import pytest

from rtlib.synth import detector
from rtlib.synth.detector import (
    Geometry,
    corrupt_file,
    expected_image,
    expected_intensity,
    frames_for_size,
    read_ground_truth,
    write_detector_file,
)
from rtlib.synth.geometry import pixel_q_map
from rtlib.synth.scattering import form_factor

GEOMETRY = Geometry(beam_center_x_px=20.5, beam_center_y_px=30.25, detector_distance_m=2.5,
                    pixel_size_um=172.0, wavelength_angstrom=1.54)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "scan.h5"
    truth = write_detector_file(path, frames=64, height=48, width=40, geometry=GEOMETRY, seed=7,
                                form="sphere", radius_angstrom=120.0, scale_counts=800.0, background_counts=3.0)
    return path, truth


# -- the analytic forms ----------------------------------------------------------------


def test_guinier_law_values():
    rg = 40.0
    assert expected_intensity(0.0, form="guinier", radius_angstrom=rg, scale_counts=100, background_counts=2) == pytest.approx(102)
    # At q Rg = sqrt(3) the Guinier factor is exactly 1/e.
    q = math.sqrt(3) / rg
    assert expected_intensity(q, form="guinier", radius_angstrom=rg, scale_counts=100, background_counts=2) == pytest.approx(100 / math.e + 2)


def test_sphere_form_factor_zero_and_small_q_series():
    radius = 50.0
    # The first zero of the sphere amplitude is at qR = tan(qR), qR = 4.493409...
    assert form_factor(4.493409457909064 / radius, "sphere", radius) == pytest.approx(0.0, abs=1e-20)
    assert form_factor(0.0, "sphere", radius) == pytest.approx(1.0)
    # The series used at small qR joins the closed form without a step.
    below, above = form_factor(np.array([0.999e-2, 1.001e-2]) / radius, "sphere", radius)
    assert below == pytest.approx(above, rel=1e-5)
    assert below < 1.0


def test_unknown_form_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown scattering form 'cylinder'"):
        write_detector_file(tmp_path / "x.h5", frames=1, height=4, width=4, form="cylinder")


# -- q of each pixel -------------------------------------------------------------------


def test_pixel_q_is_exact_not_small_angle():
    # 1000 pixels of 100 um at 0.1 m: r = distance, so 2θ = 45 degrees exactly.
    geometry = Geometry(beam_center_x_px=0, beam_center_y_px=0, detector_distance_m=0.1,
                        pixel_size_um=100.0, wavelength_angstrom=2.0)
    q = pixel_q_map(geometry, 1, 1001)
    assert q[0, 0] == 0.0
    assert q[0, 1000] == pytest.approx(4 * math.pi * math.sin(math.radians(22.5)) / 2.0, rel=1e-12)
    small_angle = 4 * math.pi * (0.5 * 1.0) / 2.0
    assert abs(q[0, 1000] - small_angle) / small_angle > 0.2


def test_geometry_rejects_non_physical_values():
    with pytest.raises(ValueError, match="detector_distance_m"):
        Geometry(beam_center_x_px=1, beam_center_y_px=1, detector_distance_m=0)
    with pytest.raises(ValueError, match="wavelength_angstrom"):
        Geometry(beam_center_x_px=1, beam_center_y_px=1, wavelength_angstrom=-1)


# -- the file ---------------------------------------------------------------------------


def test_layout_units_and_ground_truth(small_file):
    path, truth = small_file
    assert truth["geometry"] == GEOMETRY.to_dict()
    assert truth["model"] == {"form": "sphere", "radius_angstrom": 120.0, "scale_counts": 800.0, "background_counts": 3.0}
    assert truth["shape"] == [64, 48, 40] and truth["frames"] == 64 and truth["dtype"] == "uint16"
    assert truth["file_bytes"] == path.stat().st_size
    json.dumps(truth)  # the CLI prints it as JSON
    q = pixel_q_map(GEOMETRY, 48, 40)
    assert truth["q_range_inv_angstrom"] == [pytest.approx(q.min()), pytest.approx(q.max())]

    with h5py.File(path, "r") as f:
        data = f["/entry/data/data"]
        assert data.shape == (64, 48, 40) and data.dtype == np.uint16
        assert data.chunks == (1, 48, 40)  # one frame per chunk, as detectors write
        det = f["/entry/instrument/detector"]
        stored = {
            "beam_center_x": (20.5, "pixel"),
            "beam_center_y": (30.25, "pixel"),
            "distance": (2.5, "m"),
            "x_pixel_size": (172e-6, "m"),
            "y_pixel_size": (172e-6, "m"),
        }
        for key, (value, units) in stored.items():
            assert det[key][()] == pytest.approx(value, rel=1e-12), key
            assert det[key].attrs["units"] == units, key
        wavelength = f["/entry/instrument/monochromator/wavelength"]
        assert wavelength[()] == pytest.approx(1.54) and wavelength.attrs["units"] == "angstrom"
        assert f["/entry"].attrs["NX_class"] == "NXentry"
        assert f["/entry/instrument/detector"].attrs["NX_class"] == "NXdetector"

    back = read_ground_truth(path)
    assert back["geometry"] == pytest.approx(truth["geometry"])
    assert back["model"] == truth["model"] and back["frames"] == 64


def test_frames_are_independent_poisson_draws_around_the_pattern(small_file):
    path, truth = small_file
    with h5py.File(path, "r") as f:
        frames = f["/entry/data/data"][()].astype(np.float64)
    mean_image = expected_image(Geometry(**truth["geometry"]), 48, 40, **truth["model"])
    # The average converges to the pattern: the z-score of each pixel's mean is ~N(0, 1).
    z = (frames.mean(axis=0) - mean_image) / np.sqrt(mean_image / frames.shape[0])
    assert abs(z.mean()) < 0.1 and 0.9 < z.std() < 1.1
    # Poisson: variance equals mean, pixel by pixel (averaged over the detector).
    dispersion = frames.var(axis=0, ddof=1) / mean_image
    assert dispersion.mean() == pytest.approx(1.0, abs=0.05)
    # No two frames are copies of each other.
    assert not np.array_equal(frames[0], frames[1])
    assert abs(np.corrcoef((frames[0] - mean_image).ravel(), (frames[1] - mean_image).ravel())[0, 1]) < 0.1


def test_same_seed_same_file_whatever_the_threads(tmp_path, monkeypatch):
    kwargs = dict(frames=20, height=16, width=16, seed=3)
    write_detector_file(tmp_path / "a.h5", **kwargs)
    monkeypatch.setattr(detector, "_WORKERS", 1)
    write_detector_file(tmp_path / "b.h5", **kwargs)
    write_detector_file(tmp_path / "c.h5", **{**kwargs, "seed": 4})
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b, h5py.File(tmp_path / "c.h5") as c:
        np.testing.assert_array_equal(a["/entry/data/data"][()], b["/entry/data/data"][()])
        assert not np.array_equal(a["/entry/data/data"][()], c["/entry/data/data"][()])


def test_frames_for_size_gives_a_file_near_the_requested_size_quickly(tmp_path):
    assert frames_for_size(10 * 256 * 256 * 2, 256, 256, "uint16") == 10
    assert frames_for_size(10 * 256 * 256 * 4, 256, 256, "uint32") == 10
    assert frames_for_size(1, 256, 256) == 1  # never an empty file
    size = 50_000_000
    frames = frames_for_size(size, 256, 256, "uint16")
    started = time.perf_counter()
    write_detector_file(tmp_path / "big.h5", frames=frames)
    elapsed = time.perf_counter() - started
    assert abs(tmp_path.joinpath("big.h5").stat().st_size - size) / size < 0.02
    assert elapsed < 10, f"writing 50 MB took {elapsed:.1f} s"


@pytest.mark.parametrize("compression, filter_id", [("gzip", 1), ("lz4", 32004), ("bslz4", 32008)])
def test_compressed_file_holds_the_same_frames(tmp_path, compression, filter_id):
    kwargs = dict(frames=6, height=32, width=24, seed=5)
    write_detector_file(tmp_path / "plain.h5", **kwargs)
    truth = write_detector_file(tmp_path / "packed.h5", compression=compression, **kwargs)
    assert truth["compression"] == compression
    with h5py.File(tmp_path / "plain.h5") as plain, h5py.File(tmp_path / "packed.h5") as packed:
        dset = packed["/entry/data/data"]
        assert filter_id in [dset.id.get_create_plist().get_filter(i)[0] for i in range(dset.id.get_create_plist().get_nfilters())]
        np.testing.assert_array_equal(plain["/entry/data/data"][()], dset[()])


def test_counts_that_would_saturate_the_pixel_type_are_refused(tmp_path):
    with pytest.raises(ValueError, match="saturate uint16.*uint32"):
        write_detector_file(tmp_path / "x.h5", frames=1, height=8, width=8, scale_counts=70000)
    truth = write_detector_file(tmp_path / "y.h5", frames=1, height=8, width=8, scale_counts=70000, dtype="uint32")
    assert truth["dtype"] == "uint32"


def test_corrupt_file_truncate_and_garbage(tmp_path):
    for mode in ("truncate", "garbage"):
        path = tmp_path / f"{mode}.h5"
        write_detector_file(path, frames=4, height=32, width=32)
        size = path.stat().st_size
        corrupt_file(path, mode)
        if mode == "truncate":
            assert path.stat().st_size == size // 2
        else:
            assert path.stat().st_size == size
            assert not h5py.is_hdf5(path)
        with pytest.raises(OSError):
            h5py.File(path, "r")
    with pytest.raises(ValueError, match="unknown corruption mode"):
        corrupt_file(tmp_path / "truncate.h5", "shred")
