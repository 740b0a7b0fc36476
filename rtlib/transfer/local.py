"""The embedded transfer backend: endpoints are directories on this machine.

A copy is written to a hidden temporary name beside its destination
(``.name.rtlib-tmp-<pid>-<random>``), streamed through the link's token
bucket(s), fsynced, checksummed against the source, and only then renamed
onto the final name. So a file under its final name is always complete and
verified, and a killed process leaves only hidden temporaries, which
``list_files`` ignores and ``clean_temporaries`` removes.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

from .. import fserrors, logsafe
from ..errors import ChecksumMismatch, EndpointError, InputDataError, PathOutsideRoot, RtlibError, TransferError
from .base import TEMP_MARKER, OutcomeCallback, ProgressCallback, TransferBackend, TransferOutcome, TransferRequest, temp_name
from .checksum import file_checksum, new_hasher
from .faults import Fault, FaultInjector
from .shaping import TokenBucket, consume_all, shaped_chunk_bytes

log = logging.getLogger(__name__)
logsafe.protect(log)  # messages carry paths and exception text from users: one record, one line

_TEMP_RE = re.compile(r"^\..*\.rtlib-tmp-(?:(\d+)-)?[0-9a-f]+$")
# retrying cannot fix these: the same call will fail the same way
_PERMANENT_ERRNOS = {
    errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EROFS, errno.ENAMETOOLONG, errno.ELOOP,
    errno.EEXIST,  # mkdir of a destination directory where a file of that name is
}


def is_temporary(name: str) -> bool:
    """True for the hidden name of an unfinished copy."""
    return bool(_TEMP_RE.match(name))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    # makes the rename itself durable, so a crash cannot bring back the old name
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Reporter:
    """Serializes the caller's callbacks: worker threads call them, the caller need not be thread-safe."""

    def __init__(self, progress: ProgressCallback | None, on_outcome: OutcomeCallback | None):
        self._progress, self._on_outcome = progress, on_outcome
        self._lock = threading.Lock()

    def progress(self, nbytes: int) -> None:
        if self._progress is not None and nbytes:
            with self._lock:
                self._progress(nbytes)

    def outcome(self, outcome: TransferOutcome) -> None:
        if self._on_outcome is not None:
            with self._lock:
                self._on_outcome(outcome)


class LocalTransferBackend(TransferBackend):
    """Copies between directory endpoints with verification, retries and optional link shaping.

    roots: endpoint name -> root directory. link_mbps: one shared cap for every copy.
    endpoint_mbps: an extra shared cap per *source* endpoint. retries: attempts after the first.
    backoff_s / max_backoff_s: exponential backoff between attempts (with jitter).
    parallel_copies: items of one batch copied at once; the buckets cap their total rate.
    """

    def __init__(
        self,
        roots: dict[str, Path | str],
        *,
        link_mbps: float | None = None,
        endpoint_mbps: dict[str, float] | None = None,
        retries: int = 5,
        backoff_s: float = 0.05,
        max_backoff_s: float = 2.0,
        faults: FaultInjector | None = None,
        chunk_bytes: int = 1 << 20,
        parallel_copies: int = 4,
    ):
        if retries < 0 or backoff_s < 0 or max_backoff_s < 0 or chunk_bytes <= 0 or parallel_copies < 1:
            raise ValueError(
                f"need retries >= 0, backoff_s >= 0, max_backoff_s >= 0, chunk_bytes > 0, parallel_copies >= 1; got "
                f"{retries}, {backoff_s}, {max_backoff_s}, {chunk_bytes}, {parallel_copies}"
            )
        # absolute but not resolved: listings keep the names people see; safety checks resolve per call
        self._roots = {name: os.path.normpath(os.path.abspath(os.path.expanduser(root))) for name, root in roots.items()}
        self.link = TokenBucket(link_mbps) if link_mbps else None
        unknown = sorted(set(endpoint_mbps or {}) - set(self._roots))
        if unknown:
            raise EndpointError(f"endpoint_mbps names unknown endpoint(s) {unknown}; known: {self._known()}")
        self.endpoint_buckets = {name: TokenBucket(rate) for name, rate in (endpoint_mbps or {}).items() if rate}
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.faults = faults
        self.chunk_bytes = chunk_bytes
        self.parallel_copies = parallel_copies
        self._active: set[str] = set()  # temporaries being written by this process right now
        self._active_lock = threading.Lock()
        self._jitter = random.Random()

    @property
    def roots(self) -> dict[str, Path]:
        return {name: Path(root) for name, root in self._roots.items()}

    # -- paths -------------------------------------------------------------------------
    def _known(self) -> str:
        return ", ".join(sorted(self._roots)) or "(none configured)"

    def _root(self, endpoint: str) -> str:
        try:
            return self._roots[endpoint]
        except KeyError:
            raise EndpointError(f"unknown endpoint {endpoint!r}; known endpoints: {self._known()}") from None

    def resolve(self, endpoint: str, path: str) -> Path:
        """The real filesystem path of `path` on `endpoint`; PathOutsideRoot if it leads out of the root."""
        root = self._root(endpoint)
        if "\0" in path:
            raise EndpointError(f"path {path!r} on endpoint {endpoint!r} contains a NUL byte; remove it")
        real_root = os.path.realpath(root)
        real = os.path.realpath(os.path.join(root, path))  # an absolute `path` replaces root: checked like any other
        if not _inside(real, real_root):
            raise PathOutsideRoot(
                f"path {path!r} on endpoint {endpoint!r} resolves to {real}, outside the endpoint root {root}; "
                "use a path relative to the root with no '..' or symlink leading out of it"
            )
        return Path(real)

    def local_path(self, endpoint: str, path: str) -> Path:
        return self.resolve(endpoint, path)

    def _relative(self, endpoint: str, path: str) -> str:
        """`path` as a normalized path relative to the root, keeping the names (not the symlink targets) given."""
        root = self._root(endpoint)
        rel = os.path.relpath(os.path.normpath(os.path.join(root, path)), root)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):  # an absolute path spelled via the real root
            rel = os.path.relpath(self.resolve(endpoint, path), os.path.realpath(root))
        return "" if rel == os.curdir else rel.replace(os.sep, "/")

    # -- listing -------------------------------------------------------------------------
    def list_files(self, endpoint: str, path: str) -> list[tuple[str, int]]:
        real = self.resolve(endpoint, path)
        rel = self._relative(endpoint, path)
        root = self._root(endpoint)
        try:
            st = os.stat(real)
        except FileNotFoundError:
            raise InputDataError(
                f"{path!r} does not exist on endpoint {endpoint!r} (looked for {real}); "
                "check the path, or wait until the detector has finished writing it"
            ) from None
        except OSError as err:  # a folder on the way that is unreadable, or a file where a folder should be
            raise InputDataError(f"cannot look at {path!r} on endpoint {endpoint!r}: {fserrors.describe(err)}; {fserrors.fix_hint(err)}") from None
        if stat.S_ISREG(st.st_mode):
            return [(rel, st.st_size)]
        if not stat.S_ISDIR(st.st_mode):
            raise InputDataError(f"{endpoint}:{path} is neither a file nor a directory ({real}); point at a data file or a directory")
        return sorted(self._walk(endpoint, os.path.join(root, rel), os.path.realpath(root)))

    def _walk(self, endpoint: str, top: str, real_root: str) -> list[tuple[str, int]]:
        root = self._root(endpoint)
        found: list[tuple[str, int]] = []

        def refuse(p: str) -> PathOutsideRoot:
            rel = os.path.relpath(p, root)
            return PathOutsideRoot(
                f"{endpoint}:{rel} is a symlink to {os.path.realpath(p)}, outside the endpoint root {root}; "
                "copy the data into the root or remove the link"
            )

        def unreadable(err: OSError) -> None:
            raise InputDataError(f"cannot read a directory on endpoint {endpoint!r}: {fserrors.describe(err)}; {fserrors.fix_hint(err)}")

        # symlinked directories are followed (inside the root only), so a listing shows the names people see;
        # a directory already on the path walked down to it is not entered again, so link cycles end
        real_chain = {top: frozenset([os.path.realpath(top)])}
        for dirpath, dirnames, filenames in os.walk(top, onerror=unreadable, followlinks=True):
            chain = real_chain.pop(dirpath)
            for d in list(dirnames):
                sub = os.path.join(dirpath, d)
                real_d = os.path.realpath(sub)
                if not _inside(real_d, real_root):
                    raise refuse(sub)
                if real_d in chain:
                    dirnames.remove(d)
                else:
                    real_chain[sub] = chain | {real_d}
            for name in filenames:
                if is_temporary(name):
                    continue
                full = os.path.join(dirpath, name)
                if not _inside(os.path.realpath(full), real_root):
                    raise refuse(full)
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    log.warning("skipping broken symlink %s on endpoint %r", full, endpoint)
                    continue
                if stat.S_ISREG(st.st_mode):
                    found.append((os.path.relpath(full, root).replace(os.sep, "/"), st.st_size))
        return found

    # -- leftovers of killed processes ---------------------------------------------------
    def clean_temporaries(self, endpoint: str, path: str = "") -> int:
        """Remove unfinished copies under `path` (a directory, walked; or a file's own temporaries).

        Temporaries being written right now, by this backend or another live process, are kept.
        Returns how many were removed.
        """
        real = self.resolve(endpoint, path)
        if real.is_dir():
            candidates = [Path(d, n) for d, _, names in os.walk(real) for n in names if is_temporary(n)]
        elif real.parent.is_dir():
            prefix = f".{real.name[:100]}{TEMP_MARKER}"
            candidates = [p for p in real.parent.iterdir() if p.name.startswith(prefix) and is_temporary(p.name)]
        else:
            return 0
        removed = 0
        for tmp in candidates:
            pid = _TEMP_RE.match(tmp.name).group(1)
            with self._active_lock:
                if str(tmp) in self._active:
                    continue
            if pid is not None and int(pid) != os.getpid() and _pid_alive(int(pid)):
                continue
            with suppress(FileNotFoundError):
                tmp.unlink()
                removed += 1
        return removed

    # -- copying ---------------------------------------------------------------------------
    def transfer_batch(
        self,
        requests: list[TransferRequest],
        progress: ProgressCallback | None = None,
        *,
        on_outcome: OutcomeCallback | None = None,
    ) -> list[TransferOutcome]:
        """Copy every request; outcomes come back in request order, and each also goes to `on_outcome` when ready."""
        reporter = _Reporter(progress, on_outcome)
        workers = min(self.parallel_copies, len(requests))
        if workers <= 1:
            return [self._transfer_one(r, reporter) for r in requests]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rtlib-copy") as pool:
            return list(pool.map(lambda r: self._transfer_one(r, reporter), requests))

    def _transfer_one(self, req: TransferRequest, reporter: _Reporter) -> TransferOutcome:
        attempt = 0
        while True:
            attempt += 1
            try:
                checksum, nbytes = self._attempt(req, reporter)
                outcome = TransferOutcome(req.item_id, True, bytes=nbytes, checksum=checksum, attempts=attempt)
                break
            except TransferError as err:
                if err.permanent:
                    outcome = TransferOutcome(req.item_id, False, attempts=attempt, error=str(err), permanent=True)
                    break
                if attempt > self.retries:
                    outcome = TransferOutcome(
                        req.item_id, False, attempts=attempt, permanent=False,
                        error=f"gave up after {attempt} attempts ({self.retries} retries); last error: {err}. "
                        "Check the link and the filesystems, then retry the job (or raise agent.transfer_retries)",
                    )
                    break
                log.warning("transfer item %s attempt %d failed, retrying: %s", req.item_id, attempt, err)
            except RtlibError as err:  # unknown endpoint, path outside root: retrying cannot help
                outcome = TransferOutcome(req.item_id, False, attempts=attempt, error=str(err), permanent=True)
                break
            except Exception as err:  # a bug, not a transfer problem: report it on the item, never lose the batch
                log.exception("unexpected error copying item %s", req.item_id)
                outcome = TransferOutcome(
                    req.item_id, False, attempts=attempt, permanent=True,
                    error=f"unexpected {type(err).__name__} copying {self._describe(req)}: {err} (a bug in rtlib; please report it)",
                )
                break
            time.sleep(self._backoff_s(attempt))
        reporter.outcome(outcome)
        return outcome

    def _backoff_s(self, attempt: int) -> float:
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        # "equal jitter": at least half the delay keeps backing off; the random half de-synchronizes retries
        return delay * (0.5 + 0.5 * self._jitter.random())

    @staticmethod
    def _describe(req: TransferRequest) -> str:
        return f"{req.src_endpoint}:{req.src_path} -> {req.dst_endpoint}:{req.dst_path}"

    def _attempt(self, req: TransferRequest, reporter: _Reporter) -> tuple[str, int]:
        """One copy attempt. Raises TransferError (with `permanent` set) or RtlibError for a bad path."""
        src = self.resolve(req.src_endpoint, req.src_path)
        dst = self.resolve(req.dst_endpoint, req.dst_path)
        try:
            try:
                src_st = os.stat(src)
            except FileNotFoundError:
                raise TransferError(
                    f"source {req.src_endpoint}:{req.src_path} does not exist (looked for {src}); "
                    "check the path, or that the detector finished writing it",
                    permanent=True,
                ) from None
            if not stat.S_ISREG(src_st.st_mode):
                raise TransferError(f"source {req.src_endpoint}:{req.src_path} is not a regular file ({src}); transfer the files in it", permanent=True)
            if dst.is_dir():
                raise TransferError(f"destination {req.dst_endpoint}:{req.dst_path} is an existing directory ({dst}); give a file path", permanent=True)
            done = self._existing_copy(src, dst, src_st.st_size)
            if done is not None:  # a re-run after a crash: the verified copy is already there
                return done, src_st.st_size
            fault = self.faults.next_fault() if self.faults is not None else Fault.NONE
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.parent / temp_name(dst.name)
            with self._active_lock:
                self._active.add(str(tmp))
            try:
                checksum = self._stream(req, src, tmp, src_st.st_size, reporter, fault)
                if fault is Fault.CORRUPT:
                    self.faults.corrupt(tmp)
                copied = file_checksum(tmp, chunk_bytes=self.chunk_bytes)
                if copied != checksum:
                    raise ChecksumMismatch(
                        f"the copy of {self._describe(req)} has checksum {copied[:16]}…, the source {checksum[:16]}…; "
                        "the copy was corrupted on the way and was discarded"
                    )
                os.replace(tmp, dst)
                _fsync_dir(dst.parent)
                return checksum, src_st.st_size
            except BaseException:
                with suppress(OSError):
                    os.unlink(tmp)
                raise
            finally:
                with self._active_lock:
                    self._active.discard(str(tmp))
        except OSError as err:
            raise self._os_error(err, req, src) from err

    def _existing_copy(self, src: Path, dst: Path, size: int) -> str | None:
        """The source checksum if `dst` already holds an identical file, else None."""
        try:
            if not dst.is_file() or dst.stat().st_size != size:
                return None
            if src == dst:
                return file_checksum(src, chunk_bytes=self.chunk_bytes)
            checksum = file_checksum(src, chunk_bytes=self.chunk_bytes)
            return checksum if file_checksum(dst, chunk_bytes=self.chunk_bytes) == checksum else None
        except FileNotFoundError as err:
            if str(src) == err.filename:
                raise
            return None  # dst vanished meanwhile: copy it

    def _stream(self, req: TransferRequest, src: Path, tmp: Path, size: int, reporter: _Reporter, fault: Fault) -> str:
        """Copy src to tmp through the buckets, hashing the bytes read; return the source's checksum."""
        buckets = [b for b in (self.link, self.endpoint_buckets.get(req.src_endpoint)) if b is not None]
        buf = bytearray(shaped_chunk_bytes(buckets, self.chunk_bytes))
        view = memoryview(buf)
        hasher = new_hasher()
        fail_at = size // 2 if fault is Fault.FAIL else None  # a simulated link drop, halfway through
        copied = 0
        with open(src, "rb") as fin, open(tmp, "xb") as fout:
            while True:
                if fail_at is not None and copied >= fail_at:
                    raise self.faults.failure(self._describe(req))
                n = fin.readinto(view)
                if not n:
                    break
                if buckets:
                    consume_all(buckets, n)
                chunk = view[:n]
                fout.write(chunk)
                hasher.update(chunk)
                copied += n
                reporter.progress(n)
            fout.flush()
            os.fsync(fout.fileno())
        return hasher.hexdigest()

    def _os_error(self, err: OSError, req: TransferRequest, src: Path) -> TransferError:
        where = self._describe(req)
        path = err.filename or "?"
        code = errno.errorcode.get(err.errno, "no errno")  # named in every message: the fix depends on it
        if isinstance(err, FileNotFoundError) and path == str(src):
            return TransferError(f"source {req.src_endpoint}:{req.src_path} disappeared while copying {where}; check who removes it", permanent=True)
        if isinstance(err, PermissionError):
            return TransferError(
                f"permission denied ({code}) on {path} while copying {where}; let the user running rtlib (uid {os.getuid()}) "
                "read the source and write the destination directory",
                permanent=True,
            )
        if err.errno in (errno.EEXIST, errno.ENOTDIR):
            return TransferError(
                f"cannot copy {where}: {path} is a file where a directory is needed ({code}); remove it or choose another destination",
                permanent=True,
            )
        if err.errno in _PERMANENT_ERRNOS:
            return TransferError(f"cannot copy {where}: {err.strerror} ({code}) on {path}; fix the path or the filesystem", permanent=True)
        if err.errno == errno.ENOSPC:
            return TransferError(f"no space left ({code}) on the device holding {path} while copying {where}; free space there", permanent=False)
        return TransferError(f"copying {where} failed: {err.strerror or err} ({code}) on {path}", permanent=False)

    def close(self) -> None:
        pass  # thread pools live only as long as one batch
