"""Connectomics: voxels per second per stage, and the block-wise dask path on 1 vs 2 workers.

A synthetic EM volume is analysed by the workload (stage timings from its
summary); then the block-wise steps (U-Net inference, segmentation,
contacts) are run again over Zarr blocks as tasks on a dask LocalCluster of
1 and of 2 single-threaded worker processes, and checked to give the same
segmentation as the workload's run.

    python benchmarks/em.py                      # 32 sections of 224 x 224 px, blocks of 8 x 112 x 112
    python benchmarks/em.py --shape 16 224 224   # half of that: a few minutes on a loaded 2-core machine
    python benchmarks/em.py --quick              # 16 sections of 128 x 128 px, blocks of 8 x 64 x 64
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

def blockwise_run(result: Path, target: Path, workers: int, spacing, block) -> tuple[dict, np.ndarray]:
    import zarr
    from distributed import Client, LocalCluster

    from rtlib.workloads.connectomics.blockwise import (BlockGrid, ZarrArrays, contacts_blocks, label_summary_blocks,
                                                        predict_blocks, segment_blocks)
    from rtlib.workloads.connectomics.skeleton import skeletonize_objects
    from rtlib.workloads.connectomics.params import ConnectomicsParams
    from rtlib.workloads.connectomics.segment import SegmentSettings

    src = zarr.open_group(str(result), mode="r")
    group = zarr.open_group(str(target), mode="w")
    for name in ("image", "mask"):
        group.create_array(name, data=src[name][...], chunks=block)
    shape = src["image"].shape
    grid = BlockGrid(shape, block)
    settings = SegmentSettings(min_voxels=int(ConnectomicsParams().min_object_volume_um3 * 1e9 / np.prod(spacing)))
    store = ZarrArrays(str(target))
    times = {}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(workers)
        client.run(_reset_peak_rss)
        t0 = time.perf_counter()
        predict_blocks(store, grid, None, client)
        times["unet"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        segment_blocks(store, grid, settings, client)
        times["segment"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        contacts_blocks(store, grid, spacing, client=client)
        times["contacts"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        summaries = label_summary_blocks(store, grid, "segmentation", client)
        skeletonize_objects(store, summaries, spacing, shape=shape, client=client, batch_box_voxels=shape[1] * shape[2])
        times["skeleton"] = time.perf_counter() - t0
        peaks = client.run(_peak_rss_mb)
    times["blocks"] = len(grid)
    times["worker_peak_rss_mb"] = round(max(peaks.values()), 1)
    return times, zarr.open_group(str(target), mode="r")["segmentation"][...]


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not carried over from a forking parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> None:
    """Start VmHWM again from the current resident size (Linux: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


# the volume of the connectomics project (5000 x 5000 px x 460 sections) on ALCF Polaris CPU cores
PROJECT_SHAPE = (460, 5000, 5000)
CORES_PER_NODE = 32


def projection(shape, stages: dict, scaling: dict) -> tuple[list[str], dict]:
    """Hours for the project's volume on N nodes, from this run's rates.

    Block steps (U-Net, segmentation, contacts, skeletons) and stitching and masking (one section at a
    time, sections independent) scale over every core at the parallel efficiency measured here from 1 to
    2 workers; alignment chains each section to the previous one, so it is projected on one core per
    section chain, in sequence (the serial part)."""
    voxels, big = float(np.prod(shape)), float(np.prod(PROJECT_SHAPE))
    per_section_px = float(shape[1] * shape[2])
    rows, figures = [], {}
    for nodes in (1, 10, 100):
        cores = nodes * CORES_PER_NODE
        hours = {}
        for step in ("unet", "segment", "contacts", "skeleton"):
            rate = voxels / scaling[1][step]  # voxels/s of one single-threaded worker
            efficiency = min(1.0, scaling[1][step] / scaling[2][step] / 2)
            hours[step] = big / (rate * (1 + (cores - 1) * efficiency)) / 3600
        for step in ("stitch", "mask"):
            rate = voxels / max(stages[f"{step}_s"], 1e-9)
            hours[step] = big / (rate * cores) / 3600
        hours["align"] = PROJECT_SHAPE[0] * stages["align_s"] / shape[0] * (PROJECT_SHAPE[1] * PROJECT_SHAPE[2] / per_section_px) / 3600
        figures[str(nodes)] = {k: round(v, 2) for k, v in hours.items()}
        rows.append(f"| {nodes} | {cores} | " + " | ".join(f"{hours[k]:.2f}" for k in
                    ("stitch", "align", "mask", "unet", "segment", "skeleton", "contacts")) + f" | {sum(hours.values()):.1f} |")
    header = ["", f"Projected to the project's {PROJECT_SHAPE[2]} x {PROJECT_SHAPE[1]} x {PROJECT_SHAPE[0]} volume "
              f"({big:.2e} voxels) on Polaris CPU nodes ({CORES_PER_NODE} cores each), hours per stage:", "",
              "| nodes | cores | stitch | align (serial) | mask | unet | segment | skeleton | contacts | total |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    return header + rows, figures


WHY_NO_WORKER_ROWS = " ".join("""
Why stitch, align and mask have no 1- and 2-worker rows: they are not dask tasks. The workload runs them in
its own process (the job's task), one section at a time, so that it holds one section: each section is read,
stitched, fused, aligned to the section before it and masked before the next is read
(`connectomics.stitch_align_mask`); only the steps after them run block-wise (`split_over_workers`). Alignment
cannot be split over sections as it stands, because each section's field is found against the previous aligned
section (hence "serial" in the projection). Stitching and masking need only their own section, so they could
be per-section tasks; the projection assumes they would scale over all cores at full efficiency, which this
benchmark has not measured. The synthetic tiles are the `rtlib synth em` defaults: 96-px tiles overlapping by
64 px, up to ±15 px off their nominal places (225 tiles per 512 x 512 section).
""".split())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="16 x 128 x 128 in blocks of 8 x 64 x 64")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="volume (default 32 224 224); y, x: 80-px tiles overlapping by 32 px (128, 176, 224, 272, ...)")
    parser.add_argument("--block", type=int, nargs=3, metavar=("Z", "Y", "X"), help="block (default 8 112 112)")
    args = parser.parse_args()
    shape = tuple(args.shape or ((16, 128, 128) if args.quick else (32, 224, 224)))
    block = tuple(args.block or ((8, 64, 64) if args.quick else (8, 112, 112)))

    import zarr

    from rtlib.synth.em import write_em_dataset
    from rtlib.workloads.connectomics import RESULT_NAME, workload

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        write_em_dataset(tmp / "em", shape, num_neurites=round(16 * shape[1] * shape[2] / 128**2), seed=7)
        synth_s = time.perf_counter() - t0
        _reset_peak_rss()
        t0 = time.perf_counter()
        summary = workload.run(workload.validate({}), [tmp / "em"], tmp, lambda f, m: None)
        total_s = time.perf_counter() - t0
        workload_peak_mb = _peak_rss_mb()
        voxels = int(np.prod(shape))
        spacing = tuple(summary["scale_nm"])
        whole = zarr.open_group(str(tmp / RESULT_NAME), mode="r")["segmentation"][...]
        scaling = {}
        for workers in (1, 2):
            times, labels = blockwise_run(tmp / RESULT_NAME, tmp / f"blocks{workers}.zarr", workers, spacing, block)
            assert np.array_equal(labels, whole), f"block-wise segmentation on {workers} workers differs from the workload's"
            scaling[workers] = times

    stages = summary["timings_s"]
    rows = ["| stage | seconds | voxels/s |", "|---|---:|---:|"]
    for name, seconds in stages.items():
        rows.append(f"| {name.removesuffix('_s')} | {seconds:.2f} | {voxels / max(seconds, 1e-9):,.0f} |")
    rows.append(f"| whole chain | {total_s:.2f} | {voxels / total_s:,.0f} |")
    rows += ["", f"Block-wise on a dask LocalCluster ({scaling[1]['blocks']} blocks of {block[0]} x {block[1]} x {block[2]}):", "",
             "| step | 1 worker (voxels/s) | 2 workers (voxels/s) | speed-up |", "|---|---:|---:|---:|"]
    for step in ("unet", "segment", "contacts", "skeleton"):
        one, two = scaling[1][step], scaling[2][step]
        rows.append(f"| {step} | {voxels / one:,.0f} | {voxels / two:,.0f} | {one / two:.2f}x |")
    rows += ["", f"Peak memory: {workload_peak_mb:,.0f} MB for the process that ran the workload; "
             f"{scaling[1]['worker_peak_rss_mb']:,.0f} MB (1 worker) and {scaling[2]['worker_peak_rss_mb']:,.0f} MB "
             f"(largest of 2 workers) per dask worker for the block-wise steps; the volume's labels alone are "
             f"{voxels * 4 / 1e6:,.0f} MB."]
    projected_rows, projected = projection(shape, stages, scaling)
    rows += projected_rows
    table = "\n".join(rows)
    figures = {"shape": list(shape), "block": list(block), "voxels": voxels, "synth_s": round(synth_s, 2), "stage_s": stages,
               "whole_chain_s": round(total_s, 2), "neurons": summary["neurons"], "contacts": summary["contacts"],
               "blockwise_s": {str(k): {s: round(v, 3) for s, v in t.items()} for k, t in scaling.items()},
               "workload_peak_rss_mb": round(workload_peak_mb, 1), "projected_hours": projected}
    notes = ("Stage timings are the workload's own (one block, in-process; torch picks its threads). The block-wise "
             "rows time the same steps as tasks on 1 and 2 single-threaded worker processes, torch at one thread per "
             "task; their segmentation is checked equal to the workload's. Scaling is bounded by the machine's cores "
             "and whatever else runs on them. The projection multiplies this run's single-worker rates by the cores, "
             "at the 1-to-2-worker efficiency measured here (capped at 1); alignment chains each section to the "
             "previous one and is projected serial. It leaves out I/O and the U-Net on GPUs.\n\n"
             + WHY_NO_WORKER_ROWS)
    write_result("em", "Connectomics: voxels per second per stage, block-wise dask on 1 vs 2 workers", figures, table,
                 command=" ".join(["python benchmarks/em.py", *sys.argv[1:]]), notes=notes)
    print(table)


if __name__ == "__main__":
    main()
