"""The xpcs workload against synthetic speckle of known τ, against scikit-beam, streaming, two-time and bad input."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
from skbeam.core.correlation import multi_tau_auto_corr

from rtlib.errors import InputDataError, ParameterError
from rtlib.synth.detector import corrupt_file
from rtlib.synth.xpcs import expected_g2, write_xpcs_file
from rtlib.workloads import get_workload
from rtlib.workloads.xpcs import workload
from rtlib.workloads.xpcs.multitau import MultiTau, levels_for
from rtlib.workloads.xpcs.twotime import diagonal_average

FRAMES, SIZE = 1000, 128
BETA = 0.2


def run_xpcs(inputs, outdir: Path, calls=None, **params) -> dict:
    outdir.mkdir(parents=True, exist_ok=True)
    calls = [] if calls is None else calls
    return workload.run(workload.validate(params), [Path(p) for p in inputs], outdir, lambda f, m: calls.append((f, m)))


def read_result(outdir: Path) -> dict:
    out = {}
    with h5py.File(outdir / "xpcs.h5", "r") as f:
        f["xpcs"].visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        out["attrs"] = dict(f["xpcs"].attrs)
    return out


@pytest.fixture(scope="module")
def speckle(tmp_path_factory):
    d = tmp_path_factory.mktemp("xpcs")
    truth = write_xpcs_file(d / "raw.h5", frames=FRAMES, height=SIZE, width=SIZE, beta=BETA, seed=7,
                            tau_min_s=0.003, tau_max_s=0.1, qmap_path=d / "qmap.h5")
    return d / "raw.h5", d / "qmap.h5", truth


@pytest.fixture(scope="module")
def both_result(speckle, tmp_path_factory):
    raw, qmap, _ = speckle
    out = tmp_path_factory.mktemp("both")
    summary = run_xpcs([raw, qmap], out, qmap_file=qmap.name, mode="both", g2_normalization="roi")
    return summary, read_result(out)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    write_xpcs_file(d / "raw.h5", frames=300, height=40, width=48, num_q_rings=3, beamstop_radius_px=2,
                    tau_min_s=0.003, tau_max_s=0.02, seed=3, qmap_path=d / "qmap.h5")
    return d / "raw.h5", d / "qmap.h5"


# -- known τ -----------------------------------------------------------------------------


@pytest.mark.parametrize("normalization", ["static", "roi"])
def test_fitted_tau_beta_and_baseline_match_the_truth(speckle, tmp_path, normalization):
    raw, qmap, truth = speckle
    summary = run_xpcs([raw, qmap], tmp_path, qmap_file=str(qmap), g2_normalization=normalization)
    record_s = FRAMES * truth["frame_time_s"]
    checked = 0
    for k, tau in enumerate(truth["tau_s"]):
        if tau * 5 > record_s:
            continue
        checked += 1
        assert summary["tau_s"][k] == pytest.approx(tau, rel=0.05), f"ROI {k + 1}"
        assert summary["beta"][k] == pytest.approx(BETA, rel=0.1), f"ROI {k + 1}"
        assert summary["baseline"][k] == pytest.approx(1.0, abs=0.01), f"ROI {k + 1}"
        # The error bar is honest: the truth lies within 5 of them.
        assert abs(summary["tau_s"][k] - tau) < 5 * summary["tau_err_s"][k] + 0.01 * tau
    assert checked == len(truth["tau_s"])
    assert summary["q_inv_angstrom"] == pytest.approx(truth["q_inv_angstrom"])


def test_per_pixel_normalisation_is_biased_low_for_slow_rois(speckle, tmp_path):
    """Why ``static`` is the default: each pixel's own mean over a record ten τ long pulls g2 and τ down."""
    raw, qmap, truth = speckle
    own = run_xpcs([raw, qmap], tmp_path / "pixel", qmap_file=str(qmap), g2_normalization="pixel")
    smoothed = run_xpcs([raw, qmap], tmp_path / "static", qmap_file=str(qmap), g2_normalization="static")
    assert own["tau_s"][0] < 0.93 * truth["tau_s"][0] < smoothed["tau_s"][0]
    assert own["tau_s"][-1] == pytest.approx(truth["tau_s"][-1], rel=0.05)  # fast ROIs: no difference


def test_g2_curve_follows_the_model(both_result, speckle):
    _, res = both_result
    truth = speckle[2]
    delay = res["multitau/delay_list"]
    for k, tau in enumerate(truth["tau_s"]):
        g2 = res["multitau/normalized_g2"][:, k]
        err = res["multitau/normalized_g2_err"][:, k]
        model = expected_g2(delay, tau, BETA)
        early = delay < 3 * tau
        # ROI normalisation lifts the baseline a little where the intensity varies across the ring.
        assert np.median(np.abs(g2[early] - model[early])) < 0.01
        assert np.all(err[:10] > 0) and np.all(err[:10] < 0.02)


def test_results_have_the_aps_layout(both_result, speckle):
    summary, res = both_result
    rois = len(speckle[2]["tau_s"])
    delays = summary["delays"]
    assert res["multitau/normalized_g2"].shape == res["multitau/normalized_g2_err"].shape == (delays, rois)
    assert res["multitau/delay_list"][0] == pytest.approx(1e-3) and np.all(np.diff(res["multitau/delay_list"]) > 0)
    assert res["multitau/delay_list"][-1] < FRAMES * 1e-3
    assert res["temporal_mean/scattering_2d"].shape == (1, SIZE, SIZE)
    assert res["temporal_mean/scattering_1d"].shape == (1, 4 * rois)
    assert res["spatial_mean/intensity_vs_time"].shape == (2, FRAMES)
    assert res["spatial_mean/intensity_vs_time"][0, 1] == pytest.approx(1e-3)
    for name in ("dynamic_roi_map", "static_roi_map", "mask"):
        assert res[f"qmap/{name}"].shape == (SIZE, SIZE)
    assert list(res["qmap/dynamic_index_mapping"]) == list(range(1, rois + 1))
    assert res["multitau/fit/tau"].shape == (rois,) and res["multitau/fit/fit_ok"].all()
    assert sorted(k for k in res if k.startswith("twotime/correlation_map/")) == [
        f"twotime/correlation_map/c2_{i:05d}" for i in range(1, rois + 1)]
    assert res["twotime/correlation_map/c2_00001"].shape == (FRAMES, FRAMES)
    assert res["attrs"]["rtlib_version"] and '"mode": "both"' in res["attrs"]["parameters"]
    # Static: the beam stop is dark and masked; the 1-D profile falls with q as the synthetic model does.
    s1 = res["temporal_mean/scattering_1d"][0]
    assert s1[0] > 2.5 * s1[-1]


def test_qmap_computed_from_geometry(speckle, tmp_path):
    raw, _, truth = speckle
    summary = run_xpcs([raw], tmp_path, num_dynamic_q_bins=4, num_phi_bins=2, num_static_q_bins=20)
    res = read_result(tmp_path)
    assert summary["qmap"] == "geometry" and summary["dynamic_rois"] == 8
    assert list(res["qmap/dynamic_index_mapping"]) == list(range(1, 9))
    q = np.array(summary["q_inv_angstrom"])
    assert np.all(np.diff(q[::2]) > 0) and np.allclose(q[::2], q[1::2], rtol=0.05)
    tau = np.array(summary["tau_s"])
    # The innermost bin holds the slowest rings, the outer bins (mostly outside the rings) the fastest τ.
    assert tau[0] > 2 * tau[-1]
    assert res["multitau/normalized_g2"].shape[1] == 8


# -- independent reference ---------------------------------------------------------------


def test_g2_equals_scikit_beam_multi_tau(small, tmp_path):
    raw, qmap = small
    summary = run_xpcs([raw, qmap], tmp_path, qmap_file=str(qmap), g2_normalization="roi", delays_per_level=8,
                       frames_per_chunk=13)
    res = read_result(tmp_path)
    with h5py.File(raw, "r") as f:
        frames = f["/entry/data/data"][()]
    labels = res["qmap/dynamic_roi_map"]
    levels = levels_for(len(frames), 8)
    g2_ref, lags = multi_tau_auto_corr(levels, 8, labels, frames)
    ours = res["multitau/normalized_g2"]
    # scikit-beam also reports lag 0; every other lag is on the same grid.
    assert np.array_equal(np.round(res["multitau/delay_list"] / 1e-3).astype(int), lags[1:1 + len(ours)])
    np.testing.assert_allclose(ours, g2_ref[1:1 + len(ours)], rtol=1e-12, atol=0)
    assert summary["delays"] == len(ours) == len(lags) - 1


def test_per_pixel_normalisation_against_a_direct_numpy_sum():
    rng = np.random.default_rng(5)
    frames = rng.poisson(1.5, (150, 30)).astype(float)
    roi = np.repeat([0, 1, 2], 10)
    mt = MultiTau(roi, 3, 150, delays_per_level=4)
    for s in range(0, 150, 11):
        mt.add(frames[s:s + 11])
    res = mt.result("pixel")
    for row, lag in enumerate(res.delay_frames):
        level = int(np.log2(lag // 2)) if lag > 3 else 0
        width = 2**level
        n = len(frames) // width
        binned = frames[: n * width].reshape(n, width, -1).sum(axis=1)
        d = lag // width
        past, future = binned[: n - d], binned[d:]
        per_pixel = (past * future).mean(0) / (past.mean(0) * future.mean(0))
        expected = [per_pixel[roi == r].mean() for r in range(3)]
        np.testing.assert_allclose(res.g2[row], expected, rtol=1e-12, err_msg=f"lag {lag}")
        spread = [per_pixel[roi == r].std(ddof=1) / np.sqrt(10) for r in range(3)]
        np.testing.assert_allclose(res.g2_err[row], spread, rtol=1e-9)


# -- streaming ---------------------------------------------------------------------------


def test_chunked_streaming_equals_all_in_memory(small, tmp_path):
    raw, qmap = small
    calls: list = []
    a = read_result_of(raw, qmap, tmp_path / "chunked", calls, frames_per_chunk=7)
    b = read_result_of(raw, qmap, tmp_path / "whole", None, frames_per_chunk=300)
    for name in ("multitau/normalized_g2", "multitau/normalized_g2_err", "twotime/correlation_map/c2_00002",
                 "temporal_mean/scattering_2d", "spatial_mean/intensity_vs_time"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-12, err_msg=name)
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert sum("frames" in m and "read" in m for _, m in calls) == -(-300 // 7)


def read_result_of(raw, qmap, outdir, calls, **params):
    run_xpcs([raw, qmap], outdir, calls, qmap_file=str(qmap), mode="both", twotime_frame_binning=3, **params)
    return read_result(outdir)


def test_peak_memory_is_set_by_the_chunk_not_the_record(tmp_path):
    peaks, state = {}, {}
    for frames in (256, 4096):
        raw = tmp_path / f"r{frames}.h5"
        write_xpcs_file(raw, frames=frames, height=48, width=48, seed=1)
        tracemalloc.start()
        summary = run_xpcs([raw], tmp_path / f"o{frames}", frames_per_chunk=16, num_dynamic_q_bins=4)
        peaks[frames] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        state[frames] = summary["working_memory_bytes"]
    # 16x the frames: only the extra multi-tau levels (log2 of the record) and the per-frame trace may add memory.
    growth = peaks[4096] - peaks[256]
    assert growth < 1.5 * (state[4096] - state[256]) + 8 * 4096 * 3 + 256 * 1024, (peaks, state)
    # And the peak is what the run reports as its working memory, give or take the fit and the output.
    assert peaks[4096] < 1.2 * state[4096] + 1024 * 1024, (peaks, state)


# -- two-time ----------------------------------------------------------------------------


def test_two_time_diagonal_average_agrees_with_multitau(both_result):
    _, res = both_result
    g2 = res["multitau/normalized_g2"]
    for k in range(g2.shape[1]):
        c2 = res[f"twotime/correlation_map/c2_{k + 1:05d}"]
        assert np.allclose(c2, c2.T)
        diag = diagonal_average(c2, 15)[1:]
        np.testing.assert_allclose(diag, g2[:15, k], rtol=3e-3, err_msg=f"ROI {k + 1}")


def test_two_time_frame_binning_and_roi_selection(small, tmp_path):
    raw, qmap = small
    summary = run_xpcs([raw, qmap], tmp_path, qmap_file=str(qmap), mode="twotime", twotime_rois=[2],
                       twotime_frame_binning=4)
    res = read_result(tmp_path)
    assert summary["twotime_rois"] == [2] and summary["twotime_steps"] == 75
    assert [k for k in res if k.startswith("twotime/correlation_map/")] == ["twotime/correlation_map/c2_00002"]
    assert res["twotime/config/delta_t"] == pytest.approx(4e-3)
    assert "multitau/normalized_g2" not in res
    # Binned by hand and correlated directly.
    with h5py.File(raw, "r") as f:
        frames = f["/entry/data/data"][()].astype(float)
    pixels = frames.reshape(300, -1)[:, res["qmap/dynamic_roi_map"].ravel() == 2]
    binned = pixels.reshape(75, 4, -1).sum(axis=1)
    mean = binned.mean(axis=1)
    expected = (binned @ binned.T) / binned.shape[1] / np.outer(mean, mean)
    np.testing.assert_allclose(res["twotime/correlation_map/c2_00002"], expected, rtol=1e-10)


# -- plug-in and parameters --------------------------------------------------------------


def test_registered_as_a_workload():
    assert get_workload("xpcs") is workload
    assert workload.extra_inputs(workload.validate({"qmap_file": "q.h5"})) == ["q.h5"]


@pytest.mark.parametrize("params, named", [
    ({"delays_per_level": 7}, "delays_per_level"),
    ({"mode": "fourtime"}, "mode"),
    ({"frame_time": 1.0}, "unknown parameter 'frame_time'"),
    ({"twotime_rois": [0]}, "twotime_rois"),
    ({"frame_time_s": -1}, "frame_time_s"),
])
def test_bad_parameters_are_refused_by_name(params, named):
    with pytest.raises(ParameterError, match=named):
        workload.validate(params)


def test_unknown_twotime_roi_is_named(small, tmp_path):
    raw, qmap = small
    with pytest.raises(ParameterError, match=r"twotime_rois \[9\]"):
        run_xpcs([raw, qmap], tmp_path, qmap_file=str(qmap), mode="twotime", twotime_rois=[1, 9])


# -- bad input ---------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def _expect(error, inputs, outdir: Path, *parts, **params) -> None:
    with pytest.raises(error) as info:
        run_xpcs(inputs, outdir, **params)
    for part in parts:
        assert part in str(info.value), f"{part!r} not in {info.value}"
    assert not (outdir / "xpcs.h5").exists()


def test_truncated_file(small, tmp_path):
    cut = corrupt_file(_copy(small[0], tmp_path / "cut.h5"), "truncate", keep_fraction=0.5)
    _expect(InputDataError, [cut], tmp_path / "out", str(cut), "truncated")


def test_missing_frames_dataset(small, tmp_path):
    bad = _copy(small[0], tmp_path / "bad.h5")
    with h5py.File(bad, "r+") as f:
        del f["/entry/data/data"]
    _expect(InputDataError, [bad], tmp_path / "out", "no dataset /entry/data/data")


def test_qmap_shape_mismatch(small, tmp_path):
    qmap = tmp_path / "qmap.h5"
    with h5py.File(qmap, "w") as f:
        f["/data/dynamicMap"] = np.ones((40, 40), np.int32)
        f["/data/staticMap"] = np.ones((40, 40), np.int32)
    _expect(InputDataError, [small[0], qmap], tmp_path / "out", "/data/dynamicMap has shape (40, 40)", "40 x 48",
            qmap_file=str(qmap))


def test_qmap_without_dynamic_map(small, tmp_path):
    qmap = tmp_path / "qmap.h5"
    with h5py.File(qmap, "w") as f:
        f["/data/staticMap"] = np.ones((40, 48), np.int32)
    _expect(InputDataError, [small[0], qmap], tmp_path / "out", "no /data/dynamicMap", qmap_file=str(qmap))


def test_all_zero_frames(small, tmp_path):
    zero = _copy(small[0], tmp_path / "zero.h5")
    with h5py.File(zero, "r+") as f:
        f["/entry/data/data"][...] = 0
    _expect(InputDataError, [zero], tmp_path / "out", "every one of the 300 frames is zero", num_dynamic_q_bins=3)


def test_nan_frames(small, tmp_path):
    nan = tmp_path / "nan.h5"
    with h5py.File(small[0], "r") as src, h5py.File(nan, "w") as f:
        src.copy("/entry", f)
        data = src["/entry/data/data"][()].astype(np.float32)
        data[123, 5, 6] = np.nan
        del f["/entry/data/data"]
        f["/entry/data/data"] = data
    _expect(InputDataError, [nan], tmp_path / "out", "frame 123", "NaN", num_dynamic_q_bins=3, frames_per_chunk=50)


def test_missing_frame_time_needs_the_parameter(small, tmp_path):
    bare = _copy(small[0], tmp_path / "bare.h5")
    with h5py.File(bare, "r+") as f:
        del f["/entry/instrument/detector/frame_time"], f["/entry/instrument/detector/count_time"]
    _expect(ParameterError, [bare], tmp_path / "out", "frame_time_s was not given")
    assert run_xpcs([bare], tmp_path / "ok", frame_time_s=0.002, num_dynamic_q_bins=3)["frame_time_s"] == 0.002


def test_missing_qmap_file(small, tmp_path):
    _expect(InputDataError, [small[0]], tmp_path / "out", "q-map file nowhere.h5", qmap_file="nowhere.h5")


def test_compiled_and_numpy_correlators_agree_exactly(monkeypatch):
    """The numba kernel (sparse, parallel) and the numpy einsum path sum the same integer products."""
    import rtlib.workloads.xpcs.kernels as kernels
    from rtlib.workloads.xpcs.multitau import MultiTau

    assert kernels.HAVE_NUMBA, "numba is a dependency: the fast path must be the one in use"
    rng = np.random.default_rng(5)
    frames = rng.poisson(0.3, (300, 2000)).astype(np.uint16)
    roi = rng.integers(0, 4, 2000)
    results = []
    for compiled in (True, False):
        monkeypatch.setattr(kernels, "HAVE_NUMBA", compiled)
        m = MultiTau(roi, 4, len(frames), delays_per_level=8)
        for s in range(0, len(frames), 37):  # chunks that do not line up with the levels
            m.add(frames[s:s + 37])
        results.append(m.result("roi"))
    np.testing.assert_array_equal(results[0].g2, results[1].g2)
    np.testing.assert_array_equal(results[0].delay_frames, results[1].delay_frames)


@pytest.mark.parametrize("photons_per_pixel, path", [(0.02, "sparse"), (0.5, "float32 syrk"), (3000.0, "float64 syrk")])
def test_two_time_product_paths_equal_the_float64_product(photons_per_pixel, path, monkeypatch):
    """Each way of forming C(t1, t2) (non-zeros only, exact float32 blocks, float64 blocks) is the plain float64
    product to the last bit on integer counts, and the count rate picks the path it should."""
    from rtlib.workloads.xpcs import kernels
    from rtlib.workloads.xpcs.twotime import TwoTime

    rng = np.random.default_rng(4)
    frames = rng.poisson(photons_per_pixel, (300, 6000)).astype(np.uint16)
    groups = [np.arange(0, 6000, 3), np.arange(1000, 5000)]
    calls = {"sparse": 0}
    plain_sparse = kernels.sparse_gram

    def counting(cols):
        out = plain_sparse(cols)
        calls["sparse"] += out is not None
        return out

    monkeypatch.setattr(kernels, "sparse_gram", counting)
    tt = TwoTime(groups, len(frames))
    for s in range(0, len(frames), 64):
        tt.add(frames[s:s + 64])
    for group, c2 in zip(groups, tt.results()):
        x = frames[:, group].astype(np.float64)
        expected = (x @ x.T) / len(group) / np.outer(x.mean(axis=1), x.mean(axis=1))
        np.testing.assert_array_equal(c2, expected)
    assert calls["sparse"] == (2 if path == "sparse" else 0)
    if path != "sparse":  # the float32 blocks are only taken when exact: pixels x peak^2 < 2^24
        peak = float(frames.max())
        assert (int((2**24 - 1) // peak**2) >= 256) == (path == "float32 syrk")


def test_compiled_multitau_kernel_equals_the_numpy_one():
    """The numba kernel (pixel blocks copied pixel-major, zeros skipped) gives the numpy kernel's sums bit for bit,
    across chunks that carry history, with pixel counts that do not fill the last block."""
    from rtlib.workloads.xpcs import kernels

    assert kernels.HAVE_NUMBA
    rng = np.random.default_rng(11)
    frames = rng.poisson(0.3, (200, kernels.PIXEL_BLOCK * 3 + 17)).astype(np.float64)
    delays = np.arange(1, 16)
    fast, slow = np.zeros((15, frames.shape[1])), np.zeros((15, frames.shape[1]))
    history = np.zeros((0, frames.shape[1]))
    for s in range(0, len(frames), 37):
        block = frames[s:s + 37]
        kernels.accumulate(history, block, delays, fast)
        kernels.accumulate_dense(history, block, delays, slow)
        history = np.concatenate([history, block])[-15:]
    np.testing.assert_array_equal(fast, slow)
    assert fast.sum() > 0
