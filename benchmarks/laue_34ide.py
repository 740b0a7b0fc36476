"""Laue on the APS 34-ID-E layout (a file per wire step + geometry XML) vs rtlib's one-file layout: the per-file cost.

The same synthetic scan (``rtlib.synth.laue``: same sources, geometry and
Poisson draws) is written both ways and reconstructed end to end by the
workload; the results are checked to be identical. The difference is what
the 34-ID-E layout costs: opening and auditing each step file
(``h5safe``), reading its image and wire position, and copying the images
into one stack (``scan34ide.stack_scan``), also timed alone.

    python benchmarks/laue_34ide.py [--quick]
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

from rtlib.synth.laue import default_geometry, geometry_for_34ide, write_laue_scan, write_laue_scan_34ide  # noqa: E402
from rtlib.workloads.laue import read_results, workload  # noqa: E402
from rtlib.workloads.laue.scan34ide import stack_scan  # noqa: E402

PARAMS = {"depth_start_um": -10.0, "depth_end_um": 50.0, "depth_step_um": 1.0, "rows_per_block": 64}
SOURCE_DEPTHS_UM = (0.0, 40.0)
REPEATS = 3


def run(inputs: list[Path], outdir: Path) -> tuple[float, dict]:
    outdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary = workload.run(workload.validate(PARAMS), inputs, outdir, lambda f, m: None)
    return time.perf_counter() - t0, summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="256 x 256 images instead of 1024 x 1024")
    args = parser.parse_args()
    size_px = 256 if args.quick else 1024
    steps_wanted = 100
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        common = dict(depth_start_um=SOURCE_DEPTHS_UM[0], depth_end_um=SOURCE_DEPTHS_UM[1])
        at_one_um = default_geometry(size_px, size_px, wire_step_um=1.0, **common).steps
        base = default_geometry(size_px, size_px, wire_step_um=(at_one_um - 1) / (steps_wanted - 1), **common)
        geometry, _, _ = geometry_for_34ide(base)
        scan = dict(height_px=size_px, width_px=size_px, num_sources=40, seed=0, **common)
        write_laue_scan(tmp / "scan.h5", geometry=geometry, **scan)
        truth = write_laue_scan_34ide(tmp / "scan34", geometry=base, **scan)
        steps = truth["shape"][0]
        folder_bytes = sum(p.stat().st_size for p in (tmp / "scan34").iterdir())
        # Alternating repeats, the fastest of each kept: the machine is shared, and one run can be slowed by others.
        own_times, ide_times = [], []
        for _ in range(REPEATS):
            own_s, own = run([tmp / "scan.h5"], tmp / "own")
            ide_s, ide = run([tmp / "scan34", tmp / "scan34" / "geoN.xml"], tmp / "ide")
            own_times.append(own_s)
            ide_times.append(ide_s)
        own_s, ide_s = min(own_times), min(ide_times)
        same = bool(np.array_equal(read_results(tmp / "own" / "laue.h5")["depth_resolved"],
                                   read_results(tmp / "ide" / "laue.h5")["depth_resolved"]))
        assert same, "the two layouts gave different reconstructions"
        stack_times = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            stack_scan([tmp / "scan34", tmp / "scan34" / "geoN.xml"], tmp / "stacked.h5")
            stack_times.append(time.perf_counter() - t0)
        stack_s = min(stack_times)

    per_file_ms = 1e3 * stack_s / steps
    figures = {
        "image_px": [size_px, size_px],
        "wire_steps": steps,
        "step_file_bytes": folder_bytes // steps,
        "repeats_fastest_of": REPEATS,
        "workload_rtlib_layout_runs_s": [round(t, 2) for t in own_times],
        "workload_34ide_layout_runs_s": [round(t, 2) for t in ide_times],
        "workload_rtlib_layout_s": round(own_s, 2),
        "workload_34ide_layout_s": round(ide_s, 2),
        "extra_34ide_s": round(ide_s - own_s, 2),
        "stack_scan_s": round(stack_s, 2),
        "per_step_file_ms": round(per_file_ms, 2),
        "identical_reconstructions": same,
        "peaks_found": own["num_peaks"],
        "sources": len(truth["sources"]),
    }
    table = "\n".join([
        "| measure | value |",
        "|---|---|",
        f"| scan point | {steps} wire steps x {size_px} x {size_px} px (uint16), {own['depth_bins']} depth bins of 1 um |",
        f"| workload on rtlib's one-file layout | {own_s:.1f} s per scan point (fastest of {REPEATS}; "
        f"{min(own_times):.1f}-{max(own_times):.1f} s) |",
        f"| workload on the 34-ID-E layout ({steps} step files + geoN.xml) | {ide_s:.1f} s per scan point "
        f"(fastest of {REPEATS}; {min(ide_times):.1f}-{max(ide_times):.1f} s; {ide_s - own_s:+.1f} s, x{ide_s / own_s:.2f}) |",
        f"| reading the step files alone (audit, image, wire position, copy into one stack) | {stack_s:.1f} s: "
        f"{per_file_ms:.1f} ms per {folder_bytes / steps / 1e6:.1f} MB step file |",
        f"| reconstructions identical | {'yes, to the bit' if same else 'NO'}; peaks {own['num_peaks']} / "
        f"{len(truth['sources'])} sources |",
    ])
    notes = (f"Fastest of {REPEATS} alternating runs of each (all runs: rtlib layout "
             f"{', '.join(f'{t:.1f}' for t in own_times)} s; 34-ID-E {', '.join(f'{t:.1f}' for t in ide_times)} s) on a "
             "machine shared with other work, so the difference between the two totals is within their spread; "
             "the step-file reading timed alone is the per-file cost. Both runs read from the same local disk (page cache warm after writing); over a parallel file "
             "system each step file's open and metadata read cost more. The copy into one stack is what lets the "
             "reconstruction (and its dask row blocks) read the images as it reads rtlib's layout.")
    write_result("laue_34ide", "Laue: 34-ID-E per-step files vs rtlib's one-file layout", figures, table,
                 command="python benchmarks/laue_34ide.py" + (" --quick" if args.quick else ""), notes=notes)
    print(table)


if __name__ == "__main__":
    main()
