"""Issue 15, findings 6 (EM part) and 7 (EM part): a crafted layout.json is an InputDataError naming the
file and the field, before anything is allocated, instead of a 58 TiB request, a traceback, or (rows 1.5)
a result silently missing half the tiles."""

from __future__ import annotations

import json
import re
import shutil
import time
import tracemalloc
from pathlib import Path

import pytest

from rtlib.errors import InputDataError
from rtlib.synth.em import write_em_dataset
from rtlib.workloads import connectomics
from rtlib.workloads.connectomics.params import ConnectomicsParams

SHAPE = (3, 128, 128)  # 2 x 2 tiles of 96 px overlapping by 64 px


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("em_layout") / "em"
    write_em_dataset(root, SHAPE, seed=2, num_neurites=6)
    return root


BAD_LAYOUTS = {
    "tile 10^6 px": ({"tile_size_px": 10**6}, "tile_size_px", "32768"),
    "tile [10^6, 96]": ({"tile_size_px": [10**6, 96]}, "tile_size_px", "32768"),
    "rows 100000": ({"rows": 100000}, "rows", "1024"),
    "cols 100000": ({"cols": 100000}, "cols", "1024"),
    "rows -1": ({"rows": -1}, "rows", "-1"),
    "rows 0": ({"rows": 0}, "rows", "0"),
    "rows 1.5": ({"rows": 1.5}, "rows", "1.5"),  # int() made it 1: half the tiles silently dropped
    "cols 2.0": ({"cols": 2.0}, "cols", "2.0"),
    "rows true": ({"rows": True}, "rows", "True"),
    "tile 'big'": ({"tile_size_px": "big"}, "tile_size_px", "'big'"),
    "tile [96, 'x']": ({"tile_size_px": [96, "x"]}, "tile_size_px", "'x'"),
    "tile [96, 96, 96]": ({"tile_size_px": [96, 96, 96]}, "tile_size_px", "2"),
    "overlap 2.5": ({"overlap_px": 2.5}, "overlap_px", "2.5"),
    "overlap '64'": ({"overlap_px": "64"}, "overlap_px", "'64'"),
    "pixel size '16'": ({"pixel_size_nm": "16"}, "pixel_size_nm", "'16'"),
    "pixel size 1e300": ({"pixel_size_nm": 1e300}, "pixel_size_nm", "1e+300"),
    "layout a list": (["tile_size_px", 96], "layout.json", "list"),
}


def _write_layout(root: Path, change) -> None:
    raw = json.loads((root / "layout.json").read_text())
    (root / "layout.json").write_text(json.dumps(change if isinstance(change, list) else {**raw, **change}))


def _run_refused(root: Path, out: Path) -> str:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(InputDataError) as err:
            connectomics.run(ConnectomicsParams(), [root], out, lambda *a: None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 10
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert not (out / connectomics.RESULT_NAME).exists()  # refused before the result was made
    return str(err.value)


@pytest.mark.parametrize("case", list(BAD_LAYOUTS))
def test_a_bad_layout_value_is_an_input_error_naming_file_and_field(good, tmp_path, case):
    change, field, shown = BAD_LAYOUTS[case]
    root = tmp_path / "em"
    shutil.copytree(good, root)
    _write_layout(root, change)
    msg = _run_refused(root, tmp_path / "out")
    assert str(root / "layout.json") in msg and field in msg and shown in msg, msg
    assert "Traceback" not in msg and "\n" not in msg


def test_a_layout_within_each_bound_but_too_big_in_total_names_the_size_and_the_cap(good, tmp_path):
    root = tmp_path / "em"
    shutil.copytree(good, root)
    _write_layout(root, {"tile_size_px": [32768, 32768], "overlap_px": 64, "rows": 8, "cols": 8})  # 64 GiB of tiles a section
    msg = _run_refused(root, tmp_path / "out")
    size = re.search(r"needs ([0-9.]+) GiB", msg)
    assert size and float(size.group(1)) > 64 and "MAX_SECTION_BYTES" in msg and "16 GiB" in msg, msg
    for i in range(3, 200):  # many (empty) sections of a grid whose one section fits: the whole result does not
        (root / "sections" / f"{i:04d}").mkdir()
    _write_layout(root, {"tile_size_px": [100, 100], "overlap_px": 50, "rows": 1000, "cols": 1000})
    msg = _run_refused(root, tmp_path / "out")
    size = re.search(r"200 sections .* a result of ([0-9.]+) TiB", msg)
    assert size and float(size.group(1)) > 1 and "MAX_RESULT_BYTES" in msg and "cap of 1 TiB" in msg, msg


def test_tiles_outside_the_layout_grid_are_not_silently_dropped(good, tmp_path):
    """rows = 1 while the sections hold 2 rows of tiles: refused, naming the tiles left out."""
    root = tmp_path / "em"
    shutil.copytree(good, root)
    _write_layout(root, {"rows": 1})
    with pytest.raises(InputDataError) as err:
        connectomics.run(ConnectomicsParams(), [root], tmp_path / "out", lambda *a: None)
    assert "tile_01_00" in str(err.value) and "rows" in str(err.value), str(err.value)
