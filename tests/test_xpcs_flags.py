"""Honest fits: a τ the data cannot support is flagged, not reported — on curves, through `rtlib xpcs analyze -q`,
and through the papermill notebook; and q from 8-ID-I's geometry keys when the q-map lists none."""

from __future__ import annotations

import json

import h5py
import nbformat
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from rtlib.cli_xpcs import xpcs_app
from rtlib.notebooks import run_notebook
from rtlib.synth.geometry import Geometry, pixel_q_map
from rtlib.synth.xpcs import expected_g2, write_xpcs_file
from rtlib.workloads.xpcs import workload
from rtlib.workloads.xpcs.fit import FLAGS, fit_g2

app = typer.Typer()
app.add_typer(xpcs_app, name="xpcs")
app.command("noop")(lambda: None)  # a group needs two commands to keep its names

FRAMES, SIZE = 400, 48
RECORD_S = FRAMES * 1e-3
SHAPE = dict(frames=FRAMES, height=SIZE, width=SIZE, num_q_rings=3)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Three records of the same rings: no speckle at all (β = 0: pure Poisson noise, g2 = 1 at every delay),
    dynamics 100-200x slower than the record (g2 = 1 + β at every delay), and resolved dynamics."""
    d = tmp_path_factory.mktemp("flags")
    write_xpcs_file(d / "noise.h5", beta=0.0, seed=1, qmap_path=d / "qmap.h5", **SHAPE)
    write_xpcs_file(d / "slow.h5", beta=0.2, seed=2, tau_min_s=100 * RECORD_S, tau_max_s=200 * RECORD_S, **SHAPE)
    resolved = write_xpcs_file(d / "resolved.h5", beta=0.2, seed=3, tau_min_s=0.004, tau_max_s=0.03, **SHAPE)
    return d, resolved


def _analyze(d, raw: str, *options: str) -> str:
    result = CliRunner().invoke(app, ["xpcs", "analyze", str(d / raw), "--qmap", str(d / "qmap.h5"),
                                      "-o", str(d / f"{raw}.out.h5"), *options])
    assert result.exit_code == 0, result.output
    return result.output


def _fit_datasets(path):
    with h5py.File(path, "r") as f:
        fit = f["/xpcs/multitau/fit"]
        return {k: fit[k][()] for k in ("tau", "beta", "fit_ok", "flag")}


# -- on curves with a known answer --------------------------------------------------------------


def test_fit_flags_curves_whose_tau_the_delays_cannot_tell():
    delay = np.arange(1, 200) * 1e-3
    rng = np.random.default_rng(0)
    err = np.full_like(delay, 0.005)
    curves = np.column_stack([
        expected_g2(delay, 0.02, 0.2),  # resolved
        1.0 + rng.normal(0, 0.005, delay.size),  # flat at 1: no dynamics
        expected_g2(delay, 50.0, 0.2),  # 250x slower than the last delay
        expected_g2(delay, 1e-5, 0.2) + rng.normal(0, 0.005, delay.size),  # over before the first delay
        expected_g2(delay, 0.02, 1.6),  # more than full contrast
        expected_g2(delay, 0.02, 1.0),  # full contrast: the limit itself is fine
    ]) + np.array([0, 0, 1, 1, 1, 0])[None] * rng.normal(0, 0.005, (delay.size, 6))
    fits = fit_g2(delay, curves, np.tile(err[:, None], 6))
    assert fits.flags[0] == "" and fits.ok[0]
    assert fits.values["tau_s"][0] == pytest.approx(0.02, rel=0.05)
    assert fits.flags[1] in {"no_decay", "tau_below_range", "tau_above_range"}
    assert fits.flags[2] == "tau_above_range"
    assert fits.flags[3] in {"tau_below_range", "no_decay"}
    assert fits.flags[4] == "beta_above_1" and fits.flags[5] == ""
    assert fits.values["beta"][5] == pytest.approx(1.0, abs=1e-6)
    for k in (1, 2, 3, 4):
        assert not fits.ok[k] and np.isnan(fits.values["tau_s"][k]) and np.isnan(fits.values["beta"][k])
        assert any(m.startswith(f"ROI {k}:") for m in fits.messages)


# -- through the CLI ----------------------------------------------------------------------------


def test_cli_flags_pure_noise_and_prints_a_table(files):
    d, _ = files
    table = _analyze(d, "noise.h5", "-q").splitlines()
    assert table[0].split() == ["q", "(1/Å)", "τ", "(s)", "β", "flag"]
    rows = table[1:4]
    for row in rows:  # q known (the q-map file lists it), τ and β not reported, a flag and why
        q, tau, beta, flag = row.split()[:4]
        assert float(q) > 0 and tau == beta == "-" and flag.rstrip(":") in FLAGS
    assert table[4].startswith("no dynamics:") and table[5].startswith("wrote ")
    fit = _fit_datasets(d / "noise.h5.out.h5")  # the result file says the same
    assert np.isnan(fit["tau"]).all() and np.isnan(fit["beta"]).all() and not fit["fit_ok"].any()
    assert all(flag.decode() in FLAGS for flag in fit["flag"])


def test_cli_flags_dynamics_slower_than_the_record(files):
    d, _ = files
    summary = json.loads(_analyze(d, "slow.h5", "--json"))
    assert summary["fit_flags"] == ["tau_above_range"] * 3
    assert summary["tau_s"] == [None] * 3 and summary["beta"] == [None] * 3
    assert len(summary["fit_failures"]) == 3 and "no_dynamics" in summary
    assert list(_fit_datasets(d / "slow.h5.out.h5")["flag"]) == [b"tau_above_range"] * 3


def test_cli_reports_resolved_dynamics_without_flags(files):
    d, truth = files
    table = _analyze(d, "resolved.h5", "-q").splitlines()
    taus = [float(row.split()[1]) for row in table[1:4]]
    assert all(len(row.split()) == 3 for row in table[1:4])  # no flag column
    np.testing.assert_allclose(taus, truth["tau_s"], rtol=0.25)


# -- through papermill, as a beamline runs it -----------------------------------------------------


def test_notebook_finishes_on_a_sample_without_dynamics_and_says_so(files, tmp_path):
    d, _ = files
    run = run_notebook("xpcs", d / "noise.h5", tmp_path / "nb", {"qmap_file": str(d / "qmap.h5")}, progress=False)
    assert run.summary["tau_s"] == [None] * 3 and all(run.summary["fit_flags"])
    names = {p.name for p in run.output_dir.iterdir()}
    assert {"xpcs.h5", "xpcs_g2.png", "summary.json"} <= names and "xpcs_tau.png" not in names
    executed = nbformat.read(run.notebook, as_version=4)
    text = "".join(out.get("text", "") for cell in executed.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []))
    assert "No dynamics" in text and "no τ:" in text


# -- q from the raw file's geometry ---------------------------------------------------------------


def test_q_from_the_8idi_geometry_keys_when_the_qmap_lists_none(files, tmp_path):
    """A raw file with its geometry where 8-ID-I keeps it (detector_1, the incident energy) and a q-map file
    without /data/dqlist: q of each ROI is the mean pixel q of its pixels, from the synthetic geometry."""
    d, _ = files
    raw, qmap = tmp_path / "raw.h5", tmp_path / "qmap.h5"
    truth = write_xpcs_file(raw, beta=0.2, seed=4, qmap_path=qmap, **SHAPE)
    geometry = Geometry(**truth["geometry"])
    with h5py.File(raw, "a") as f:
        for name in ("beam_center_x", "beam_center_y", "distance", "x_pixel_size", "y_pixel_size"):
            del f[f"/entry/instrument/detector/{name}"]
        del f["/entry/instrument/monochromator"]
        det = f.create_group("/entry/instrument/detector_1")
        det["beam_center_x"], det["beam_center_y"] = geometry.beam_center_x_px, geometry.beam_center_y_px
        det["distance"] = geometry.detector_distance_m * 1e3
        det["distance"].attrs["units"] = "mm"
        det["x_pixel_size"] = geometry.pixel_size_um * 1e-6
        energy = f.create_dataset("/entry/instrument/incident_beam/incident_energy",
                                  data=12.398419843320026 / geometry.wavelength_angstrom)
        energy.attrs["units"] = "keV"
    with h5py.File(qmap, "a") as f:
        del f["/data/dqlist"], f["/data/sqlist"]
        dynamic = f["/data/dynamicMap"][()]
    summary = workload.run(workload.validate({"qmap_file": str(qmap)}), [raw, qmap], tmp_path, lambda f, m: None)
    q_px = pixel_q_map(geometry, SIZE, SIZE)
    expected = [q_px[dynamic == label].mean() for label in (1, 2, 3)]
    np.testing.assert_allclose(summary["q_inv_angstrom"], expected, rtol=1e-9)
    assert "q_unknown" not in summary
    with h5py.File(tmp_path / "xpcs.h5", "r") as f:
        np.testing.assert_allclose(f["/xpcs/multitau/fit/q"][()], expected, rtol=1e-9)
        assert f["/xpcs"].attrs["wavelength_angstrom_source"] == "file:/entry/instrument/incident_beam/incident_energy"
