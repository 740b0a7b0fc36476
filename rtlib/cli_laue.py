"""`rtlib laue reconstruct` and `rtlib synth laue`: the Laue workload on one wire scan (an rtlib file or a 34-ID-E
folder with its geometry XML), without a job store.

Wired into the `rtlib` command by ``cli.py``; errors are rtlib errors, which
``cli.main`` prints as one line with exit status 2.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .cli_onefile import one_file_run

console = Console()

laue_app = typer.Typer(help="Depth-resolved Laue (wire-scan) reconstruction of one scan file.", no_args_is_help=True)


@laue_app.command("reconstruct")
def reconstruct(
    scan: Path = typer.Argument(..., help="wire-scan HDF5 file (images at /entry/data/data, geometry under /entry), "
                                "or a 34-ID-E scan folder of per-step HDF5 files (with --geometry)"),
    output: Path = typer.Option(..., "--output", "-o", help="result HDF5 file to write (/laue/depth_resolved, /laue/peaks, ...)"),
    geometry: Optional[Path] = typer.Option(None, "--geometry", "-g", help="34-ID-E geometry XML (geoN, as LaueGo reads) "
                                            "for a scan folder; default: the one .xml in the folder"),
    depth_start_um: float = typer.Option(0.0, help="start of the depth range along the beam, um"),
    depth_end_um: float = typer.Option(100.0, help="end of the depth range, um"),
    depth_step_um: float = typer.Option(1.0, help="depth bin width, um"),
    wire_edge: str = typer.Option("leading", help="leading, trailing or both"),
    wire_diameter_um: Optional[float] = typer.Option(None, help="wire diameter, um (default: from the file)"),
    rows_per_block: int = typer.Option(64, help="detector rows reconstructed at a time"),
    peak_threshold_sigma: float = typer.Option(6.0, help="peak threshold in robust sigmas above the noise"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print only the summary"),
):
    """Depth-resolved stack and peaks of one wire scan, written to OUTPUT (its peak table beside it as .csv)."""
    from .workloads.laue import workload
    from .workloads.laue.output import CSV_NAME, H5_NAME

    validated = workload.validate({
        "depth_start_um": depth_start_um, "depth_end_um": depth_end_um, "depth_step_um": depth_step_um,
        "wire_edge": wire_edge, "wire_diameter_um": wire_diameter_um, "rows_per_block": rows_per_block,
        "peak_threshold_sigma": peak_threshold_sigma,
    })

    output = output.expanduser()
    with one_file_run(output, prefix=".laue-", quiet=quiet, console=console) as run:
        inputs = [scan] if geometry is None else [scan, geometry]
        summary = workload.run(validated, inputs, run.scratch, run.report)
        shutil.move(str(run.scratch / H5_NAME), str(output) + ".partial")
        os.replace(str(output) + ".partial", output)
        shutil.move(str(run.scratch / CSV_NAME), str(output.with_suffix(".csv")))
    summary["wall_s"] = run.wall_s()
    summary["output"] = str(output)
    console.print_json(json.dumps(summary, default=str))


def synth_laue(
    path: Path = typer.Argument(..., help="wire-scan HDF5 file to write (with --format 34ide: the scan folder)"),
    format: str = typer.Option("rtlib", "--format", help="rtlib: one HDF5 file; 34ide: APS 34-ID-E layout, a folder of "
                               "per-step HDF5 files and the geometry XML geoN.xml"),
    height_px: int = typer.Option(128), width_px: int = typer.Option(128),
    num_sources: int = typer.Option(6, help="point sources at random depths and detector positions"),
    depth_start_um: float = typer.Option(0.0, help="shallowest source depth, um"),
    depth_end_um: float = typer.Option(40.0, help="deepest source depth, um"),
    wire_step_um: float = typer.Option(1.0, help="wire travel per step, um (at 45 degrees: ~0.71 um of depth)"),
    wire_diameter_um: float = typer.Option(52.0),
    background_counts: float = typer.Option(2.0, help="flat background per pixel per image"),
    seed: int = typer.Option(0),
):
    """A wire scan of point sources at known depths, Poisson noise, with the geometry to reconstruct it (Laue ground truth)."""
    from .errors import ParameterError
    from .synth.laue import write_laue_scan, write_laue_scan_34ide

    writers = {"rtlib": write_laue_scan, "34ide": write_laue_scan_34ide}
    if format not in writers:
        raise ParameterError(f"--format must be one of {', '.join(writers)}, got {format!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    truth = writers[format](
        path, height_px=height_px, width_px=width_px, num_sources=num_sources, depth_start_um=depth_start_um,
        depth_end_um=depth_end_um, wire_step_um=wire_step_um, wire_diameter_um=wire_diameter_um,
        background_counts=background_counts, seed=seed,
    )
    size = sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size
    console.print(f"wrote {path} ({size / 1e6:.1f} MB, {truth['shape'][0]} wire steps)")
    console.print_json(json.dumps(truth, default=str))
