"""One batch of frames through every multi-tau level: the compiled update and its numpy twin.

The correlator state is frame-major, like the frames themselves, with the
pixel axis padded to a whole number of tiles: per level ``hist`` (the last
n-1 frames, zeros before the record starts), ``first`` (the first n-1
frames), ``g2`` (Σ I(t) I(t-d) per delay d, row d-1), ``total`` (Σ I) and
``unpaired`` (a frame waiting for its partner in the next level).

The compiled update gives each parallel task one tile of pixels and runs it
through every level before moving on, so a level's frames, its binned frames
for the next level and its sums stay in cache; the frames are read once, in
the order they lie in memory, and the products are vectorised over the
tile's pixels. Photon counts are integers: while the largest count seen so
far, times 2^(levels-1), stays below 2^24, every frame of every level is
exact in float32, and twice as many fit in a vector as in float64. Their
products are summed in float32 over runs of frames short enough that no
partial sum can reach 2^24 (a level whose single products could is summed in
float64), and each run's sums are added into the float64 state, so the
compiled update gives the numpy twin's sums bit for bit (integer sums below
2^53 do not depend on their order). Larger counts, or frames that are not
integers, are correlated in float64 throughout.
"""

from __future__ import annotations

import numpy as np

from .threads import run_tasks, thread_count

try:
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a dependency; this keeps a broken install usable
    HAVE_NUMBA = False

TILE = 256  # pixels per parallel task
GROUP = 128  # pixels per vectorised product loop (half a tile: measured fastest here)
FLOAT32_EXACT = 2**24  # integers below this are exact in float32
MIN_FLOAT32_RUN = 4  # frames per float32 run below which float64 is used instead


def level_counts(frames: int, lead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New frames each level receives from ``frames`` new level-0 frames, and the levels' unpaired flags after.

    A level with an unpaired frame waiting (``lead``) pairs it with its first new frame; an odd frame left at
    the end waits for the next batch."""
    counts = np.zeros(len(lead), np.int64)
    after = lead.copy()
    count = frames
    for level in range(len(lead)):
        counts[level] = count
        if count == 0:
            break
        available = count + lead[level]
        after[level] = available % 2
        count = available // 2
    return counts, after


def update_numpy(block, hist, first, total, g2, unpaired, counts, before, lead, n) -> None:
    """The update level by level over all pixels at once (numpy, float64): the reference the kernel must equal."""
    levels, keep, _ = hist.shape
    pixels = block.shape[1]
    half = n // 2
    current = np.asarray(block, dtype=np.float64)
    for level in range(levels):
        count = int(counts[level])
        if count == 0:
            break
        rows = np.concatenate([hist[level, :, :pixels], current])
        span = keep + count
        for d in range(1 if level == 0 else half, n):
            g2[level, d - 1, :pixels] += np.einsum("tp,tp->p", rows[keep:span], rows[keep - d: span - d])
        total[level, :pixels] += current.sum(axis=0)
        if before[level] < keep:
            fill = min(count, keep - int(before[level]))
            first[level, before[level]: before[level] + fill, :pixels] = current[:fill]
        hist[level, :, :pixels] = rows[count: count + keep]
        if level + 1 < levels:
            waiting = [unpaired[level, None, :pixels]] if lead[level] else []
            sequence = np.concatenate(waiting + [current]) if waiting else current
            pairs = len(sequence) // 2
            if len(sequence) % 2:
                unpaired[level, :pixels] = sequence[-1]
            current = sequence[0: 2 * pairs: 2] + sequence[1: 2 * pairs: 2]


if HAVE_NUMBA:

    @njit(nogil=True, boundscheck=False, fastmath={"contract"})
    def _correlate(rows, acc, start, stop, first_delay, n):  # pragma: no cover - compiled
        """acc[d-1, q] += Σ rows[t, q] rows[t-d, q] over t in [start, stop), for d = first_delay .. n-1.

        Four frames per pass: their rows are loaded once for all delays, and each delay's sums are read and
        written once per four frames instead of once per frame."""
        width = rows.shape[1]
        for g in range(0, width, GROUP):
            h = g + GROUP
            t = start
            while t + 4 <= stop:
                a0 = rows[t, g:h]
                a1 = rows[t + 1, g:h]
                a2 = rows[t + 2, g:h]
                a3 = rows[t + 3, g:h]
                for d in range(first_delay, n):
                    r = acc[d - 1, g:h]
                    b0 = rows[t - d, g:h]
                    b1 = rows[t + 1 - d, g:h]
                    b2 = rows[t + 2 - d, g:h]
                    b3 = rows[t + 3 - d, g:h]
                    for q in range(GROUP):
                        r[q] += (a0[q] * b0[q] + a1[q] * b1[q]) + (a2[q] * b2[q] + a3[q] * b3[q])
                t += 4
            while t < stop:
                a0 = rows[t, g:h]
                for d in range(first_delay, n):
                    r = acc[d - 1, g:h]
                    b0 = rows[t - d, g:h]
                    for q in range(GROUP):
                        r[q] += a0[q] * b0[q]
                t += 1

    @njit(nogil=True, boundscheck=False, fastmath={"contract"})
    def _correlate_wide(rows, acc, start, stop, first_delay, n):  # pragma: no cover - compiled
        """``_correlate`` for float32 rows whose products need float64: each factor widened first."""
        for t in range(start, stop):
            a = rows[t]
            for d in range(first_delay, n):
                r = acc[d - 1]
                b = rows[t - d]
                for q in range(TILE):
                    r[q] += np.float64(a[q]) * np.float64(b[q])

    @njit(nogil=True, boundscheck=False, error_model='numpy')
    def _flush(acc, g2_level, first_delay, n, lo):  # pragma: no cover - compiled
        for d in range(first_delay, n):
            src = acc[d - 1]
            dst = g2_level[d - 1, lo: lo + TILE]
            for q in range(TILE):
                dst[q] += src[q]
                src[q] = 0

    @njit(nogil=True, boundscheck=False, error_model='numpy')
    def _load(block, rows, keep, lo):  # pragma: no cover - compiled
        """The tile's new frames into rows[keep:], zeros past the last pixel."""
        frames, pixels = block.shape
        width = min(pixels - lo, TILE)
        for t in range(frames):
            src = block[t, lo: lo + width]
            dst = rows[keep + t]
            for q in range(width):
                dst[q] = src[q]
            for q in range(width, TILE):
                dst[q] = 0

    @njit(nogil=True, boundscheck=False, fastmath={"contract"})
    def _levels(hist, first, total, g2, unpaired, counts, before, lead, n, lo, peak, narrow, rows, spare, acc32,
                acc64):  # pragma: no cover - compiled
        """Every level of one tile whose new level-0 frames are in rows[keep:]; returns the scratch (swapped).

        ``narrow``: rows are float32 holding exact integers; a level's products are summed in float32 runs
        short enough to stay exact (its values are at most peak·2^level), else widened to float64."""
        levels, keep, _ = hist.shape
        half = n // 2
        for level in range(levels):
            count = counts[level]
            if count == 0:
                break
            span = keep + count
            for i in range(keep):
                src = hist[level, i, lo: lo + TILE]
                dst = rows[i]
                for q in range(TILE):
                    dst[q] = src[q]
            first_delay = 1 if level == 0 else half
            largest = peak * 2.0**level
            if largest > 0:
                if narrow:
                    run = int((FLOAT32_EXACT - 1) // (largest * largest))
                    if run >= MIN_FLOAT32_RUN:
                        start = keep
                        while start < span:
                            stop = min(start + run, span)
                            _correlate(rows, acc32, start, stop, first_delay, n)
                            _flush(acc32, g2[level], first_delay, n, lo)
                            start = stop
                    else:
                        _correlate_wide(rows, acc64, keep, span, first_delay, n)
                        _flush(acc64, g2[level], first_delay, n, lo)
                else:
                    _correlate(rows, acc64, keep, span, first_delay, n)
                    _flush(acc64, g2[level], first_delay, n, lo)
            tot = total[level, lo: lo + TILE]
            for t in range(keep, span):
                src = rows[t]
                for q in range(TILE):
                    tot[q] += src[q]
            seen = before[level]
            if seen < keep:
                for i in range(min(count, keep - seen)):
                    src = rows[keep + i]
                    dst = first[level, seen + i, lo: lo + TILE]
                    for q in range(TILE):
                        dst[q] = src[q]
            for i in range(keep):
                src = rows[count + i]
                dst = hist[level, i, lo: lo + TILE]
                for q in range(TILE):
                    dst[q] = src[q]
            if level + 1 < levels:  # the next level's new frames: sums of consecutive pairs
                waiting = unpaired[level, lo: lo + TILE]
                made = 0
                t = keep
                if lead[level]:
                    a = rows[keep]
                    dst = spare[keep]
                    for q in range(TILE):
                        dst[q] = waiting[q] + a[q]
                    made = 1
                    t = keep + 1
                while t + 1 < span:
                    a = rows[t]
                    b = rows[t + 1]
                    dst = spare[keep + made]
                    for q in range(TILE):
                        dst[q] = a[q] + b[q]
                    made += 1
                    t += 2
                if t < span:
                    a = rows[t]
                    for q in range(TILE):
                        waiting[q] = a[q]
                rows, spare = spare, rows
        return rows, spare

    @njit(nogil=True, boundscheck=False, cache=True)
    def _update_tiles(block, hist, first, total, g2, unpaired, counts, before, lead, n, peak, narrow, worker,
                      workers):  # pragma: no cover - compiled
        """Tiles worker, worker + workers, ... of the batch, with scratch allocated once (large buffers would be
        mapped and unmapped for every tile). The float32 and float64 loops are written out: one loop over scratch
        passed in (a helper per precision) compiled ~4 s slower here, and compile time is what a fresh worker
        waits for."""
        levels, keep, padded = hist.shape
        depth = keep + block.shape[0] + 1
        acc32 = np.zeros((keep, TILE), np.float32)
        acc64 = np.zeros((keep, TILE))
        if narrow:
            rows32 = np.empty((depth, TILE), np.float32)
            spare32 = np.empty((depth, TILE), np.float32)
            for tile in range(worker, padded // TILE, workers):
                _load(block, rows32, keep, tile * TILE)
                rows32, spare32 = _levels(hist, first, total, g2, unpaired, counts, before, lead, n, tile * TILE,
                                          peak, True, rows32, spare32, acc32, acc64)
        else:
            rows64 = np.empty((depth, TILE))
            spare64 = np.empty((depth, TILE))
            for tile in range(worker, padded // TILE, workers):
                _load(block, rows64, keep, tile * TILE)
                rows64, spare64 = _levels(hist, first, total, g2, unpaired, counts, before, lead, n, tile * TILE,
                                          peak, False, rows64, spare64, acc32, acc64)


COPY_COLUMNS = 4096  # pixels per parallel task when frames are copied into a batch


if HAVE_NUMBA:

    @njit(nogil=True, boundscheck=False, cache=True)
    def _copy_with_peak(src, dst, at, task, tasks):  # pragma: no cover - compiled
        """Columns task, task + tasks, ... (blocks of COPY_COLUMNS) of src into dst[at:]; their largest |count|."""
        frames, pixels = src.shape
        lane = np.zeros(COPY_COLUMNS, src.dtype)  # an element-wise max vectorises
        for block in range(task, (pixels + COPY_COLUMNS - 1) // COPY_COLUMNS, tasks):
            lo = block * COPY_COLUMNS
            hi = min(pixels, lo + COPY_COLUMNS)
            for t in range(frames):
                s = src[t, lo:hi]
                d = dst[at + t, lo:hi]
                for q in range(hi - lo):
                    d[q] = s[q]
                    lane[q] = max(lane[q], abs(s[q]))
        return np.float64(lane.max())


def copy_with_peak(src: np.ndarray, dst: np.ndarray, at: int) -> float:
    """dst[at: at + len(src)] = src, in parallel; returns the largest |count| of src."""
    if HAVE_NUMBA and src.dtype == dst.dtype and src.size:
        return max(run_tasks(_copy_with_peak, thread_count(), np.ascontiguousarray(src), dst, at))
    dst[at: at + len(src)] = src
    return peak_count(src)


def peak_count(block: np.ndarray) -> float:
    """The largest |count| in ``block`` (0 for an empty one)."""
    if block.size == 0:
        return 0.0
    if block.dtype.kind == "u":
        return float(block.max())
    return float(max(-float(block.min()), float(block.max())))


def update(block, hist, first, total, g2, unpaired, counts, before, lead, n, peak: float, integral: bool) -> None:
    """Add ``block`` (frames, pixels), next in time, to the state (all arrays updated in place).

    ``peak``: the largest |count| of this block and of every block before it (the levels' history holds those)."""
    if HAVE_NUMBA:
        levels = hist.shape[0]
        # float32 holds every value the batch reaches (at most peak·2^(levels-1)) exactly: every tile runs in
        # float32. Otherwise (large or non-integer counts) in float64.
        narrow = integral and peak * 2.0 ** (levels - 1) < FLOAT32_EXACT
        tasks = min(4 * thread_count(), hist.shape[2] // TILE)  # a few tasks per thread even out uneven tiles
        run_tasks(_update_tiles, tasks, np.ascontiguousarray(block), hist, first, total, g2, unpaired, counts,
                  before, lead, n, peak, narrow)
    else:
        update_numpy(block, hist, first, total, g2, unpaired, counts, before, lead, n)
