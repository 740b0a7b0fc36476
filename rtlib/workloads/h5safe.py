"""Opening an HDF5 input so that it reads nothing but the job's own staged files, a bounded chunk at a time.

HDF5 can make a reader open other files than the one it was given: an
external link, a virtual dataset (VDS) mapping sources in other files, and a
dataset whose raw bytes are kept in an external file (``external=``) are all
followed by the library on a plain read, and their bytes would end up in the
job's results. A filtered chunk can also decode to far more memory than the
file holds: HDF5's deflate filter grows its buffer to whatever the stream
inflates to, so a 1 MB file can ask for gigabytes per chunk.

``open_input`` therefore audits the whole file before anything is read:
every link, and every dataset's storage, chunk shape and filter pipeline.
Links, mappings and external storage are allowed only where every file HDF5
could open for them is one of the job's staged input files (files those
point to are audited in turn); chunks larger than ``MAX_CHUNK_BYTES`` once
decoded, filters outside ``FILTERS`` and stored chunks whose stream decodes
past their declared size are refused. Each refusal is an InputDataError that
names the file, the dataset or link, the outside file and what to do.
"""

from __future__ import annotations

import os
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import h5py
import hdf5plugin  # noqa: F401  registers the LZ4 / bitshuffle / Blosc filters detectors write with
import numpy as np

from ..errors import InputDataError

# One chunk, decoded, may take at most this many bytes: HDF5 holds a whole chunk in memory to read any of it.
MAX_CHUNK_BYTES = 256 * 2**20
# A stored (compressed) chunk is never much larger than its decoded size; past this slack it is crafted.
STORED_SLACK_BYTES = 2**20
# Links visited in one file before the audit gives up: a NeXus file has hundreds, a crafted one can have millions.
MAX_LINKS = 100_000

GZIP, SHUFFLE, FLETCHER32, LZF = 1, 2, 3, 32000
BLOSC, LZ4, BITSHUFFLE = hdf5plugin.BLOSC_ID, hdf5plugin.LZ4_ID, hdf5plugin.BSHUF_ID
# The filters detectors write with, and the only ones whose decoded size rtlib can bound (see _check_stored_chunks).
FILTERS = {GZIP: "gzip", SHUFFLE: "shuffle", FLETCHER32: "fletcher32", LZF: "lzf", BLOSC: "blosc", LZ4: "lz4",
           BITSHUFFLE: "bitshuffle"}
# Most bytes one stored byte can decode to (deflate's limit; lzf's longest back-reference, 264 bytes from 3): a
# chunk stored in fewer than MAX_CHUNK_BYTES / this bytes cannot decode past the cap, and is not decoded to check.
_MAX_EXPANSION = {GZIP: 1032, LZF: 100}
_WITH_SIZE_HEADER = (BLOSC, LZ4, BITSHUFFLE)  # their decoders allocate what the chunk's header says
_BITSHUFFLE_COMPRESSED = (2, 3)  # cd_values[4]: LZ4, zstd; 0 is a pure bit shuffle, which keeps the size
_FIX_OUTSIDE = ("stage that file with the job (next to this one), or copy its data into this file "
                "(h5repack, or h5py copy) before submitting")


@contextmanager
def open_input(path: Path, staged: Iterable[Path | str] = (), *, workload: str, what: str = "input file",
               check_streams: bool = True) -> Iterator[h5py.File]:
    """``path`` opened read-only, after the audit; ``staged`` are the job's input files (``path`` is one of them).

    ``check_streams=False`` skips decoding the large compressed chunks once to measure them, for a process that
    re-opens a file its run has already audited (laue's row blocks on dask workers).
    """
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{what} {path} does not exist; check that it was staged, and its path")
    if path.is_dir():
        raise InputDataError(f"{what} {path} is a directory; {workload} needs the HDF5 file itself")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise InputDataError(unreadable_message(path, err, what)) from None
    with f:
        allowed = {os.path.realpath(p) for p in staged} | {os.path.realpath(path)}
        _audit(f, allowed, check_streams, seen={os.path.realpath(path)})
        yield f


def unreadable_message(path: Path, err: OSError, what: str = "input file") -> str:
    size = path.stat().st_size
    text = str(err)
    if "truncated" in text:
        problem = "is truncated (shorter than its HDF5 metadata says; an interrupted transfer?)"
    elif "signature" in text:
        problem = "is not an HDF5 file (no HDF5 signature at its start; corrupt, or another format)"
    else:
        problem = "cannot be opened as HDF5"
    return f"{what} {path} ({size} bytes) {problem}: h5py says {text!r}. Re-transfer it or check what the detector wrote"


# -- the audit ------------------------------------------------------------------------------


def _audit(f: h5py.File, allowed: set[str], check_streams: bool, seen: set[str]) -> None:
    """Check every link and dataset of ``f``, then every staged file they lead to (once each)."""
    label = f.filename
    holder = Path(os.path.abspath(f.filename))
    names: list[tuple[str, object]] = []

    def collect(name: str, link: object) -> object:
        names.append((name, link))
        return True if len(names) > MAX_LINKS else None  # a non-None return stops the walk

    f.visititems_links(collect)
    if len(names) > MAX_LINKS:
        raise InputDataError(f"{label} holds more than {MAX_LINKS} links, more than any detector file; "
                             "it is damaged or crafted. Re-transfer it or check what the beamline wrote")
    others: set[str] = set()
    followed: list[tuple[str, str]] = []  # (link, what it names), checked once the files they lead to are
    for name, link in names:
        path = "/" + name
        if isinstance(link, h5py.ExternalLink):
            what = f"{path} is an external link to {link.path} in {link.filename!r}"
            target = _only_staged(_candidates(link.filename, holder, "HDF5_EXT_PREFIX"), allowed, label, what)
            if target:
                others.add(target)
                followed.append((path, what))
        elif isinstance(link, h5py.HardLink):
            try:
                obj = f.get(path)
            except (KeyError, OSError):  # an object HDF5 cannot open is read by nobody
                continue
            if isinstance(obj, h5py.Dataset):
                others |= _checked_dataset(obj, path, label, holder, allowed, check_streams)
        elif not isinstance(link, h5py.SoftLink):  # soft links name paths in this file, which are audited
            raise InputDataError(f"{label}: {path} is a user-defined link ({type(link).__name__}), which rtlib cannot "
                                 "check; re-write the file with plain (hard, soft) links")
    for other in sorted(others):
        if os.path.realpath(other) in seen:
            continue
        seen.add(os.path.realpath(other))
        try:
            g = h5py.File(other, "r")
        except OSError as err:
            raise InputDataError(f"{label} reads from {unreadable_message(Path(other), err)}") from None
        with g:
            _audit(g, allowed, check_streams, seen)
    for path, what in followed:
        _check_followed(f, path, what, allowed)


def _check_followed(f: h5py.File, path: str, what: str, allowed: set[str]) -> None:
    """Follow an external link whose files were all audited: HDF5 must have opened the file the rules predict."""
    try:
        opened = os.path.realpath(f[path].file.filename)
    except (KeyError, OSError):  # dangling: nothing is read through it
        return
    if opened not in allowed:
        raise InputDataError(f"{f.filename}: {what}, which HDF5 opened as {opened}, outside the job's staged "
                             f"input files; {_FIX_OUTSIDE}")


def _checked_dataset(d: h5py.Dataset, path: str, label: str, holder: Path, allowed: set[str], check_streams: bool) -> set[str]:
    """The staged files a dataset reads from besides its own; refuses storage outside them and unbounded chunks."""
    others: set[str] = set()
    for name, _offset, _size in d.external or ():
        where = _efile_candidates(name, holder)
        what = f"dataset {path} keeps its bytes in {name!r} (HDF5 external storage)"
        if not _only_staged(where, allowed, label, what):
            raise InputDataError(f"{label}: {what}, which does not exist; {_FIX_OUTSIDE}")
    if d.is_virtual:
        for source in d.virtual_sources():
            what = f"virtual dataset {path} maps {source.dset_name} in {source.file_name!r}"
            if "%" in source.file_name:
                raise InputDataError(f"{label}: {what}, a file-name pattern rtlib cannot check; "
                                     "materialise the dataset (h5repack -l CONTI) before submitting")
            if source.file_name == ".":  # this same file, whose links are audited
                continue
            target = _only_staged(_candidates(source.file_name, holder, "HDF5_VDS_PREFIX"), allowed, label, what)
            if target:
                others.add(target)
    if d.chunks is not None:
        _check_chunks(d, path, label, check_streams)
    return others


def _only_staged(candidates: list[Path], allowed: set[str], label: str, what: str) -> str:
    """The first of ``candidates`` that exists (the one HDF5 opens), or ''; refuses when any that exists is not
    one of the staged files."""
    existing = [str(c) for c in candidates if os.path.exists(c)]  # os.path: an unusable name is simply absent
    outside = [os.path.realpath(c) for c in existing if os.path.realpath(c) not in allowed]
    if outside:
        raise InputDataError(f"{label}: {what}, which resolves to {outside[0]}, outside the job's staged input files; "
                             f"rtlib refuses to read it: {_FIX_OUTSIDE}")
    return os.path.abspath(existing[0]) if existing else ""


def _candidates(name: str, holder: Path, env_var: str) -> list[Path]:
    """Every file HDF5 may open for a link or VDS source named ``name`` in ``holder``, in its order
    (H5F_prefix_open_file): the name itself if absolute, else (or failing that, its last part) under each
    prefix of ``env_var``, in the holder's folder, and in the working directory."""
    given = Path(name)
    tail = Path(given.name) if given.is_absolute() else given
    prefixes = [p for p in os.environ.get(env_var, "").split(os.pathsep) if p]
    found = [given] if given.is_absolute() else []
    for prefix in prefixes:
        found.append(Path(prefix.replace("${ORIGIN}", str(holder.parent))) / tail)
        found.append(Path(prefix) / tail)  # the prefix as written, should this HDF5 not expand ${ORIGIN}
    return found + [holder.parent / tail, Path.cwd() / tail]


def _efile_candidates(name: str, holder: Path) -> list[Path]:
    """The file HDF5 reads external storage ``name`` from: absolute, else under HDF5_EXTFILE_PREFIX, else the
    working directory (not the holder's folder)."""
    prefix = os.environ.get("HDF5_EXTFILE_PREFIX", "")
    base = Path(prefix.replace("${ORIGIN}", str(holder.parent))) if prefix else Path.cwd()
    return [Path(name) if Path(name).is_absolute() else base / name]


# -- chunks and filters --------------------------------------------------------------------


def _check_chunks(d: h5py.Dataset, path: str, label: str, check_streams: bool) -> None:
    declared = int(np.prod(d.chunks, dtype=np.float64)) * d.dtype.itemsize
    if declared > MAX_CHUNK_BYTES:
        shape = " x ".join(map(str, d.chunks))
        raise InputDataError(
            f"{label}: dataset {path} is stored in chunks of {shape} {d.dtype} ({declared / 2**20:.0f} MiB each), more "
            f"than the {MAX_CHUNK_BYTES / 2**20:.0f} MiB one chunk may take in memory; re-write it with smaller chunks "
            "(one frame per chunk, as detectors write: h5repack -l CHUNK=...)"
        )
    dcpl = d.id.get_create_plist()
    pipeline = [dcpl.get_filter(i) for i in range(dcpl.get_nfilters())]
    for code, _flags, _values, name in pipeline:
        if code not in FILTERS:
            raise InputDataError(
                f"{label}: dataset {path} is compressed with filter {code} ({name.decode(errors='replace')}), which rtlib "
                f"does not read (it cannot bound what it decodes to); re-compress it with one of {', '.join(FILTERS.values())}"
            )
    coders = [i for i, entry in enumerate(pipeline) if _changes_size(entry)]
    if len(coders) > 1:
        raise InputDataError(f"{label}: dataset {path} is compressed twice ({', '.join(FILTERS[pipeline[i][0]] for i in coders)}); "
                             "re-compress it with one of them")
    if pipeline and check_streams:  # a filtered chunk's stored size is read from the file, so check it too
        coder = coders[0] if coders else None
        _check_stored_chunks(d, path, label, declared, coder, None if coder is None else pipeline[coder][0])


def _changes_size(entry: tuple) -> bool:
    code, _flags, values, _name = entry
    if code == BITSHUFFLE:
        return len(values) > 4 and values[4] in _BITSHUFFLE_COMPRESSED
    return code in _MAX_EXPANSION or code in _WITH_SIZE_HEADER


def _check_stored_chunks(d: h5py.Dataset, path: str, label: str, declared: int, index: int | None, code: int | None) -> None:
    """Refuse a stored chunk that decodes past its declared size: HDF5's deflate and h5py's lzf grow their buffer
    to whatever the stream holds, and blosc, lz4 and bitshuffle allocate what the chunk's own header says."""
    stored: list = []
    d.id.chunk_iter(stored.append)
    limit = declared + 64  # fletcher32 before the compressor adds 4 bytes
    with open(d.file.filename, "rb") as raw_file:
        for info in stored:
            if info.size > declared + STORED_SLACK_BYTES:
                raise InputDataError(f"{label}: dataset {path} stores a chunk of {info.size} bytes at {info.chunk_offset}, "
                                     f"more than its {declared} bytes decoded; the file is damaged or crafted. Re-transfer it")
            if index is None or info.filter_mask & (1 << index):
                continue  # no compressor, or it was skipped for this chunk: stored as decoded
            decoded = _decoded_size(d, info, code, raw_file, limit)
            if decoded is None:
                raise InputDataError(f"{label}: dataset {path} has a {FILTERS[code]} chunk of {info.size} bytes at "
                                     f"{info.chunk_offset}, too large for rtlib to bound what it decodes to; re-compress "
                                     "it with gzip, lz4 or bitshuffle")
            if decoded > limit:
                raise InputDataError(
                    f"{label}: dataset {path} has a {FILTERS[code]} chunk at {info.chunk_offset} of {info.size} bytes that "
                    f"decodes to more than its declared {declared} bytes ({decoded} or more): a decompression bomb, crafted "
                    "or damaged. Re-transfer the file or check what the detector wrote"
                )


def _decoded_size(d: h5py.Dataset, info, code: int, raw_file, limit: int) -> int | None:
    """What a stored chunk decodes to (0: it cannot pass the cap; None: unknown); no more than ``limit`` + 1
    bytes of it are ever decoded here."""
    if code in _MAX_EXPANSION:
        if info.size * _MAX_EXPANSION[code] <= MAX_CHUNK_BYTES:
            return 0
        if code != GZIP:
            return None  # lzf keeps no size, and rtlib has no bounded lzf decoder
        _mask, raw = d.id.read_direct_chunk(info.chunk_offset)
        try:
            return len(zlib.decompressobj().decompress(raw, limit + 1))
        except zlib.error:
            return 0  # HDF5 fails on this chunk by itself, before growing a buffer
    raw_file.seek(info.byte_offset)  # chunk_iter's offsets count from the file's start, user block included
    header = raw_file.read(16)
    if len(header) < 16:
        return 0  # a chunk past the end: HDF5 fails to read it
    if code == BLOSC:
        return struct.unpack("<I", header[4:8])[0]
    return struct.unpack(">Q", header[:8])[0]  # lz4 and bitshuffle: big-endian total size first
