"""Which job store a results folder belongs to.

Job ids restart at 1 with a new store (a lost SQLite file, a new database), so
a new store's job 1 would replace the `results/.../job-1/` an older store
delivered. The first stage-out into a *results root* (the first folder of a
job's destination path, e.g. `results/`; the endpoint root for a destination
of one component) writes a marker there naming the store's random id; every
later stage-out reads it, and a store never writes under another store's
marker. Two destinations that can overlap share their first folder, so they
share the marker.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath

from .errors import ResultsRootClaimed
from .transfer.base import TransferBackend

MARKER = ".rtlib-store.json"
_KEY = "rtlib_store_id"


def results_root(dest: str) -> str:
    """The folder whose marker guards `dest` (a destination path relative to its endpoint root)."""
    parts = PurePosixPath(dest.strip("/")).parts
    return parts[0] if parts else ""


def marker_path(dest: str) -> str:
    root = results_root(dest)
    return f"{root}/{MARKER}" if root else MARKER


def _marker_text(store_id: str) -> str:
    return json.dumps({
        _KEY: store_id,
        "about": "results under this folder are delivered by the rtlib job store with this id; "
                 "another store may not write here (its job ids would collide with these)",
    }, indent=2) + "\n"  # fmt: skip


def check(transfer: TransferBackend, endpoint: str, dest: str, store_id: str, *, claim: bool) -> None:
    """Raise ResultsRootClaimed when `dest` on `endpoint` lies under another store's results root.

    claim: write this store's marker when there is none (at stage-out; a stage-in only looks).
    OSError, NotImplementedError (no local access to `endpoint`) pass through to the caller.
    """
    path = marker_path(dest)
    text = transfer.read_small_text(endpoint, path)
    if text is None:
        if not claim or transfer.create_small_text(endpoint, path, _marker_text(store_id)):
            return
        text = transfer.read_small_text(endpoint, path) or ""  # another agent claimed it first: whose is it?
    try:
        owner = json.loads(text)[_KEY]
    except (ValueError, KeyError, TypeError):
        raise ResultsRootClaimed(
            f"the marker {endpoint}:{path} that says which job store owns these results is unreadable; "
            f"if no other store delivers under {endpoint}:{results_root(dest) or '/'}, delete the marker and retry the job"
        ) from None
    if owner != store_id:
        raise ResultsRootClaimed(
            f"{endpoint}:{results_root(dest) or '/'} holds results of job store {owner} (see {endpoint}:{path}), but this "
            f"agent's store is {store_id}: job ids restarted with the new store, so writing here could replace that store's "
            "results. Restore the old store file, or move those results (and the marker) away and retry the job, or submit "
            "it again with another destination folder"
        )
