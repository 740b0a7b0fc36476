"""xpcs.h5 opened by APS 8-ID-I's own viewer, pyXPCSViewer (PyPI ``xpcs-viewer``): its reader, its q-map loader,
its C2 reader and its g2 fit, on synthetic speckle of known τ."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # the package imports Qt; no display here

from pyxpcsviewer.core.file_io.ftype_utils import get_ftype  # noqa: E402
from pyxpcsviewer.core.xpcs_file import XpcsFile  # noqa: E402

from rtlib.synth.xpcs import write_xpcs_file  # noqa: E402
from rtlib.workloads.xpcs import workload  # noqa: E402

FRAMES, SIZE, BETA = 400, 64, 0.2
TAU_S = [0.05, 0.02, 0.008]  # three rings, slowest innermost
# pyXPCSViewer's single exponential: a·exp(-2 (t/b)^c) + d, (a contrast, b τ, c stretching, d baseline)
VIEWER_BOUNDS = [[0.01, 1e-4, 1.0, 0.9], [1.0, 1.0, 1.0, 1.1]]
VIEWER_FIT_FLAG = [True, True, False, True]


@pytest.fixture(scope="module")
def speckle(tmp_path_factory):
    d = tmp_path_factory.mktemp("viewer")
    truth = write_xpcs_file(d / "raw.h5", frames=FRAMES, height=SIZE, width=SIZE, beta=BETA, seed=11, num_q_rings=3,
                            tau_min_s=min(TAU_S), tau_max_s=max(TAU_S), qmap_path=d / "qmap.h5")
    return d / "raw.h5", d / "qmap.h5", truth


def _run(inputs, outdir: Path, **params) -> tuple[dict, Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    summary = workload.run(workload.validate(params), list(inputs), outdir, lambda f, m: None)
    return summary, outdir / "xpcs.h5"


@pytest.fixture(scope="module")
def both(speckle, tmp_path_factory):
    raw, qmap, _ = speckle
    return _run([raw, qmap], tmp_path_factory.mktemp("both"), qmap_file=str(qmap), mode="both",
                frames_per_chunk=FRAMES // 10)


def test_multitau_result_opens_in_pyxpcsviewer_and_its_fit_finds_the_true_tau(both, speckle):
    summary, path = both
    truth = speckle[2]
    assert get_ftype(str(path)) == "nexus"  # its file chooser lists it
    xf = XpcsFile(str(path))
    assert set(xf.atype) == {"Multitau", "Twotime"}
    with h5py.File(path, "r") as f:
        ours = {k: f[f"/xpcs/{k}"][()] for k in ("multitau/normalized_g2", "multitau/delay_s",
                                                   "temporal_mean/scattering_1d", "temporal_mean/scattering_2d")}
    np.testing.assert_array_equal(xf.g2, ours["multitau/normalized_g2"])
    np.testing.assert_allclose(xf.t_el, ours["multitau/delay_s"])  # its delays in seconds are ours
    assert xf.t0 == pytest.approx(truth["frame_time_s"])
    np.testing.assert_array_equal(xf.saxs_2d, ours["temporal_mean/scattering_2d"][0])
    np.testing.assert_allclose(xf.saxs_1d["Iq"][0], ours["temporal_mean/scattering_1d"][0])
    np.testing.assert_allclose(xf.saxs_1d["q"], xf.sqlist)
    assert xf.Iqp.shape == (10, ours["temporal_mean/scattering_1d"].shape[1])  # I(q) stability, ten segments (one a chunk here)
    # the segments are parts of the same steady beam: each within 10 % of the whole record's I(q)
    np.testing.assert_allclose(xf.Iqp, np.broadcast_to(xf.saxs_1d["Iq"], xf.Iqp.shape), rtol=0.1)
    assert xf.Int_t.shape == (2, FRAMES)
    # q per g2 column, and its labels
    q, t_el, g2, _, labels = xf.get_g2_data()
    np.testing.assert_allclose(q, summary["q_inv_angstrom"])
    assert g2.shape[1] == len(labels) == 3 and labels[0].startswith("qbin=1, q=")
    # its own g2 fit runs on our g2 and error bars, and finds the synthetic τ and β
    fit = xf.fit_g2(bounds=VIEWER_BOUNDS, fit_flag=VIEWER_FIT_FLAG)
    contrast, tau = fit["fit_val"][:, 0, 0], fit["fit_val"][:, 0, 1]
    np.testing.assert_allclose(tau, truth["tau_s"], rtol=0.15)
    np.testing.assert_allclose(contrast, BETA, rtol=0.2)
    # the qmap geometry it reads gives the q it computes per pixel: the same q as ours at the ROI centres
    assert xf.qmap.qmap["q"][xf.dqmap > 0].min() == pytest.approx(min(q) * 0.5, rel=0.5)
    assert xf.get_detector_extent()[1] > 0
    # its metadata view: the geometry and times under /entry/instrument, in 8-ID-I's places and units
    detector = xf.get_hdf_info()["/entry/instrument"]["detector_1"]
    assert detector["frame_time (s)"] == pytest.approx(truth["frame_time_s"])
    assert detector["distance (m)"] == pytest.approx(truth["geometry"]["detector_distance_m"])
    assert detector["x_pixel_size (m)"] == pytest.approx(truth["geometry"]["pixel_size_um"] * 1e-6)
    assert xf.X_energy == pytest.approx(12.398419843320026 / truth["geometry"]["wavelength_angstrom"])


def test_twotime_result_opens_in_pyxpcsviewer(both, speckle):
    _, path = both
    with h5py.File(speckle[0], "r") as f:
        frames = f["/entry/data/data"][()].astype(float)
    xf = XpcsFile(str(path))
    assert list(xf.c2_processed_bins) == [1, 2, 3]
    assert xf.get_twotime_qbin_labels()[1].startswith("qbin=2, q=")
    for selection in range(3):
        c2 = xf.get_twotime_c2(selection=selection, correct_diag=False, max_size=FRAMES)
        assert c2["c2_mat"].shape == (FRAMES, FRAMES)
        assert c2["delta_t"] == pytest.approx(1e-3)
        # the viewer's C2 (upper triangle + its transpose, diagonal halved) is the full C(t1, t2), computed here
        # directly from the frames of the ROI
        with h5py.File(path, "r") as f:
            roi = f["/xpcs/qmap/dynamic_roi_map"][()] == f["/xpcs/qmap/dynamic_roi_labels"][selection]
        pixels = frames.reshape(FRAMES, -1)[:, roi.ravel()]
        mean = pixels.mean(axis=1)
        expected = (pixels @ pixels.T) / pixels.shape[1] / np.outer(mean, mean)
        np.testing.assert_allclose(c2["c2_mat"], expected, rtol=1e-9)
        # its g2 from C2's diagonals (whole record and five segments) decays from 1 + β to 1
        g2_full, g2_partial = c2["g2_full"], c2["g2_partial"]
        assert g2_full.shape == (FRAMES // 2,) and g2_partial.shape == (5, FRAMES // 5 - 1)
        assert g2_full[0] == pytest.approx(1 + BETA * np.exp(-2e-3 / TAU_S[selection]), abs=0.04)
        assert g2_full[-1] == pytest.approx(1.0, abs=0.03)
    # and through its stream reader, every map, named by ROI column
    idx, stream = xf.get_twotime_stream(max_size=64)
    assert idx == ["c2_00001", "c2_00002", "c2_00003"] and [k for k, _ in stream] == [1, 2, 3]


def test_computed_q_phi_map_opens_as_a_grid(speckle, tmp_path):
    """A q-map computed from the geometry (q bins x φ sectors) is written as the viewer's (q, φ) grid."""
    raw, _, _ = speckle
    summary, path = _run([raw], tmp_path / "grid", num_dynamic_q_bins=3, num_phi_bins=2, num_static_q_bins=12)
    xf = XpcsFile(str(path))
    assert list(xf.dynamic_num_pts) == [3, 2] and list(xf.static_num_pts) == [12, 2]
    assert xf.map_names == ["q", "phi"]
    q_of_column = np.array(summary["q_inv_angstrom"])
    np.testing.assert_allclose(xf.dqlist, q_of_column.reshape(3, 2).mean(axis=1))
    np.testing.assert_allclose(xf.dplist, [90.0, 270.0])
    q, _, g2, _, labels = xf.get_g2_data()
    assert g2.shape[1] == len(q) == len(labels) == 6
    assert "φ=270.0" in labels[1]
    iq = xf.saxs_1d["Iq"]  # the viewer's I(q): the mean over the sectors, then each sector
    assert iq.shape == (3, 12)
    np.testing.assert_allclose(iq[0], iq[1:].mean(axis=0))
    with h5py.File(path, "r") as f:
        np.testing.assert_allclose(iq[1:].T.ravel(), f["/xpcs/temporal_mean/scattering_1d"][0])
