"""`rtlib em run`, `rtlib synth em`, `rtlib train em` and `rtlib view`: connectomics without a job store.

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
from .errors import RtlibError

console = Console()

em_app = typer.Typer(help="Connectomics: EM tiles to neurons, skeletons and a contact graph.", no_args_is_help=True)
train_app = typer.Typer(help="Train the neural networks the workloads ship with.", no_args_is_help=True)


@em_app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def em_run(
    ctx: typer.Context,
    input_dir: Path = typer.Argument(..., help="EM directory: layout.json and sections/NNNN/tile_RR_CC.png"),
    output: Path = typer.Option(..., "--output", "-o", help="result Zarr group to write, e.g. result.zarr"),
    weights: Optional[Path] = typer.Option(None, help="U-Net weights (.pt); default: the shipped ones"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print only the summary"),
    strict: bool = typer.Option(False, "--strict", help="fail (exit status 2) when the result is suspect: no neuron "
                                "segmented, or more than max_masked_fraction masked; without it these are warnings"),
):
    """Stitch, align, mask, segment, skeletonize and graph one EM directory into OUTPUT (.zarr).

    Workload parameters as -p NAME VALUE (see `rtlib workloads` for the connectomics parameters)."""
    from .cli import _parse_params
    from .workloads.connectomics import RESULT_NAME, workload

    params = _parse_params(list(ctx.args), "connectomics")
    if weights is not None:
        params["weights"] = str(weights)
    if strict:
        params["strict"] = True
    validated = workload.validate(params)

    output = output.expanduser()
    with one_file_run(output, prefix=".em-", quiet=quiet, console=console) as run:
        summary = workload.run(validated, [input_dir], run.scratch, run.report)
        if output.exists():
            shutil.rmtree(output)
        os.replace(run.scratch / RESULT_NAME, output)
    summary["wall_s"] = run.wall_s()
    summary["output"] = str(output)
    for warning in summary.get("warnings", []):  # also when quiet: a suspect result is never a silent success
        console.print(f"[bold yellow]WARNING[/]: {warning}", highlight=False)
    console.print_json(json.dumps(summary, default=str))


def synth_em(
    directory: Path = typer.Argument(..., help="directory to write: layout.json, sections/, ground_truth/"),
    style: str = typer.Option("neuropil", help="neuropil: dense space-filling neurites, a rendering drawn from the family; "
                              "sparse: round neurites in texture (the first generator)"),
    sections: int = typer.Option(32, help="number of sections (z)"),
    height_px: int = typer.Option(128, help="frame height; a whole grid of tiles"),
    width_px: int = typer.Option(128, help="frame width; a whole grid of tiles"),
    tile_px: int = typer.Option(96, help="tile side, px"),
    overlap_px: int = typer.Option(64, help="nominal overlap of neighbouring tiles, px (about 2 x max-offset + 16 or more)"),
    max_offset_px: float = typer.Option(15.0, help="largest deviation of a tile from its nominal position (y and x), px"),
    neurites: int = typer.Option(16, help="sparse style: number of neurites (before branching)"),
    pixel_size_nm: Optional[float] = typer.Option(None, help="in-plane pixel size, nm (4-16); default 8 (neuropil), 16 (sparse)"),
    section_thickness_nm: float = typer.Option(40.0),
    seed: int = typer.Option(0),
):
    """Synthetic serial-section EM tiles with ground truth: dense neuropil (default) or sparse neurites."""
    from .synth.em import write_em_dataset

    if style not in ("neuropil", "sparse"):
        raise RtlibError(f"--style {style!r}: choose neuropil or sparse")
    try:
        truth = write_em_dataset(directory, (sections, height_px, width_px), style=style, tile_px=tile_px,
                                 overlap_px=overlap_px, max_offset_px=max_offset_px, num_neurites=neurites,
                                 pixel_size_nm=pixel_size_nm, section_thickness_nm=section_thickness_nm, seed=seed)
    except ValueError as err:
        raise RtlibError(str(err)) from None
    console.print(f"wrote {directory} ({style}, {truth['layout']['pixel_size_nm']:g} nm pixels): {sections} sections of "
                  f"{truth['layout']['rows']}x{truth['layout']['cols']} tiles, {len(truth['cable_length_nm'])} neurons in ground_truth/")


@train_app.command("em")
def train_em(
    output: Path = typer.Option(None, "--output", "-o", help="weights file (default: the package's shipped weights)"),
    volumes: int = typer.Option(20, help="synthetic training volumes, each a new world and rendering of the family"),
    validation_volumes: int = typer.Option(3, help="held-out volumes (other seeds) scored after training"),
    steps: int = typer.Option(600, help="optimiser steps"),
    batch: int = typer.Option(2, help="patches per step"),
    seed: int = typer.Option(0),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice; 1 on a shared machine)"),
    cache_dir: Optional[Path] = typer.Option(None, help="keep the generated volumes here and reuse them next time"),
    initial: Optional[Path] = typer.Option(None, help="start from these weights instead of from scratch"),
):
    """Train the connectomics U-Net on synthetic EM of the whole family (neuropil and sparse, heavy augmentation)."""
    from .workloads.connectomics.train import train
    from .workloads.connectomics.unet import DEFAULT_WEIGHTS

    def report(step: int, loss: float) -> None:
        if step % 50 == 0 or step == steps - 1:
            console.print(f"step {step:5d}  loss {loss:.4f}", highlight=False)

    result = train(output or DEFAULT_WEIGHTS, volumes=volumes, steps=steps, batch=batch, seed=seed, threads=threads,
                   validation_volumes=validation_volumes, cache_dir=cache_dir, initial_weights=initial, progress=report)
    result.pop("losses")
    console.print_json(json.dumps(result))


def view(result: Path = typer.Argument(..., help="a connectomics result (.zarr)")):
    """Open a connectomics result in napari: every stage a layer, and the stages listed in a dock widget."""
    from .napari_plugin import add_result_layers, is_result, stages_widget

    if not is_result(result):
        raise RtlibError(f"{result} is not an rtlib connectomics result (a .zarr group with a segmentation)")
    try:
        import napari
    except ImportError:
        raise RtlibError("napari is not installed: pip install 'rtlib[viewer]'") from None
    viewer = napari.Viewer(title=f"rtlib: {result.name}")
    add_result_layers(viewer, result)
    viewer.window.add_dock_widget(stages_widget(viewer), name="Connectomics stages", area="right")
    napari.run()
