"""Bad EM input directories: each is an InputDataError naming the file, and through the agent that job
ends FAILED with that message while a good connectomics job beside it ends DONE."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rtlib.errors import InputDataError
from rtlib.synth.em import write_em_dataset
from rtlib.workloads import connectomics
from rtlib.workloads.connectomics.params import ConnectomicsParams

SHAPE = (3, 128, 128)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("em_good") / "em"
    write_em_dataset(root, SHAPE, seed=2, num_neurites=6)
    return root


def _missing_tile(root: Path) -> str:
    (root / "sections/0001/tile_01_00.png").unlink()
    return "tile_01_00"


def _empty_section(root: Path) -> str:
    for p in (root / "sections/0002").iterdir():
        p.unlink()
    return "sections/0002"


def _rgb_png(root: Path) -> str:
    path = root / "sections/0001/tile_00_01.png"
    gray = np.asarray(Image.open(path))
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(path)
    return "tile_00_01.png"


def _png_16_bit(root: Path) -> str:
    path = root / "sections/0000/tile_01_01.png"
    Image.fromarray(np.asarray(Image.open(path)).astype(np.uint16) * 256).save(path)
    return "tile_01_01.png"


def _tiff_16_bit(root: Path) -> str:
    import tifffile

    path = root / "sections/0002/tile_00_00.png"
    data = np.asarray(Image.open(path)).astype(np.uint16) * 256
    path.unlink()
    tifffile.imwrite(path.with_suffix(".tif"), data)
    return "tile_00_00.tif"


def _wrong_size(root: Path) -> str:
    path = root / "sections/0001/tile_01_01.png"
    Image.fromarray(np.asarray(Image.open(path))[:64, :72]).save(path)
    return "tile_01_01.png"


def _no_layout(root: Path) -> str:
    (root / "layout.json").unlink()
    return "layout.json"


def _layout_not_json(root: Path) -> str:
    (root / "layout.json").write_text("{tile_size_px: 80,")
    return "layout.json"


def _layout_lacks_keys(root: Path) -> str:
    raw = json.loads((root / "layout.json").read_text())
    del raw["overlap_px"]
    (root / "layout.json").write_text(json.dumps(raw))
    return "overlap_px"


def _layout_overlap_too_big(root: Path) -> str:
    raw = json.loads((root / "layout.json").read_text())
    raw["overlap_px"] = raw["tile_size_px"][0] + 4
    (root / "layout.json").write_text(json.dumps(raw))
    return "layout.json"


BREAKAGES = {
    "missing tile": _missing_tile, "empty section": _empty_section, "RGB PNG": _rgb_png, "16-bit PNG": _png_16_bit,
    "16-bit TIFF": _tiff_16_bit, "wrong tile size": _wrong_size, "no layout.json": _no_layout,
    "layout.json not JSON": _layout_not_json, "layout.json lacks a key": _layout_lacks_keys,
    "overlap larger than the tile": _layout_overlap_too_big,
}


@pytest.mark.parametrize("case", sorted(BREAKAGES))
def test_bad_input_is_a_clear_error_naming_the_file(good, tmp_path, case):
    root = tmp_path / "em"
    shutil.copytree(good, root)
    names = BREAKAGES[case](root)
    with pytest.raises(InputDataError) as err:
        connectomics.run(ConnectomicsParams(), [root], tmp_path / "out", lambda *a: None)
    assert names in str(err.value), str(err.value)


def test_rtlib_em_run_writes_the_documented_result(good, tmp_path):
    """`rtlib em run INPUT_DIR -o RESULT.zarr`: the result group has the README's arrays, dtypes and files."""
    import zarr
    from typer.testing import CliRunner

    from rtlib.cli import app
    from rtlib.workloads.connectomics import io
    from rtlib.workloads.connectomics.graph import read_graphml
    from rtlib.workloads.connectomics.skeleton import read_swc

    output = tmp_path / "result.zarr"
    out = CliRunner().invoke(app, ["em", "run", str(good), "-o", str(output), "--quiet"])
    assert out.exit_code == 0, (out.output, out.exception)
    summary = json.loads(out.output[out.output.index("{"):])
    assert summary["output"] == str(output) and summary["shape"] == list(SHAPE)
    group = zarr.open_group(str(output), mode="r")
    assert group[io.IMAGE].dtype == np.uint8 and group[io.IMAGE].shape == SHAPE
    assert group[io.MASK].dtype == np.bool_ and group[io.MASK].shape == SHAPE
    assert group[io.SEGMENTATION].dtype in (np.uint32, np.uint64) and group[io.SEGMENTATION].shape == SHAPE
    assert list(group.attrs["scale_nm"]) == [40.0, 16.0, 16.0]
    labels = group[io.SEGMENTATION][...]
    ids = {int(v) for v in np.unique(labels[labels > 0])}
    assert len(ids) == summary["neurons"] > 0
    assert not labels[group[io.MASK][...]].any()  # excluded voxels are never neurons
    swcs = sorted((output / io.SKELETONS).glob("*.swc"))
    assert {int(p.stem) for p in swcs} <= ids and len(swcs) == summary["skeletons"] > 0
    vertices, _ = read_swc(swcs[0])
    assert vertices[:, 2].max() <= SHAPE[0] * 40.0 + 20 and vertices[:, 0].max() <= SHAPE[2] * 16.0 + 8  # x y z in nm
    graph = read_graphml(output / io.GRAPH)
    assert set(graph.nodes) == ids and graph.number_of_edges() == summary["contacts"]
    assert all(d["area_nm2"] > 0 for *_, d in graph.edges(data=True))
    assert not list(tmp_path.glob(".em-*"))  # the scratch directory is gone


def test_a_bad_connectomics_job_fails_with_that_message_and_a_good_one_is_done(good, tmp_path):
    from rtlib import jobs
    from rtlib.compute.local import LocalDaskBackend
    from rtlib.runtime import open_runtime
    from rtlib.states import State
    import zarr

    from helpers import make_settings

    settings = make_settings(tmp_path / "ws")
    aps = Path(settings.endpoints["aps"].root)
    shutil.copytree(good, aps / "raw/em_good")
    shutil.copytree(good, aps / "raw/em_bad")
    _missing_tile(aps / "raw/em_bad")
    compute = LocalDaskBackend(workers=2)
    compute.start()
    rt = open_runtime(settings)
    rt.compute = compute
    try:
        ok = jobs.submit(rt.store, settings, "connectomics", source_endpoint="aps", inputs=["raw/em_good"])
        bad = jobs.submit(rt.store, settings, "connectomics", source_endpoint="aps", inputs=["raw/em_bad"])
        # the same input with its blocks as dask tasks on the workers (worker_client), 4 blocks in the plane
        split = jobs.submit(rt.store, settings, "connectomics", source_endpoint="aps", inputs=["raw/em_good"],
                            params={"split_over_workers": True, "block_px": 64})
        rt.agent("local").run(until_idle=True, max_seconds=240)
        done, failed = rt.store.get_job(ok), rt.store.get_job(bad)
        assert done.state == State.DONE, (done.state, done.error)
        assert done.summary["neurons"] > 0 and done.summary["shape"] == list(SHAPE)
        assert failed.state == State.FAILED, (failed.state, failed.error)
        assert "InputDataError" in failed.error and "tile_01_00" in failed.error and "sections/0001" in failed.error, failed.error
        blocks = rt.store.get_job(split)
        assert blocks.state == State.DONE, (blocks.state, blocks.error)
        assert blocks.summary["split_over_workers"] is True and done.summary["split_over_workers"] is False
        assert blocks.summary["blocks"] == 4 and done.summary["blocks"] == 1
        # the blocks give the one-block result
        for key in ("neurons", "contacts", "skeletons", "cable_length_um"):
            assert blocks.summary[key] == done.summary[key], key
        segmentations = [zarr.open_group(str(_result_dir(settings, job)), mode="r")["segmentation"][...] for job in (done, blocks)]
        np.testing.assert_array_equal(*segmentations)
    finally:
        rt.compute = None
        rt.close()
        compute.close()


def _result_dir(settings, job) -> Path:
    where = job.output_path.format(workload=job.workload, job_id=job.id)  # the result as copied back to the beamline
    found = list((Path(settings.endpoints[job.dest_endpoint].root) / where).rglob(connectomics.RESULT_NAME))
    assert len(found) == 1, (job.dest_endpoint, job.output_path, found)
    return found[0]
