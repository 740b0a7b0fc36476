"""The APS 34-ID-E wire-scan input (issue 20): a folder of per-step HDF5 files plus the geoN geometry XML, read into
the same reconstruction as rtlib's own layout; the XML's conventions checked by hand; crafted folders refused by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from rtlib.errors import InputDataError
from rtlib.synth.laue import LaueSource, default_geometry, geometry_for_34ide, write_laue_scan, write_laue_scan_34ide
from rtlib.workloads import get_workload
from rtlib.workloads.laue import read_results
from rtlib.workloads.laue.scan34ide import parse_geometry_xml, read_geometry_xml

PARAMS = {"depth_start_um": -10.0, "depth_end_um": 50.0, "depth_step_um": 1.0}
SOURCES = [LaueSource(depth_um=8.3, x_px=12.0, y_px=14.0, counts=4000.0),
           LaueSource(depth_um=14.6, x_px=12.0, y_px=14.0, counts=3000.0),
           LaueSource(depth_um=31.2, x_px=30.0, y_px=33.0, counts=5000.0)]


def _run(inputs, outdir: Path):
    wl = get_workload("laue")
    outdir.mkdir(parents=True, exist_ok=True)
    calls: list = []
    summary = wl.run(wl.validate(PARAMS), [Path(p) for p in inputs], outdir, lambda f, m: calls.append(f))
    assert calls == sorted(calls) and calls[-1] == 1.0
    return summary


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """The same scan (sources, geometry, seed) in both layouts."""
    root = tmp_path_factory.mktemp("laue34")
    write_laue_scan_34ide(root / "scan", height_px=48, width_px=44, sources=SOURCES, seed=6)
    geometry, _, _ = geometry_for_34ide(default_geometry(48, 44))
    write_laue_scan(root / "scan.h5", height_px=48, width_px=44, sources=SOURCES, seed=6, geometry=geometry)
    return root


def test_both_layouts_give_identical_reconstructions(scans, tmp_path):
    folder = scans / "scan"
    assert len(list(folder.glob("wire_scan_*.h5"))) > 100 and (folder / "geoN.xml").exists()
    ide = _run([folder, folder / "geoN.xml"], tmp_path / "ide")
    own = _run([scans / "scan.h5"], tmp_path / "own")
    a, b = read_results(tmp_path / "ide" / "laue.h5"), read_results(tmp_path / "own" / "laue.h5")
    np.testing.assert_array_equal(a["depth_resolved"], b["depth_resolved"])
    np.testing.assert_array_equal(a["peaks"], b["peaks"])
    assert ide["wire_steps"] == own["wire_steps"] == ide["step_files"]
    assert ide["input_layout"] == "34ide" and ide["scan_number"] == 1 and ide["geometry_file"] == "geoN.xml"
    # ... and the ground truth is recovered: both sources of the shared pixel too.
    found = sorted(p["depth_um"] for p in ide["peaks"])
    np.testing.assert_allclose(found, sorted(s.depth_um for s in SOURCES), atol=0.6)
    # The stacked copy of the steps is not left behind.
    assert sorted(p.name for p in (tmp_path / "ide").iterdir()) == ["laue.h5", "laue_peaks.csv"]


def test_step_files_alone_with_the_xml_as_inputs(scans, tmp_path):
    # As a job stages them: every step file and the XML, no folder.
    folder = scans / "scan"
    files = sorted(folder.glob("*.h5"), reverse=True) + [folder / "geoN.xml"]
    summary = _run(files, tmp_path / "out")
    assert summary["num_peaks"] == 3 and summary["first_step_file"] == "wire_scan_00010.h5"


def test_geometry_xml_conventions_by_hand():
    # xyz = rho(R) . ((x', y', 0) + P); R = (pi/2, 0, 0) maps (a, b, c) to (a, -c, b).
    text = b"""<?xml version="1.0"?>
<geoN><Detectors Ndetectors="1"><Detector N="0">
  <Npixels>3 2</Npixels><size unit="mm">0.6 0.4</size>
  <R unit="radian">{1.5707963267948966, 0, 0}</R><P unit="mm">1 2 510</P>
</Detector></Detectors>
<Wire><dia unit="micron">52</dia><Knife>0</Knife><Origin unit="micron">100 200 300</Origin><Axis>1 0 0</Axis></Wire>
</geoN>"""
    geo = parse_geometry_xml(text, Path("g.xml"))
    g = geo.scan_geometry(np.array([[100.0, 500.0, 310.0], [100.0, 501.0, 311.0]]), 2, 3)
    pixels = g.detector.pixel_positions_um()
    # pixel (row 0, col 0): x' = -0.2 mm, y' = -0.1 mm -> (0.8, 1.9, 510) mm -> (0.8, -510, 1.9) mm
    np.testing.assert_allclose(pixels[0, 0], [800.0, -510_000.0, 1900.0], atol=1e-6)
    np.testing.assert_allclose(pixels[1, 2], [1200.0, -510_000.0, 2100.0], atol=1e-6)
    np.testing.assert_allclose(g.wire.centres_um, [[0.0, 300.0, 10.0], [0.0, 301.0, 11.0]])
    np.testing.assert_allclose(g.wire.axis, [1, 0, 0])
    assert g.wire.diameter_um == 52.0 and g.beam.direction.tolist() == [0, 0, 1]
    # A rotated wire positioner turns both the wire's positions and its axis.
    rotated = parse_geometry_xml(text.replace(b"<Axis>", b"<R>0 0 1.5707963267948966</R><Axis>"), Path("g.xml"))
    g2 = rotated.scan_geometry(np.array([[100.0, 500.0, 310.0], [100.0, 501.0, 311.0]]), 2, 3)
    np.testing.assert_allclose(g2.wire.axis, [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(g2.wire.centres_um[0], [-300.0, 0.0, 10.0], atol=1e-9)


def test_the_xml_round_trip_keeps_the_geometry():
    g = default_geometry(30, 20)
    back, _, raw = geometry_for_34ide(g)
    np.testing.assert_allclose(back.detector.pixel_positions_um(), g.detector.pixel_positions_um(), atol=1e-6)
    np.testing.assert_allclose(back.wire.centres_um, g.wire.centres_um, atol=1e-9)
    assert not np.allclose(raw, g.wire.centres_um)  # the raw positioner readings carry the wire origin


# -- crafted folders and geometry files ------------------------------------------------------


@pytest.fixture
def folder(scans, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(scans / "scan", copy)
    return copy


def _expect(inputs, outdir, *parts):
    with pytest.raises(InputDataError) as info:
        _run(inputs, outdir)
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    assert not (outdir / "laue.h5").exists()
    assert not list(outdir.glob(".laue_34ide*"))
    return message


def test_missing_step_file(folder, tmp_path):
    (folder / "wire_scan_00042.h5").unlink()
    _expect([folder, folder / "geoN.xml"], tmp_path / "out", "wire_scan_00042.h5", "is missing", "wire_scan_00041.h5")


def test_truncated_step_file(folder, tmp_path):
    step = folder / "wire_scan_00030.h5"
    data = step.read_bytes()
    step.write_bytes(data[: len(data) // 2])
    _expect([folder, folder / "geoN.xml"], tmp_path / "out", str(step), "truncated")


def test_step_images_of_different_sizes(folder, tmp_path):
    step = folder / "wire_scan_00050.h5"
    with h5py.File(step, "r+") as f:
        del f["/entry1/data/data"]
        f["/entry1/data/data"] = np.zeros((1, 48, 40), dtype=np.uint16)
    _expect([folder, folder / "geoN.xml"], tmp_path / "out", str(step), "40 x 48", "44 x 48", "same image size")


def test_step_without_wire_position(folder, tmp_path):
    step = folder / "wire_scan_00011.h5"
    with h5py.File(step, "r+") as f:
        del f["/entry1/wire/wireY"]
    _expect([folder, folder / "geoN.xml"], tmp_path / "out", str(step), "/entry1/wire/wireY")


def test_images_not_matching_the_xml_detector(folder, tmp_path):
    xml = folder / "geoN.xml"
    xml.write_text(xml.read_text().replace("<Npixels>44 48</Npixels>", "<Npixels>2048 2048</Npixels>"))
    _expect([folder, xml], tmp_path / "out", str(xml), "2048 x 2048", "44 x 48")


@pytest.mark.parametrize("element", ["P", "R", "Npixels", "size", "dia", "Origin"])
def test_xml_with_a_missing_field(folder, tmp_path, element):
    xml = folder / "geoN.xml"
    text = xml.read_text()
    start = text.index(f"<{element}")
    end = text.index(f"</{element}>") + len(f"</{element}>")
    xml.write_text(text[:start] + text[end:])
    _expect([folder, xml], tmp_path / "out", str(xml), f"has no <{element}>")


def test_xml_malformed_oversized_or_with_entities(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<geoN><Detectors>")
    with pytest.raises(InputDataError, match="not well-formed"):
        read_geometry_xml(bad)
    bad.write_text('<?xml version="1.0"?><!DOCTYPE geoN [<!ENTITY x SYSTEM "file:///etc/passwd">]><geoN>&x;</geoN>')
    with pytest.raises(InputDataError, match="DOCTYPE"):
        read_geometry_xml(bad)
    bad.write_text("<geoN>" + " " * (2 * 2**20) + "</geoN>")
    with pytest.raises(InputDataError, match="more than a geometry file"):
        read_geometry_xml(bad)
    bad.write_text("<geoN><Detectors><Detector><Npixels>3 two</Npixels></Detector></Detectors><Wire/></geoN>")
    with pytest.raises(InputDataError, match="Npixels"):
        read_geometry_xml(bad)


def test_no_geometry_xml(folder, tmp_path):
    (folder / "geoN.xml").unlink()
    _expect([folder], tmp_path / "out", "geometry XML")


# -- the command line ------------------------------------------------------------------------


def test_cli_synth_34ide_then_reconstruct(tmp_path):
    import typer

    from rtlib.cli_laue import laue_app, synth_laue

    app, synth = typer.Typer(), typer.Typer()
    synth.command("laue")(synth_laue)
    app.add_typer(synth, name="synth")
    app.add_typer(laue_app, name="laue")
    runner = CliRunner()
    scan = tmp_path / "scan"
    out = runner.invoke(app, ["synth", "laue", str(scan), "--format", "34ide", "--height-px", "32", "--width-px", "32",
                              "--num-sources", "2", "--seed", "3"])
    assert out.exit_code == 0, out.output
    truth = json.loads((scan / "truth.json").read_text())
    result = tmp_path / "res.h5"
    out = runner.invoke(app, ["laue", "reconstruct", str(scan), "--geometry", str(scan / "geoN.xml"), "-o", str(result),
                              "--depth-start-um", "-10", "--depth-end-um", "50", "-q"])
    assert out.exit_code == 0, out.output
    with h5py.File(result) as f:
        depths = np.sort(f["/laue/peaks"]["depth_um"])
        assert f["/laue"].attrs["input_layout"] == "34ide"
    np.testing.assert_allclose(depths, sorted(s["depth_um"] for s in truth["sources"]), atol=0.6)


def test_the_named_geometry_wins_over_other_xml_in_the_folder(folder, tmp_path):
    (folder / "geoN_old.xml").write_text("<geoN/>")
    _expect([folder], tmp_path / "out", "2 geometry XML files")
    assert _run([folder, (folder / "geoN.xml").resolve()], tmp_path / "out2")["num_peaks"] == 3


def test_step_file_linking_outside_the_scan_is_refused(folder, tmp_path):
    # The safe-open rule holds for every step file: an external link to a file that is not staged is refused.
    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as f:
        f["/data"] = np.full((1, 48, 44), 7, dtype=np.uint16)
    step = folder / "wire_scan_00033.h5"
    with h5py.File(step, "r+") as f:
        del f["/entry1/data/data"]
        f["/entry1/data/data"] = h5py.ExternalLink(str(secret), "/data")
    message = _expect([folder, folder / "geoN.xml"], tmp_path / "out", str(step))
    assert "secret.h5" in message
