"""XPCS throughput: rtlib multi-tau and two-time vs scikit-beam vs one streaming pass over the frames.

Sparse uint16 counts (Poisson, 0.05 photons per pixel per frame), 10 ring
ROIs covering the detector. Figures are frames/s and pixel-frames/s of the
correlator on frames already in memory (file reading is the same for every
tool and is timed separately, end to end through the workload). The
"single pass" is one read of every frame in float64 chunks, as the
correlator must do at least: the memory-bandwidth limit of this machine.
scikit-beam is timed on fewer frames (it is per frame, so its rate does not
depend on the record length). boost_corr is not installed here (it needs
torch), so it is not compared.

    python benchmarks/xpcs.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from rtlib.workloads.xpcs import workload  # noqa: E402
from rtlib.workloads.xpcs.multitau import MultiTau  # noqa: E402
from rtlib.workloads.xpcs.twotime import TwoTime  # noqa: E402

CHUNK = 64


def rings(height: int, width: int, count: int = 10) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    r = np.hypot(yy - height / 2, xx - width / 2)
    return np.minimum((r / (r.max() + 1e-9) * count).astype(np.int32), count - 1) + 1


def best_of(fn, repeats: int = 2) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def single_pass(frames: np.ndarray) -> float:
    def once():
        total = np.zeros(frames.shape[1])
        for s in range(0, len(frames), CHUNK):
            total += frames[s:s + CHUNK].sum(axis=0, dtype=np.float64)
    return best_of(once)


def rtlib_multitau(frames: np.ndarray, roi: np.ndarray) -> float:
    def once():
        mt = MultiTau(roi, int(roi.max()) + 1, len(frames), 16)
        for s in range(0, len(frames), CHUNK):
            mt.add(frames[s:s + CHUNK])
        mt.result("pixel")
    return best_of(once, 1)


def rtlib_twotime(frames: np.ndarray, group: np.ndarray) -> float:
    def once():
        tt = TwoTime([group], len(frames))
        for s in range(0, len(frames), CHUNK):
            tt.add(frames[s:s + CHUNK])
        tt.results()
    return best_of(once, 1)


def skbeam_multitau(images: np.ndarray, labels: np.ndarray) -> float:
    from skbeam.core.correlation import multi_tau_auto_corr
    t0 = time.perf_counter()
    multi_tau_auto_corr(6, 16, labels, images)
    return time.perf_counter() - t0


def skbeam_twotime(images: np.ndarray, labels: np.ndarray) -> float:
    from skbeam.core.correlation import two_time_corr
    t0 = time.perf_counter()
    two_time_corr(labels, images, len(images), len(images), 1)
    return time.perf_counter() - t0


def measure(height: int, width: int, frames_n: int, skbeam_frames: int, rng) -> dict:
    pixels = height * width
    stack = rng.poisson(0.05, (frames_n, height, width)).astype(np.uint16)
    labels = rings(height, width)
    flat = stack.reshape(frames_n, pixels)
    roi = labels.ravel() - 1
    one_roi = np.flatnonzero(roi == 4)
    out = {"detector": f"{height}x{width}", "frames": frames_n, "pixels": pixels}
    t = single_pass(flat)
    out["single_pass_fps"] = frames_n / t
    out["single_pass_GBps"] = stack.nbytes / t / 1e9
    out["rtlib_multitau_fps"] = frames_n / rtlib_multitau(flat, roi)
    out["rtlib_twotime_fps"] = frames_n / rtlib_twotime(flat, one_roi)
    out["twotime_roi_pixels"] = int(len(one_roi))
    sk = stack[:skbeam_frames]
    out["skbeam_multitau_fps"] = skbeam_frames / skbeam_multitau(sk, labels)
    sk_labels = np.where(labels == 5, 1, 0)
    out["skbeam_twotime_fps"] = skbeam_frames / skbeam_twotime(sk, sk_labels)
    out["skbeam_frames_timed"] = skbeam_frames
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.h5"
        with h5py.File(raw, "w") as f:
            f.create_dataset("/entry/data/data", data=stack, chunks=(16, height, width))
            f["/entry/instrument/detector/frame_time"] = 1e-3
        qmap = Path(tmp) / "qmap.h5"
        with h5py.File(qmap, "w") as f:
            f["/data/dynamicMap"] = labels
            f["/data/staticMap"] = labels
        outdir = Path(tmp) / "out"
        outdir.mkdir()
        params = workload.validate({"qmap_file": str(qmap), "frames_per_chunk": CHUNK})
        t0 = time.perf_counter()
        summary = workload.run(params, [raw, qmap], outdir, lambda f, m: None)
        out["workload_end_to_end_fps"] = frames_n / (time.perf_counter() - t0)
        out["workload_working_memory_MB"] = summary["working_memory_bytes"] / 1e6
    for key in ("single_pass_fps", "rtlib_multitau_fps", "rtlib_twotime_fps", "skbeam_multitau_fps", "skbeam_twotime_fps",
                "workload_end_to_end_fps"):
        out[key.replace("_fps", "_Mpixel_frames_per_s")] = out[key] * pixels / 1e6
    out["multitau_vs_skbeam"] = out["rtlib_multitau_fps"] / out["skbeam_multitau_fps"]
    out["twotime_vs_skbeam"] = out["rtlib_twotime_fps"] / out["skbeam_twotime_fps"]
    out["multitau_fraction_of_single_pass"] = out["rtlib_multitau_fps"] / out["single_pass_fps"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="256 x 256, 512 frames: a smoke run")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cases = [(256, 256, 512, 64)] if args.quick else [(512, 512, 1024, 64), (1024, 1024, 1024, 32)]
    results = [measure(h, w, n, s, rng) for h, w, n, s in cases]
    rows = ["| detector | frames | single pass fps (GB/s) | rtlib multi-tau fps | scikit-beam multi-tau fps | ratio | "
            "% of single pass | rtlib two-time fps (1 ROI) | scikit-beam two-time fps | ratio | workload end-to-end fps |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(
            f"| {r['detector']} | {r['frames']} | {r['single_pass_fps']:.0f} ({r['single_pass_GBps']:.2f}) | "
            f"{r['rtlib_multitau_fps']:.1f} | {r['skbeam_multitau_fps']:.1f} | {r['multitau_vs_skbeam']:.1f}x | "
            f"{100 * r['multitau_fraction_of_single_pass']:.1f} % | {r['rtlib_twotime_fps']:.0f} | "
            f"{r['skbeam_twotime_fps']:.1f} | {r['twotime_vs_skbeam']:.1f}x | {r['workload_end_to_end_fps']:.1f} |")
    table = "\n".join(rows) + (
        "\n\nSparse uint16 Poisson counts (0.05 photons/pixel/frame), 10 ring ROIs, chunks of 64 frames, "
        "16 multi-tau buffers per level, per-pixel normalisation. scikit-beam timed on its first "
        f"{', '.join(str(r['skbeam_frames_timed']) for r in results)} frames. boost_corr not compared (needs torch).")
    print(table)
    write_result("xpcs" if not args.quick else "xpcs_quick", "XPCS correlation throughput", {"cases": results}, table)


if __name__ == "__main__":
    main()
