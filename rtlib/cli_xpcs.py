"""`rtlib xpcs analyze` and `rtlib synth xpcs`: the XPCS workload on one file, without a job store.

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

xpcs_app = typer.Typer(help="X-ray photon correlation spectroscopy on one detector file.", no_args_is_help=True)


@xpcs_app.command("analyze")
def analyze(
    raw: Path = typer.Argument(..., help="detector file: HDF5 (frames at /entry/data/data) or Rigaku .bin photon events (give --frame-time-s)"),
    output: Path = typer.Option(..., "--output", "-o", help="result HDF5 file to write (APS 8-ID-I layout)"),
    qmap: Optional[Path] = typer.Option(None, "--qmap", help="q-map HDF5 (APS mask-tool layout); default: computed from the geometry"),
    mode: str = typer.Option("multitau", help="multitau, twotime or both"),
    frames_per_chunk: int = typer.Option(64, help="frames read at a time"),
    delays_per_level: int = typer.Option(16, help="multi-tau buffers per level (even)"),
    normalization: str = typer.Option("static", help="g2 normalisation: static, pixel or roi"),
    num_dynamic_q_bins: int = typer.Option(10, help="dynamic q bins when no q-map is given"),
    frame_time_s: Optional[float] = typer.Option(None, help="seconds between frames (default: from the file)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print only a table of the fits: q, τ, β and a flag "
                               "where the data cannot support τ"),
    as_json: bool = typer.Option(False, "--json", help="print only the whole summary, as JSON (for scripts)"),
):
    """Multi-tau g2 (and/or two-time) with τ(q) fits, written to OUTPUT."""
    from .workloads.xpcs import workload

    params = {"mode": mode, "frames_per_chunk": frames_per_chunk, "delays_per_level": delays_per_level,
              "g2_normalization": normalization, "num_dynamic_q_bins": num_dynamic_q_bins, "frame_time_s": frame_time_s}
    inputs = [raw]
    if qmap is not None:
        params["qmap_file"] = str(qmap)
        inputs.append(qmap)
    validated = workload.validate(params)

    output = output.expanduser()
    with one_file_run(output, prefix=".xpcs-", quiet=quiet or as_json, console=console) as run:
        summary = workload.run(validated, inputs, run.scratch, run.report)
        shutil.move(str(run.scratch / "xpcs.h5"), str(output) + ".partial")
        os.replace(str(output) + ".partial", output)
    summary["wall_s"] = run.wall_s()
    summary["output"] = str(output)
    if as_json:
        typer.echo(json.dumps(summary, default=str, indent=2))
    elif quiet:
        typer.echo(fit_table(summary))
    else:
        console.print_json(json.dumps(summary, default=str))
        typer.echo(fit_table(summary))


def fit_table(summary: dict) -> str:
    """One line per dynamic ROI: q, τ, β, and the flag of a fit the data cannot support (τ and β then "-")."""
    from .workloads.xpcs.fit import FLAGS

    def number(value, spec: str) -> str:
        return format(value, spec) if value is not None else "-".rjust(int(spec.split(".")[0]))

    q = summary["q_inv_angstrom"]
    lines = [f"{'q (1/Å)':>10}  {'τ (s)':>10}  {'β':>6}  flag"]
    if "tau_s" not in summary:
        lines += [f"{number(v, '10.4g')}  {'-':>10}  {'-':>6}  no multi-tau fit (mode {summary['mode']})" for v in q]
    else:
        for v, tau, beta, flag in zip(q, summary["tau_s"], summary["beta"], summary["fit_flags"]):
            lines.append(f"{number(v, '10.4g')}  {number(tau, '10.3e')}  {number(beta, '6.3f')}  "
                         f"{flag}{': ' + FLAGS[flag] if flag else ''}".rstrip())
        if summary.get("no_dynamics"):
            lines.append(f"no dynamics: {summary['no_dynamics']}")
    if summary.get("q_unknown"):
        lines.append(f"q unknown: {summary['q_unknown']}")
    lines.append(f"wrote {summary['output']} ({summary['wall_s']:.1f} s)")
    return "\n".join(lines)


def synth_xpcs(
    path: Path = typer.Argument(..., help="HDF5 detector file to write"),
    frames: int = typer.Option(1000), height_px: int = typer.Option(128), width_px: int = typer.Option(128),
    frame_time_s: float = typer.Option(1e-3), num_q_rings: int = typer.Option(6),
    tau_min_s: float = typer.Option(0.004, help="relaxation time of the outermost ring"),
    tau_max_s: float = typer.Option(0.05, help="relaxation time of the innermost ring"),
    beta: float = typer.Option(0.2, help="speckle contrast"),
    mean_counts: float = typer.Option(2.0, help="photons per pixel per frame in the innermost ring"),
    seed: int = typer.Option(0),
    compression: Optional[str] = typer.Option(None, help="gzip, lz4 or bslz4"),
    qmap: Optional[Path] = typer.Option(None, "--qmap", help="also write the rings as a q-map file here"),
    file_format: str = typer.Option("hdf5", "--format", help="hdf5; hdf5-bslz4: the same, bitshuffle/LZ4 "
                                    "compressed as 8-ID-I's Eiger writes it; rigaku: a Rigaku 500k photon-event .bin "
                                    "file (the frames in the corner of its 512 x 1024 module); rigaku3m: the six "
                                    "module files PATH.000 ... PATH.005 of a Rigaku 3M (the frames in one module). "
                                    "No metadata in either: analyze with --frame-time-s and the q-map"),
):
    """Speckle with a known relaxation time per q ring and Poisson counts (XPCS ground truth)."""
    import tempfile

    from .errors import ParameterError
    from .synth.xpcs import write_rigaku3m_files, write_rigaku_file, write_xpcs_file

    if file_format not in ("hdf5", "hdf5-bslz4", "rigaku", "rigaku3m"):
        raise ParameterError(f"--format {file_format!r}: use hdf5, hdf5-bslz4, rigaku or rigaku3m")
    if file_format == "hdf5-bslz4":
        file_format, compression = "hdf5", "bslz4"
    path.parent.mkdir(parents=True, exist_ok=True)
    options = dict(frames=frames, height=height_px, width=width_px, frame_time_s=frame_time_s, num_q_rings=num_q_rings,
                   tau_min_s=tau_min_s, tau_max_s=tau_max_s, beta=beta, mean_counts=mean_counts, seed=seed)
    if file_format == "hdf5":
        truth = write_xpcs_file(path, compression=compression, qmap_path=qmap, **options)
    else:
        with tempfile.TemporaryDirectory(prefix=".synth-", dir=path.parent) as tmp:
            dense, dense_qmap = Path(tmp) / "dense.h5", Path(tmp) / "qmap.h5"
            truth = write_xpcs_file(dense, qmap_path=dense_qmap, **options)
            if file_format == "rigaku":
                truth["rigaku"] = write_rigaku_file(dense, path, dense_qmap, qmap)
            else:
                truth["rigaku3m"] = write_rigaku3m_files(dense, path, 3, dense_qmap, qmap)
            truth["path"] = str(path)
            truth.pop("qmap_path")
            if qmap is not None:
                truth["qmap_path"] = str(qmap)
    written = [path] if path.exists() else sorted(path.parent.glob(f"{path.name}.00[0-5]"))
    console.print(f"wrote {', '.join(p.name for p in written)} ({sum(p.stat().st_size for p in written) / 1e6:.1f} MB, "
                  f"{frames} frames)")
    console.print_json(json.dumps(truth, default=str))
