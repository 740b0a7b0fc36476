"""Ad-hoc transfers: copies between two endpoints outside any job, with live progress.

The REST API's `POST /rtlib/api/transfers` and the TransferWidget start them
here. A transfer is planned at once (source listed, every destination path
checked against its endpoint root), so a bad request is refused before any
byte is written; the copy itself runs on a worker thread through the
configured TransferBackend, whose progress callback feeds ``bytes_done``.

Transfers live in memory for the life of the process that started them; the
job store is for jobs. A restarted Jupyter server forgets finished transfers.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..errors import RtlibError
from .base import TransferBackend, TransferOutcome, TransferRequest

log = logging.getLogger("rtlib.transfer.adhoc")

ACTIVE, SUCCEEDED, FAILED = "ACTIVE", "SUCCEEDED", "FAILED"


@dataclass
class AdhocTransfer:
    id: int
    source: str  # ENDPOINT:PATH as asked
    destination: str
    files_total: int
    bytes_total: int
    state: str = ACTIVE
    bytes_done: int = 0
    files_done: int = 0
    files_failed: int = 0
    errors: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["errors"] = list(self.errors)
        d["fraction"] = 1.0 if self.bytes_total == 0 and self.state == SUCCEEDED else (
            round(self.bytes_done / self.bytes_total, 6) if self.bytes_total else 0.0)
        return d


class AdhocTransfers:
    """Starts and tracks ad-hoc transfers; at most `parallel` run at once, the rest wait their turn.

    `scratch`: the sites' scratch endpoints, whose job area no transfer may write into.
    """

    def __init__(self, backend: TransferBackend, *, scratch: Collection[str], parallel: int = 2, keep: int = 200):
        self.backend = backend
        self.scratch = frozenset(scratch)
        self.keep = keep
        self._ids = itertools.count(1)
        self._transfers: dict[int, AdhocTransfer] = {}
        self._done_events: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="rtlib-adhoc")

    def start(self, source: str, destination: str) -> dict[str, Any]:
        """Plan SOURCE -> DESTINATION (both ENDPOINT:PATH) and start copying; returns the transfer as data.

        Raises EndpointError (a destination in a scratch's job area, too) / PathOutsideRoot / InputDataError
        before anything is written.
        """
        from ..cli_transfer import plan_copy  # the planning rule `rtlib transfer` uses, like `cp -r`

        requests = plan_copy(self.backend, source, destination, scratch=self.scratch)
        for req in requests:  # every destination inside its root, before the first byte moves
            try:
                self.backend.local_path(req.dst_endpoint, req.dst_path)
            except NotImplementedError:
                pass  # a Globus-only backend: the service checks its own paths
        with self._lock:
            tr = AdhocTransfer(next(self._ids), source, destination, len(requests), sum(r.size_bytes for r in requests))
            self._transfers[tr.id] = tr
            self._done_events[tr.id] = threading.Event()
            self._forget_old()
        self._pool.submit(self._run, tr, requests)
        return self.get(tr.id)

    def _run(self, tr: AdhocTransfer, requests: list[TransferRequest]) -> None:
        def progress(nbytes: int) -> None:
            with self._lock:
                tr.bytes_done = min(tr.bytes_total, tr.bytes_done + nbytes)

        def on_outcome(outcome: TransferOutcome) -> None:
            with self._lock:
                if outcome.ok:
                    tr.files_done += 1
                else:
                    tr.files_failed += 1
                    tr.errors.append(outcome.error or "copy failed")

        try:
            try:
                outcomes = self.backend.transfer_batch(requests, progress, on_outcome=on_outcome)
            except TypeError:  # a backend without on_outcome: count at the end
                outcomes = self.backend.transfer_batch(requests, progress)
                for o in outcomes:
                    on_outcome(o)
            ok = all(o.ok for o in outcomes)
            with self._lock:
                if ok:
                    tr.bytes_done = tr.bytes_total  # files already in place were not re-sent
                tr.state = SUCCEEDED if ok else FAILED
        except Exception as err:  # never lose the record: the error is what the user sees
            log.exception("ad-hoc transfer %s failed", tr.id)
            with self._lock:
                tr.state = FAILED
                tr.errors.append(f"{type(err).__name__}: {err}")
        finally:
            with self._lock:
                tr.finished_at = time.time()
            self._done_events[tr.id].set()

    def _forget_old(self) -> None:
        finished = [t.id for t in self._transfers.values() if t.state != ACTIVE]
        for tid in finished[: max(0, len(self._transfers) - self.keep)]:
            self._transfers.pop(tid, None)
            self._done_events.pop(tid, None)

    def get(self, transfer_id: int) -> dict[str, Any]:
        with self._lock:
            try:
                return self._transfers[transfer_id].to_dict()
            except KeyError:
                raise RtlibError(f"no transfer with id {transfer_id}; GET /rtlib/api/transfers lists them") from None

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [t.to_dict() for t in sorted(self._transfers.values(), key=lambda t: -t.id)]

    def wait(self, transfer_id: int, timeout_s: float | None = None) -> dict[str, Any]:
        """Block until the transfer has finished (or timeout_s passed); returns it as data."""
        event = self._done_events.get(transfer_id)
        if event is None:
            return self.get(transfer_id)
        event.wait(timeout_s)
        return self.get(transfer_id)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
