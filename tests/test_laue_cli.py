"""`rtlib synth laue` and `rtlib laue reconstruct`, through typer (the commands as cli.py wires them)."""

from __future__ import annotations

import h5py
import numpy as np
import typer
from typer.testing import CliRunner

from rtlib.cli_laue import laue_app, synth_laue
from rtlib.synth.laue import read_ground_truth


def _app() -> typer.Typer:
    app = typer.Typer()
    synth = typer.Typer()
    synth.command("laue")(synth_laue)
    app.add_typer(synth, name="synth")
    app.add_typer(laue_app, name="laue")
    return app


def test_synth_then_reconstruct(tmp_path):
    runner = CliRunner()
    scan, result = tmp_path / "scan.h5", tmp_path / "res" / "result.h5"
    out = runner.invoke(_app(), ["synth", "laue", str(scan), "--height-px", "40", "--width-px", "40", "--num-sources", "3", "--seed", "7"])
    assert out.exit_code == 0, out.output
    truth = read_ground_truth(scan)
    assert len(truth) == 3
    out = runner.invoke(_app(), ["laue", "reconstruct", str(scan), "-o", str(result), "--depth-start-um", "-10",
                                 "--depth-end-um", "50", "--depth-step-um", "0.5", "-q"])
    assert out.exit_code == 0, out.output
    assert '"num_peaks": 3' in out.output
    with h5py.File(result) as f:
        assert f["/laue/depth_resolved"].shape == (120, 40, 40)
        depths = np.sort(f["/laue/peaks"]["depth_um"])
    np.testing.assert_allclose(depths, sorted(s.depth_um for s in truth), atol=0.5)
    assert result.with_suffix(".csv").exists()
    assert not list(result.parent.glob(".laue-*"))  # no scratch left behind
