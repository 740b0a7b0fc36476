"""Reading an EM tile directory and writing the result as a Zarr group.

Input layout (see the README)::

    INPUT/layout.json                 {"tile_size_px": [h, w] or n, "overlap_px": n, "pixel_size_nm": x,
                                       "section_thickness_nm": z, "rows": r, "cols": c}  (rows/cols optional)
    INPUT/sections/0000/tile_RR_CC.png   8-bit grayscale tiles (.png, .tif or .tiff)

Result layout (``RESULT.zarr``; volumes chunked as the processing blocks)::

    tiles              (z, n, th, tw) uint8  the input tiles, n = rows x cols in row-major order
    tile_positions_px  (z, n, 2) float64     stitched top-left corner (y, x) of each tile, section frame
    mosaic             (z, Y, X) uint8       stitched, not yet aligned sections on a canvas whose pixel
                                             (0, 0) is at attrs["canvas_origin_px"] of the section frame
    image              (z, y, x) uint8       stitched and aligned stack, in the frame of section 0's tile 00_00;
                                             pixels no tile covered hold their nearest covered value (masked)
    mask               (z, y, x) bool        true = excluded (out of tissue, vessel, no data)
    boundary           (z, y, x) uint8       membrane probability x 255 (the network's output)
    foreground         (z, y, x) uint8       neuron-interior probability x 255 (the network's output)
    segmentation       (z, y, x) uint32      neurons, 0 = background
    skeletons/<label>.swc            one per neuron, coordinates in nm (x y z)
    graph.graphml                    nodes = neuron labels, edges = contacts with area_nm2

Root attributes: ``pixel_size_nm``, ``section_thickness_nm``, ``scale_nm`` (z, y, x), ``rtlib_version``.
Every failure of the input is an InputDataError that names the file and the fix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ...errors import InputDataError
from ...safetext import shown

LAYOUT = "layout.json"
TILE_PATTERN = re.compile(r"^tile_(\d+)_(\d+)\.(png|tif|tiff)$", re.IGNORECASE)
IMAGE, MASK, SEGMENTATION, BOUNDARY, FOREGROUND = "image", "mask", "segmentation", "boundary", "foreground"
TILES, TILE_POSITIONS, MOSAIC = "tiles", "tile_positions_px", "mosaic"
SKELETONS, GRAPH = "skeletons", "graph.graphml"


@dataclass(frozen=True)
class Layout:
    tile_px: tuple[int, int]
    overlap_px: int
    rows: int
    cols: int
    pixel_size_nm: float
    section_thickness_nm: float

    @property
    def frame_shape(self) -> tuple[int, int]:
        """The nominal mosaic extent: the output frame of every section."""
        return (self.rows * (self.tile_px[0] - self.overlap_px) + self.overlap_px,
                self.cols * (self.tile_px[1] - self.overlap_px) + self.overlap_px)


# What a layout.json may ask for. Tiles are decoded whole and a section's tiles and mosaic are held in
# memory together, so each is bounded before anything is allocated.
MAX_LAYOUT_FILE_BYTES = 2**20  # layout.json is a few lines
MAX_TILE_SIDE_PX = 32768  # a decoded tile of 32768 x 32768 px is 1 GiB
MAX_GRID_SIDE_TILES = 1024  # rows or cols of a section's tile grid
MAX_LENGTH_NM = 1e6  # pixel size or section thickness: beyond 1 mm is a unit mistake
MAX_SECTION_BYTES = 16 * 2**30  # one section's tiles + its stitched mosaic, in memory at once
MAX_RESULT_BYTES = 2**40  # every array of the result Zarr group, all sections (1 TiB)
# bytes of the result per pixel of the output frame: image, mask, boundary, foreground and mosaic (uint8) and segmentation (uint32)
RESULT_BYTES_PER_FRAME_PX = 5 + 4

TileSide = Annotated[int, Field(ge=2, le=MAX_TILE_SIDE_PX)]
GridSide = Annotated[int, Field(ge=1, le=MAX_GRID_SIDE_TILES)]
LengthNm = Annotated[float, Field(gt=0, le=MAX_LENGTH_NM, allow_inf_nan=False)]


class LayoutFile(BaseModel):
    """layout.json, strictly: whole numbers are JSON integers (1.5 rows is refused, not cut to 1), never text."""

    model_config = ConfigDict(strict=True, extra="ignore")  # other keys (a microscope's metadata) are left alone

    tile_size_px: tuple[TileSide, TileSide]
    overlap_px: Annotated[int, Field(ge=1, lt=MAX_TILE_SIDE_PX)]
    pixel_size_nm: LengthNm
    section_thickness_nm: LengthNm
    rows: GridSide | None = None
    cols: GridSide | None = None

    @field_validator("tile_size_px", mode="before")
    @classmethod
    def _square(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return (value, value)  # one number: a square tile
        if not isinstance(value, (list, tuple)):
            raise ValueError("must be an integer n or a pair [h, w] of integers")
        return tuple(value)  # strict: a tuple field takes no list once out of JSON


def _layout_problem(path: Path, err: ValidationError) -> InputDataError:
    problems = []
    for e in err.errors()[:6]:
        field = ".".join(str(p) for p in e["loc"]) or "(the whole file)"
        value = e["input"]
        value = shown(value) if isinstance(value, (str, int, float, type(None))) else "an object" if isinstance(value, dict) else "an array"
        problems.append(f"{field} = {value}: {e['msg'].removeprefix('Value error, ')}")
    return InputDataError(f"{path}: {'; '.join(dict.fromkeys(problems))}. Fix {LAYOUT}: tile_size_px n or [h, w] "
                          f"(integers 2..{MAX_TILE_SIDE_PX}), overlap_px an integer, pixel_size_nm and section_thickness_nm "
                          f"numbers > 0, rows and cols integers 1..{MAX_GRID_SIDE_TILES}")  # fmt: skip


def find_root(inputs: list[Path]) -> Path:
    """The input directory: one given as such, or the folder of a staged layout.json (the shallowest)."""
    paths = [Path(p) for p in inputs]
    if not paths:
        raise InputDataError("connectomics got no inputs; stage the EM directory (layout.json and sections/)")
    for p in paths:
        if p.is_dir() and (p / LAYOUT).is_file():
            return p
    layouts = sorted((p for p in paths if p.name == LAYOUT and p.is_file()), key=lambda p: len(p.parts))
    if layouts:
        return layouts[0].parent
    raise InputDataError(
        f"no {LAYOUT} among the {len(paths)} inputs ({', '.join(str(p) for p in paths[:5])}"
        f"{' ...' if len(paths) > 5 else ''}); an EM input is a directory with {LAYOUT} and sections/0000/tile_00_00.png ..."
    )


def read_layout(root: Path) -> Layout:
    """layout.json checked (types, ranges, and the size of what it asks for) before anything is allocated."""
    path = root / LAYOUT
    try:
        if path.stat().st_size > MAX_LAYOUT_FILE_BYTES:
            raise InputDataError(f"{path} is {path.stat().st_size} bytes, more than {MAX_LAYOUT_FILE_BYTES} "
                                 f"(MAX_LAYOUT_FILE_BYTES); a {LAYOUT} is a few lines: rewrite it")  # fmt: skip
        text = path.read_text()
        raw = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise InputDataError(f"{path} is not readable JSON ({type(err).__name__}: {str(err)[:200]}); rewrite it "
                             "(see the README for its keys)") from None  # fmt: skip
    if not isinstance(raw, dict):
        raise InputDataError(f"{path} holds a JSON {type(raw).__name__}, not an object; rewrite it (see the README for its keys)")
    missing = [k for k in ("tile_size_px", "overlap_px", "pixel_size_nm", "section_thickness_nm") if k not in raw]
    if missing:
        raise InputDataError(f"{path} lacks {', '.join(missing)}; add them (tile size and overlap in px, sizes in nm)")
    try:
        spec = LayoutFile.model_validate_json(text)
    except ValidationError as err:
        raise _layout_problem(path, err) from None
    tile = spec.tile_size_px
    if not spec.overlap_px < min(tile):
        raise InputDataError(f"{path}: tile_size_px {tile} and overlap_px {spec.overlap_px} are inconsistent (need 0 < overlap < tile)")
    sections = section_dirs(root)
    rows, cols = spec.rows, spec.cols
    if rows is None or cols is None:
        keys = [tile_key(p) for p in sections[0].iterdir() if tile_key(p)]
        if not keys:
            raise InputDataError(f"section {sections[0]} holds no tile_RR_CC.png files")
        rows, cols = max(k[0] for k in keys) + 1, max(k[1] for k in keys) + 1
        if max(rows, cols) > MAX_GRID_SIDE_TILES:
            raise InputDataError(f"section {sections[0]} has tiles up to tile_{rows - 1:02d}_{cols - 1:02d}: a grid of {rows} x {cols}, "
                                 f"more than {MAX_GRID_SIDE_TILES} (MAX_GRID_SIDE_TILES) a side; remove the stray tiles")  # fmt: skip
    layout = Layout(tile, spec.overlap_px, rows, cols, spec.pixel_size_nm, spec.section_thickness_nm)
    _check_size(path, layout, len(sections))
    return layout


def _check_size(path: Path, layout: Layout, sections: int) -> None:
    """Refuse a layout whose section (in memory) or result (on disk) would exceed its cap."""
    h, w = layout.frame_shape
    tiles_px = layout.rows * layout.cols * layout.tile_px[0] * layout.tile_px[1]
    section_bytes = tiles_px + h * w
    result_bytes = sections * (tiles_px + RESULT_BYTES_PER_FRAME_PX * h * w + 16 * layout.rows * layout.cols)
    grid = f"{layout.rows} x {layout.cols} tiles of {layout.tile_px[0]} x {layout.tile_px[1]} px"
    if section_bytes > MAX_SECTION_BYTES:
        raise InputDataError(f"{path}: one section of {grid} needs {section_bytes / 2**30:.4g} GiB in memory, more than the cap of "
                             f"{MAX_SECTION_BYTES / 2**30:g} GiB (MAX_SECTION_BYTES); check tile_size_px, rows and cols")  # fmt: skip
    if result_bytes > MAX_RESULT_BYTES:
        raise InputDataError(f"{path}: {sections} sections of {grid} make a result of {result_bytes / 2**40:.4g} TiB, more than the "
                             f"cap of {MAX_RESULT_BYTES / 2**40:g} TiB (MAX_RESULT_BYTES); split the stack into smaller jobs")  # fmt: skip


def tile_key(path: Path) -> tuple[int, int] | None:
    m = TILE_PATTERN.match(path.name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def section_dirs(root: Path) -> list[Path]:
    folder = root / "sections"
    dirs = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not dirs:
        raise InputDataError(f"{folder} has no section folders; expected sections/0000/, sections/0001/, ...")
    return dirs


# reading one chunk of a result array allocates it whole; rtlib writes chunks of a few MB
MAX_CHUNK_BYTES = 2**30


def read_tile(path: Path, expected_px: tuple[int, int] | None = None) -> np.ndarray:
    """One 8-bit tile; with ``expected_px`` (rows, cols), its declared size is checked before it is decoded."""

    def check_declared(shape: tuple[int, ...]) -> None:  # a crafted header must not make us allocate its size
        if expected_px is not None and tuple(shape[:2]) != tuple(expected_px):
            raise InputDataError(f"tile {path} declares {' x '.join(map(str, shape))} px; {LAYOUT} says "
                                 f"{expected_px[0]}x{expected_px[1]}")

    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                check_declared(tif.series[0].shape)
                image = tif.asarray()
        else:
            from PIL import Image

            with Image.open(path) as im:
                if im.mode not in ("L", "P"):
                    raise InputDataError(f"tile {path} is a {im.mode} image; tiles must be 8-bit grayscale (mode L)")
                check_declared((im.size[1], im.size[0]))
                image = np.asarray(im)
    except InputDataError:
        raise
    except Exception as err:  # PIL and tifffile raise many types for a broken file
        raise InputDataError(f"tile {path} cannot be read ({type(err).__name__}: {err}); re-transfer it") from None
    if image.dtype != np.uint8 or image.ndim != 2:
        raise InputDataError(f"tile {path} holds {image.dtype} data of shape {image.shape}; tiles must be 8-bit grayscale (uint8, 2-D)")
    return image


def read_section(folder: Path, layout: Layout) -> dict[tuple[int, int], np.ndarray]:
    """All tiles of one section, checked to be complete, 8-bit and of the layout's size."""
    files = {tile_key(p): p for p in folder.iterdir() if tile_key(p)}
    if not files:
        raise InputDataError(f"section {folder} is empty: no tile_RR_CC.png files; re-acquire or remove the section")
    expected = {(r, c) for r in range(layout.rows) for c in range(layout.cols)}
    stray = sorted(set(files) - expected)
    if stray:  # the layout's rows and cols would silently leave them out of the mosaic
        names = ", ".join(f"tile_{r:02d}_{c:02d}" for r, c in stray[:8])
        raise InputDataError(f"section {folder} holds {len(stray)} tile(s) outside the {LAYOUT} grid of {layout.rows} x {layout.cols} "
                             f"({names}); correct rows and cols in {LAYOUT}, or remove those tiles")  # fmt: skip
    missing = sorted(expected - set(files))
    if missing:
        names = ", ".join(f"tile_{r:02d}_{c:02d}" for r, c in missing[:8])
        raise InputDataError(f"section {folder} lacks {len(missing)} of its {len(expected)} tiles ({names}); "
                             "re-transfer them: every section needs its full tile grid")
    tiles = {}
    for key in sorted(expected):
        tiles[key] = read_tile(files[key], layout.tile_px)  # its size is checked against the layout there
    return tiles


def write_result(path: Path, arrays: dict[str, np.ndarray], attrs: dict, chunks=(8, 256, 256)):
    """Write (or overwrite) the Zarr group at ``path`` with ``arrays`` and root ``attrs``; returns the group."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    for name, data in arrays.items():
        c = tuple(min(a, b) for a, b in zip(chunks, data.shape))
        group.create_array(name, data=data, chunks=c)
    group.attrs.update(attrs)
    return group


def create_result(path: Path, shape: tuple[int, int, int], layout: Layout, block: tuple[int, int, int], canvas_pad_px: int,
                  attrs: dict):
    """An empty result group at ``path`` (overwritten) with every array the stitch-and-align pass fills."""
    import zarr

    z, h, w = shape
    group = zarr.open_group(str(path), mode="w")
    n = layout.rows * layout.cols
    chunks = tuple(min(c, s) for c, s in zip(block, shape))
    group.create_array(TILES, shape=(z, n, *layout.tile_px), dtype=np.uint8, chunks=(1, n, *layout.tile_px), fill_value=0)
    group.create_array(TILE_POSITIONS, shape=(z, n, 2), dtype=np.float64, chunks=(z, n, 2), fill_value=0.0)
    canvas = (h + 2 * canvas_pad_px, w + 2 * canvas_pad_px)
    group.create_array(MOSAIC, shape=(z, *canvas), dtype=np.uint8, chunks=(1, *canvas), fill_value=0)
    group.create_array(IMAGE, shape=shape, dtype=np.uint8, chunks=chunks, fill_value=0)
    group.create_array(MASK, shape=shape, dtype=bool, chunks=chunks, fill_value=True)
    group.attrs.update(attrs)
    return group


def open_result(path: Path):
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as err:
        raise InputDataError(f"{path} is not an rtlib connectomics result (a Zarr group): {err}") from None
    for name, array in group.arrays():  # every read decodes whole chunks: a crafted chunk shape must not exhaust memory
        chunk_bytes = int(np.prod(array.chunks, dtype=np.float64)) * array.dtype.itemsize
        if chunk_bytes > MAX_CHUNK_BYTES:
            raise InputDataError(f"{path}: array {name!r} declares chunks of {' x '.join(map(str, array.chunks))} "
                                 f"{array.dtype} ({chunk_bytes / 1e9:.3g} GB each, more than {MAX_CHUNK_BYTES / 1e9:g} GB); "
                                 "rtlib never writes such chunks: the result is damaged or crafted, re-run `rtlib em run`")
    return group
