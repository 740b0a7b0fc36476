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
    raw["overlap_px"] = 90
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


def test_a_bad_connectomics_job_fails_with_that_message_and_a_good_one_is_done(good, tmp_path):
    from rtlib import jobs
    from rtlib.compute.local import LocalDaskBackend
    from rtlib.runtime import open_runtime
    from rtlib.states import State

    from helpers import make_settings

    settings = make_settings(tmp_path / "ws")
    aps = Path(settings.endpoints["aps"].root)
    shutil.copytree(good, aps / "raw/em_good")
    shutil.copytree(good, aps / "raw/em_bad")
    _missing_tile(aps / "raw/em_bad")
    compute = LocalDaskBackend(workers=1)
    compute.start()
    rt = open_runtime(settings)
    rt.compute = compute
    try:
        ok = jobs.submit(rt.store, settings, "connectomics", source_endpoint="aps", inputs=["raw/em_good"])
        bad = jobs.submit(rt.store, settings, "connectomics", source_endpoint="aps", inputs=["raw/em_bad"])
        rt.agent("local").run(until_idle=True, max_seconds=240)
        done, failed = rt.store.get_job(ok), rt.store.get_job(bad)
        assert done.state == State.DONE, (done.state, done.error)
        assert done.summary["neurons"] > 0 and done.summary["shape"] == list(SHAPE)
        assert failed.state == State.FAILED, (failed.state, failed.error)
        assert "InputDataError" in failed.error and "tile_01_00" in failed.error and "sections/0001" in failed.error, failed.error
    finally:
        rt.compute = None
        rt.close()
        compute.close()
