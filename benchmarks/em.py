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

    from rtlib.workloads.connectomics.blockwise import BlockGrid, ZarrArrays, contacts_blocks, predict_blocks, segment_blocks
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
        t0 = time.perf_counter()
        predict_blocks(store, grid, None, client)
        times["unet"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        segment_blocks(store, grid, settings, client)
        times["segment"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        contacts_blocks(store, grid, spacing, client=client)
        times["contacts"] = time.perf_counter() - t0
    times["blocks"] = len(grid)
    return times, zarr.open_group(str(target), mode="r")["segmentation"][...]


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
        t0 = time.perf_counter()
        summary = workload.run(workload.validate({}), [tmp / "em"], tmp, lambda f, m: None)
        total_s = time.perf_counter() - t0
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
    for step in ("unet", "segment", "contacts"):
        one, two = scaling[1][step], scaling[2][step]
        rows.append(f"| {step} | {voxels / one:,.0f} | {voxels / two:,.0f} | {one / two:.2f}x |")
    table = "\n".join(rows)
    figures = {"shape": list(shape), "block": list(block), "voxels": voxels, "synth_s": round(synth_s, 2), "stage_s": stages,
               "whole_chain_s": round(total_s, 2), "neurons": summary["neurons"], "contacts": summary["contacts"],
               "blockwise_s": {str(k): {s: round(v, 3) for s, v in t.items()} for k, t in scaling.items()}}
    notes = ("Stage timings are the workload's own (one block, in-process; torch picks its threads). The block-wise "
             "rows time the same steps as tasks on 1 and 2 single-threaded worker processes, torch at one thread per "
             "task; their segmentation is checked equal to the workload's. Scaling is bounded by the machine's cores "
             "and whatever else runs on them.")
    write_result("em", "Connectomics: voxels per second per stage, block-wise dask on 1 vs 2 workers", figures, table,
                 command=" ".join(["python benchmarks/em.py", *sys.argv[1:]]), notes=notes)
    print(table)


if __name__ == "__main__":
    main()
