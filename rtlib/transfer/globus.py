"""The Globus transfer backend: one Globus task per batch of files, on globus-sdk's TransferClient.

The files of a ``transfer_batch`` call are planned into tasks by bytes (see
batching.py), one (source, destination) collection pair per task. Tasks are
submitted with ``sync_level="checksum"`` and ``verify_checksum=True`` (a
re-sent file that already arrived intact costs a checksum, not a copy) and
``skip_source_errors=True`` (a missing or unreadable source file fails that
file, not its whole task). At most ``tasks_in_flight`` tasks run at once,
counted over every thread of this backend.

Each task is polled with a growing interval. When it ends, the files listed
in its successful transfers succeed, the ones in its skipped errors fail
with Globus's own code and text, and the rest are explained from the task's
event list and either resubmitted in a new task (while ``task_retries``
lasts) or failed. A task paused, inactive or without progress for
``stall_limit_s`` is cancelled and handled the same way. API calls that meet
network errors or 5xx answers are retried with backoff, ``network_retries``
times. So every file gets exactly one outcome in bounded time: nothing is
left in a transfer state forever.
"""

from __future__ import annotations

import logging
import posixpath
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..errors import EndpointError, InputDataError, PathOutsideRoot, RtlibError, TransferError
from .base import OutcomeCallback, ProgressCallback, TransferBackend, TransferOutcome, TransferRequest
from .batching import DEFAULT_BATCH_BYTES, DEFAULT_BATCH_MAX_ITEMS, plan_batches

log = logging.getLogger(__name__)

# Globus per-file error codes that the same request will meet again
PERMANENT_FILE_ERRORS = {"FILE_NOT_FOUND", "PERMISSION_DENIED", "NOT_FOUND", "QUOTA_EXCEEDED", "INVALID_PATH", "IS_A_DIRECTORY"}
_FILE_ERROR_HINTS = {
    "FILE_NOT_FOUND": "check the path, or that the detector finished writing it",
    "PERMISSION_DENIED": "let the transferring identity read the source and write the destination on the collection",
    "QUOTA_EXCEEDED": "free space or raise the quota on the destination collection",
}


@dataclass(frozen=True)
class GlobusEndpoint:
    name: str
    collection_id: str
    base_path: str = "/"


@dataclass
class _Item:
    request: TransferRequest
    src_path: str  # absolute on the source collection
    dst_path: str


@dataclass
class _Task:
    src: str
    dst: str
    items: list[_Item]
    submissions: int = 0  # Globus tasks submitted for these items so far
    task_id: str | None = None
    next_poll: float = 0.0
    interval: float = 0.0
    bytes_seen: int = 0
    last_progress: float = 0.0
    poll_failures: int = 0
    done: bool = False
    beamline: str | None = None  # whose service account the task runs as (None: the endpoint rule)


class _ApiTrouble(Exception):
    """A Globus call failed in a way explained by `error` (a TransferError with `permanent` set)."""

    def __init__(self, error: TransferError):
        super().__init__(str(error))
        self.error = error


class GlobusTransferBackend(TransferBackend):
    """Transfers between Globus collections.

    endpoints: rtlib endpoint name -> GlobusEndpoint. identity_for(src, dst[, beamline]): the identity a
    transfer between two endpoint names runs as (see identity.py), called with the beamline of the
    requests when they carry one (a job's beamline): it has `transfer_client()`, `description` and
    `consent_steps(scopes)` (or `login_command(scopes)`). Requests of different beamlines never share
    a task. retry_config: passed to each TransferClient (globus-sdk's own retries, below ours).
    """

    def __init__(
        self,
        endpoints: Mapping[str, GlobusEndpoint],
        identity_for: Callable[[str, str], Any],
        *,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        batch_max_items: int = DEFAULT_BATCH_MAX_ITEMS,
        tasks_in_flight: int = 4,
        poll_initial_s: float = 2.0,
        poll_max_s: float = 60.0,
        stall_limit_s: float = 1800.0,
        task_retries: int = 2,
        network_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        retry_config=None,
        label: str = "rtlib",
        ls_page_size: int = 100_000,
    ):
        if ls_page_size < 1:
            raise ValueError("need ls_page_size >= 1 (entries per directory listing page)")
        if tasks_in_flight < 1 or poll_initial_s <= 0 or poll_max_s <= 0 or stall_limit_s <= 0 or task_retries < 0 or network_retries < 0:
            raise ValueError("need tasks_in_flight >= 1, positive poll and stall limits, task_retries >= 0 and network_retries >= 0")
        self.endpoints = dict(endpoints)
        self.identity_for = identity_for  # public: a caller may choose who its transfers run as
        self.batch_bytes, self.batch_max_items = batch_bytes, batch_max_items
        self.tasks_in_flight = tasks_in_flight
        self.poll_initial_s, self.poll_max_s, self.stall_limit_s = poll_initial_s, poll_max_s, stall_limit_s
        self.task_retries, self.network_retries = task_retries, network_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.retry_config = retry_config
        self.label = label
        self.ls_page_size = ls_page_size  # entries per operation_ls page (Globus allows at most 100,000)
        self._slots = threading.BoundedSemaphore(tasks_in_flight)
        self._clients: dict[tuple[str, str, str | None], tuple[Any, Any]] = {}
        self._task_pairs: dict[str, tuple[str, str, str | None]] = {}
        self._lock = threading.Lock()
        self._jitter = random.Random()

    # -- endpoints, paths and clients ------------------------------------------------------
    def _endpoint(self, name: str) -> GlobusEndpoint:
        try:
            return self.endpoints[name]
        except KeyError:
            known = ", ".join(sorted(self.endpoints)) or "(none configured)"
            raise EndpointError(f"unknown Globus endpoint {name!r}; Globus endpoints: {known}") from None

    @staticmethod
    def _base(ep: GlobusEndpoint) -> str:
        return posixpath.normpath("/" + ep.base_path.strip("/"))

    def globus_path(self, endpoint: str, path: str) -> str:
        """The absolute path on the collection of `path` (relative to the endpoint's base_path)."""
        ep = self._endpoint(endpoint)
        base = self._base(ep)
        if "\0" in path:
            raise EndpointError(f"path {path!r} on endpoint {endpoint!r} contains a NUL byte; remove it")
        full = posixpath.normpath(posixpath.join(base, path))
        if not (full == base or full.startswith(base.rstrip("/") + "/")):
            raise PathOutsideRoot(
                f"path {path!r} on endpoint {endpoint!r} is {full} on collection {ep.collection_id}, outside the endpoint's "
                f"base_path {base}; use a path relative to the base_path with no '..' leading out of it"
            )
        return full

    def _relative(self, endpoint: str, full: str) -> str:
        rel = posixpath.relpath(full, self._base(self._endpoint(endpoint)))
        return "" if rel == "." else rel

    def _client(self, src: str, dst: str, beamline: str | None = None) -> tuple[Any, Any]:
        """The TransferClient and identity for a pair (and beamline); a refused token grant raises _ApiTrouble with the reason."""
        key = (src, dst, beamline)
        with self._lock:
            if key not in self._clients:
                identity = self.identity_for(src, dst) if beamline is None else self.identity_for(src, dst, beamline)
                # a confidential client's authorizer asks Globus Auth for a token as it is built
                client = self._call(f"obtain an access token for {src} -> {dst}", identity,
                                    lambda: identity.transfer_client(retry_config=self.retry_config))
                self._clients[key] = (client, identity)
            return self._clients[key]

    # -- calling the API ---------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return delay * (0.5 + 0.5 * self._jitter.random())

    def _call(self, what: str, identity, fn: Callable[[], Any], *, retries: int | None = None) -> Any:
        """Run one API call, retrying network errors and 5xx answers; raise _ApiTrouble with the reason."""
        import globus_sdk

        retries = self.network_retries if retries is None else retries
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except globus_sdk.GlobusAPIError as err:
                trouble = self.explain_api_error(err, what, identity)
            except globus_sdk.NetworkError as err:
                trouble = TransferError(f"network error talking to Globus while trying to {what}: {type(err).__name__}", permanent=False)
            if trouble.permanent or attempt > retries:
                if not trouble.permanent:
                    trouble = TransferError(f"{trouble} (gave up after {attempt} attempts; check the network, then retry)", permanent=False)
                raise _ApiTrouble(trouble)
            log.info("Globus call failed (%s), retrying: %s", what, trouble)
            time.sleep(self._backoff(attempt))

    @staticmethod
    def explain_api_error(err, what: str, identity) -> TransferError:
        """A sentence a person can act on, from a Globus API error; `permanent` unless retrying may help."""
        import globus_sdk

        code, status = err.code or "Error", err.http_status
        detail = f"{code}: {err.message}" if err.message else code
        who = getattr(identity, "description", "the configured Globus identity")
        if isinstance(err, globus_sdk.AuthAPIError) or code in ("invalid_client", "unauthorized_client"):  # a token grant
            return TransferError(
                f"Globus Auth refused to give {who} a token while trying to {what} ({detail}); check the client id and its "
                "secret (secret_env / secret_file of the beamline's service_account), then retry",
                permanent=status in (400, 401, 403),
            )
        if err.info.consent_required or code == "ConsentRequired":
            scopes = list(err.info.consent_required.required_scopes or [])
            listed = " ".join(scopes) or "(Globus did not list them)"
            if hasattr(identity, "consent_steps"):
                steps = identity.consent_steps(scopes)
            else:
                steps = f"run `{identity.login_command(scopes) if identity is not None else 'rtlib login --force'}`, then retry"
            return TransferError(f"Globus needs consent before {who} can {what}: consent to the scope(s) {listed}. To consent: {steps}",
                                 permanent=True)
        if status == 401:
            return TransferError(
                f"Globus rejected the access token of {who} while trying to {what}, even after re-authenticating once "
                f"({detail}); the token or the client credentials were revoked or are wrong: check them (a person runs "
                "`rtlib login --force`), then retry",
                permanent=True,
            )
        if status == 403 or "PermissionDenied" in code or "Forbidden" in code:
            return TransferError(
                f"permission denied: {who} may not {what} ({detail}); ask the collection's administrator to grant that identity access",
                permanent=True,
            )
        if status == 404 or "NotFound" in code:
            return TransferError(
                f"not found while trying to {what} ({detail}); check the endpoint's collection_id in the site config "
                "(the collection may have been deleted or renamed) and the path",
                permanent=True,
            )
        if status is not None and (status >= 500 or status == 429):
            return TransferError(f"Globus answered {status} while trying to {what} ({detail})", permanent=False)
        return TransferError(f"Globus refused to {what} ({detail})", permanent=True)

    # -- listing ----------------------------------------------------------------------------------
    def list_files(self, endpoint: str, path: str, *, beamline: str | None = None) -> list[tuple[str, int]]:
        full = self.globus_path(endpoint, path)
        coll = self._endpoint(endpoint).collection_id
        try:
            client, identity = self._client(endpoint, endpoint, beamline)
            st = self._call(f"look at {endpoint}:{full}", identity, lambda: client.operation_stat(coll, path=full))
        except _ApiTrouble as t:
            if "not found" in str(t.error) and t.error.permanent:
                raise InputDataError(f"{path!r} does not exist on endpoint {endpoint!r} ({full} on collection {coll}): {t.error}") from None
            raise t.error from None
        if st.get("type") != "dir":
            return [(self._relative(endpoint, full), int(st.get("size") or 0))]
        found: list[tuple[str, int]] = []
        todo = deque([full])
        while todo:
            directory = todo.popleft()
            for entry in self._list_directory(client, identity, endpoint, coll, directory):
                child = posixpath.join(directory, entry["name"])
                if entry.get("type") == "dir":
                    todo.append(child)
                elif entry.get("type") == "file":
                    found.append((self._relative(endpoint, child), int(entry.get("size") or 0)))
        return sorted(found)

    def _list_directory(self, client, identity, endpoint: str, coll: str, directory: str) -> list[dict]:
        """Every entry of one directory, page by page (limit/offset), however many pages it takes."""
        entries: list[dict] = []
        seen: set[str] = set()
        offset = 0
        while True:
            try:
                page = self._call(
                    f"list {endpoint}:{directory}", identity,
                    lambda: client.operation_ls(coll, path=directory, orderby="name", limit=self.ls_page_size, offset=offset),
                )
            except _ApiTrouble as t:
                raise t.error from None
            new = [e for e in page if e.get("name") not in seen]
            entries += new
            seen.update(e.get("name") for e in new)
            offset += len(page["DATA"])
            total = page.get("total")
            full_page = len(page["DATA"]) >= self.ls_page_size
            if not new or not full_page or (total is not None and offset >= int(total)):
                return entries

    # -- transferring ---------------------------------------------------------------------------
    def transfer_batch(
        self,
        requests: list[TransferRequest],
        progress: ProgressCallback | None = None,
        *,
        on_outcome: OutcomeCallback | None = None,
    ) -> list[TransferOutcome]:
        outcomes: dict[int, TransferOutcome] = {}

        def finish(outcome: TransferOutcome) -> None:
            outcomes[outcome.item_id] = outcome
            if on_outcome is not None:
                on_outcome(outcome)

        items: list[_Item] = []
        for req in requests:
            try:
                items.append(_Item(req, self.globus_path(req.src_endpoint, req.src_path), self.globus_path(req.dst_endpoint, req.dst_path)))
            except RtlibError as err:
                finish(TransferOutcome(req.item_id, False, attempts=0, error=str(err), permanent=True))
        plan = plan_batches(
            items, lambda it: it.request.size_bytes, max_bytes=self.batch_bytes, max_items=self.batch_max_items,
            key=lambda it: (it.request.src_endpoint, it.request.dst_endpoint, getattr(it.request, "beamline", None)),
        )
        waiting = deque(_Task(b.key[0], b.key[1], b.items, beamline=b.key[2]) for b in plan)
        running: list[_Task] = []
        try:
            while waiting or running:
                while waiting and self._slots.acquire(blocking=False):
                    task = waiting.popleft()
                    self._submit(task, finish)
                    if task.done:
                        self._slots.release()
                    else:
                        running.append(task)
                now = time.monotonic()
                for task in [t for t in running if t.next_poll <= now]:
                    retry = self._poll(task, progress, finish)
                    if task.done:
                        running.remove(task)
                        self._slots.release()
                    if retry is not None:
                        waiting.appendleft(retry)
                if running:
                    time.sleep(max(0.0, min(t.next_poll for t in running) - time.monotonic()))
                elif waiting:  # every slot is taken by other batches
                    time.sleep(self.poll_initial_s)
        finally:
            for task in running:  # only on an unexpected exception: do not leave tasks running unseen
                self._slots.release()
                self.cancel(task.task_id)
        return [outcomes[r.item_id] for r in requests]

    def _submit(self, task: _Task, finish: Callable[[TransferOutcome], None]) -> None:
        import globus_sdk

        src, dst = self._endpoint(task.src), self._endpoint(task.dst)
        where = f"copy {len(task.items)} file(s) from {task.src} ({src.collection_id}) to {task.dst} ({dst.collection_id})"
        try:
            client, identity = self._client(task.src, task.dst, task.beamline)
            # one submission id per task: a resubmission after a lost answer is recognized by Globus, not duplicated
            submission_id = self._call(where, identity, lambda: client.get_submission_id()["value"])
            data = globus_sdk.TransferData(
                source_endpoint=src.collection_id, destination_endpoint=dst.collection_id,
                label=f"{self.label} {task.src}->{task.dst} {len(task.items)} files"[:128],
                submission_id=submission_id, sync_level="checksum", verify_checksum=True,
                skip_source_errors=True, fail_on_quota_errors=True,
            )
            for it in task.items:
                data.add_item(it.src_path, it.dst_path)
            response = self._call(where, identity, lambda: client.submit_transfer(data))
        except _ApiTrouble as t:
            self._fail_items(task, t.error, finish)
            return
        except RtlibError as err:  # no identity, bad credentials file: nothing Globus can fix
            self._fail_items(task, TransferError(str(err), permanent=True), finish)
            return
        task.task_id = response["task_id"]
        task.submissions += 1
        with self._lock:
            self._task_pairs[task.task_id] = (task.src, task.dst, task.beamline)
        now = time.monotonic()
        task.interval = self.poll_initial_s
        task.next_poll = now + task.interval
        task.last_progress = now
        task.bytes_seen = 0
        log.info("submitted Globus task %s: %d file(s), %d bytes, %s -> %s", task.task_id, len(task.items),
                 sum(it.request.size_bytes for it in task.items), task.src, task.dst)

    def _poll(self, task: _Task, progress: ProgressCallback | None, finish) -> _Task | None:
        """Look at a running task once; settle it if it ended or stalled. Returns a task to resubmit, if any."""
        client, identity = self._client(task.src, task.dst, task.beamline)
        now = time.monotonic()
        try:
            doc = self._call(f"check Globus task {task.task_id}", identity, lambda: client.get_task(task.task_id), retries=0)
        except _ApiTrouble as t:
            task.poll_failures += 1
            if t.error.permanent or task.poll_failures > self.network_retries:
                self.cancel(task.task_id)
                self._fail_items(task, TransferError(f"lost track of Globus task {task.task_id}: {t.error}", permanent=False), finish)
                return None
            task.next_poll = now + self._backoff(task.poll_failures)
            return None
        task.poll_failures = 0
        moved = int(doc.get("bytes_transferred") or 0)
        if moved > task.bytes_seen:
            if progress is not None:
                progress(moved - task.bytes_seen)
            task.bytes_seen, task.last_progress = moved, now
        status = doc.get("status")
        if status == "SUCCEEDED":
            return self._settle(task, finish, reason=None)
        if status == "FAILED":
            return self._settle(task, finish, reason=f"Globus task {task.task_id} failed ({doc.get('nice_status') or 'no reason given'})")
        stalled_for = now - task.last_progress
        if stalled_for >= self.stall_limit_s:
            state = "paused" if doc.get("is_paused") else ("inactive" if status == "INACTIVE" else "without progress")
            self.cancel(task.task_id)
            return self._settle(
                task, finish,
                reason=f"Globus task {task.task_id} was {state} for {stalled_for:.0f} s (limit {self.stall_limit_s:g} s) and was cancelled",
            )
        task.interval = min(self.poll_max_s, task.interval * 2)
        task.next_poll = now + task.interval
        return None

    def _settle(self, task: _Task, finish, *, reason: str | None) -> _Task | None:
        """Give each file of an ended (or cancelled) task its outcome; return the rest as a new task to submit, if allowed."""
        client, identity = self._client(task.src, task.dst, task.beamline)
        task.done = True
        try:
            succeeded = {(d["source_path"], d["destination_path"]) for d in self._all(
                f"read the results of Globus task {task.task_id}", identity, client.paginated.task_successful_transfers, task.task_id)}
            skipped = {d["source_path"]: d for d in self._all(
                f"read the skipped files of Globus task {task.task_id}", identity, client.paginated.task_skipped_errors, task.task_id)}
        except _ApiTrouble as t:
            self._fail_items(task, TransferError(f"{reason or 'Globus task ' + str(task.task_id) + ' ended'}; {t.error}", permanent=False), finish)
            return None
        rest: list[_Item] = []
        for it in task.items:
            if (it.src_path, it.dst_path) in succeeded:
                finish(TransferOutcome(it.request.item_id, True, bytes=it.request.size_bytes, attempts=task.submissions))
            elif it.src_path in skipped:
                err = skipped[it.src_path]
                code = err.get("error_code") or "ERROR"
                hint = _FILE_ERROR_HINTS.get(code, "fix the file, then retry the job")
                finish(TransferOutcome(
                    it.request.item_id, False, attempts=task.submissions, permanent=code in PERMANENT_FILE_ERRORS,
                    error=f"Globus could not read {it.request.src_endpoint}:{it.src_path} in task {task.task_id}: {code}: "
                    f"{err.get('error_details') or err.get('error_description') or 'no details'}; {hint}",
                ))
            else:
                rest.append(it)
        if not rest:
            return None
        why = self._explain_events(task, client, identity, reason or f"Globus task {task.task_id} ended without these files")
        if why.permanent or task.submissions > self.task_retries:
            if not why.permanent:
                why = TransferError(f"gave up after {task.submissions} Globus task(s): {why}; check both collections, then retry the job", permanent=False)
            self._fail_items(_Task(task.src, task.dst, rest, task.submissions, beamline=task.beamline), why, finish)
            return None
        log.warning("%s; resubmitting %d file(s) (task %d of %d)", why, len(rest), task.submissions + 1, self.task_retries + 1)
        return _Task(task.src, task.dst, rest, task.submissions, beamline=task.beamline)

    def _explain_events(self, task: _Task, client, identity, reason: str) -> TransferError:
        """`reason`, plus the most recent error event of the task; permanent when that error cannot go away."""
        try:
            events = list(self._call(f"read the events of Globus task {task.task_id}", identity,
                                     lambda: client.task_event_list(task.task_id, limit=100), retries=1))
        except _ApiTrouble:
            return TransferError(reason, permanent=False)
        errors = [e for e in events if e.get("is_error")]
        if not errors:
            return TransferError(reason, permanent=False)
        last = errors[0]  # newest first
        code = last.get("code") or "ERROR"
        text = "; ".join(x for x in (last.get("description"), last.get("details")) if x)
        hint = _FILE_ERROR_HINTS.get(code)
        return TransferError(f"{reason}; last error: {code}: {text}" + (f"; {hint}" if hint else ""), permanent=code in PERMANENT_FILE_ERRORS)

    def _all(self, what: str, identity, paginated_call, task_id: str) -> list[dict]:
        return self._call(what, identity, lambda: [d for page in paginated_call(task_id) for d in page["DATA"]])

    @staticmethod
    def _fail_items(task: _Task, error: TransferError, finish) -> None:
        task.done = True
        for it in task.items:  # each file's own error names it: a job's error then says which of its files
            where = f"{it.request.src_endpoint}:{it.src_path} -> {it.request.dst_endpoint}:{it.dst_path}"
            finish(TransferOutcome(it.request.item_id, False, attempts=max(1, task.submissions), error=f"{error} (file {where})",
                                   permanent=error.permanent))

    # -- control ----------------------------------------------------------------------------------
    def cancel(self, task_id: str | None) -> bool:
        """Ask Globus to cancel a task this backend submitted; True if the request was accepted."""
        if task_id is None:
            return False
        with self._lock:
            pair = self._task_pairs.get(task_id)  # (src, dst, beamline)
        if pair is None:
            raise EndpointError(f"Globus task {task_id} was not submitted by this backend")
        try:
            client, identity = self._client(*pair)
            result = self._call(f"cancel Globus task {task_id}", identity, lambda: client.cancel_task(task_id), retries=2)
        except _ApiTrouble as t:
            log.warning("could not cancel Globus task %s: %s", task_id, t.error)
            return False
        log.info("Globus task %s: %s", task_id, result.get("code"))
        return True

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client, _ in clients:
            closer = getattr(client, "close", None)
            if closer is not None:
                closer()
