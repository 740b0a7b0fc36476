"""Planning transfer batches: how many files go into one Globus task.

Balsam put a fixed count of files (100) in each task. Files at a light
source differ in size by four orders of magnitude, so a fixed count gives
tasks of a few MB next to tasks of several TB: the small ones pay the task
set-up cost for nothing, the large ones are slow to retry and to report. The
planner here fills each task up to a byte budget (15 GB by default, Balsam's
observed sweet spot) and never past an item cap, and keeps one task per
(source, destination) endpoint pair, since a Globus task joins two
collections only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generic, Hashable, Iterable, Sequence, TypeVar

T = TypeVar("T")

DEFAULT_BATCH_BYTES = 15 * 10**9
DEFAULT_BATCH_MAX_ITEMS = 1000


@dataclass
class Batch(Generic[T]):
    """The items of one planned task, in the order they were given."""

    key: Hashable
    items: list[T] = field(default_factory=list)
    total_bytes: int = 0

    def __len__(self) -> int:
        return len(self.items)


def plan_batches(
    items: Iterable[T],
    size_of: Callable[[T], int],
    *,
    max_bytes: int = DEFAULT_BATCH_BYTES,
    max_items: int = DEFAULT_BATCH_MAX_ITEMS,
    key: Callable[[T], Hashable] = lambda _item: None,
) -> list[Batch[T]]:
    """Group `items` into batches of at most `max_bytes` and `max_items` each.

    Items keep their order (so a caller's priority order survives) and one
    batch never mixes two keys (endpoint pairs). A single item larger than
    `max_bytes` gets a batch of its own: it cannot be split, and waiting for
    nothing would stall it forever.
    """
    if max_bytes <= 0 or max_items <= 0:
        raise ValueError(f"max_bytes and max_items must be positive; got {max_bytes} and {max_items}")
    open_batches: dict[Hashable, Batch[T]] = {}
    planned: list[Batch[T]] = []
    for item in items:
        size = max(0, int(size_of(item)))
        k = key(item)
        if size >= max_bytes:  # alone, without closing the batch still filling
            planned.append(Batch(k, [item], size))
            continue
        batch = open_batches.get(k)
        if batch is not None and batch.items and (batch.total_bytes + size > max_bytes or len(batch) >= max_items):
            batch = None
        if batch is None:
            batch = Batch(k)
            open_batches[k] = batch
            planned.append(batch)
        batch.items.append(item)
        batch.total_bytes += size
    return planned


def plan_by_count(
    items: Iterable[T],
    size_of: Callable[[T], int],
    *,
    per_batch: int = 100,
    key: Callable[[T], Hashable] = lambda _item: None,
) -> list[Batch[T]]:
    """Balsam's rule, for comparison: a fixed number of items per batch, whatever their size."""
    return plan_batches(items, size_of, max_bytes=2**62, max_items=per_batch, key=key)


def summarize(batches: Sequence[Batch]) -> dict:
    """Task count and bytes-per-task figures of a plan (bytes as integers)."""
    sizes = sorted(b.total_bytes for b in batches)
    if not sizes:
        return {"tasks": 0, "items": 0, "total_bytes": 0, "min_bytes": 0, "median_bytes": 0, "max_bytes": 0, "max_items": 0}
    return {
        "tasks": len(sizes),
        "items": sum(len(b) for b in batches),
        "total_bytes": sum(sizes),
        "min_bytes": sizes[0],
        "median_bytes": sizes[len(sizes) // 2],
        "max_bytes": sizes[-1],
        "max_items": max(len(b) for b in batches),
    }
