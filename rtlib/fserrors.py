"""File-system errors met while handling one job: which are worth retrying, and how to say them.

A permission, a full disk or an I/O error on one job's files is that job's
trouble, never the agent's: the agent fails (or, for an analysis, retries)
that job with the sentence built here, and goes on with the others.
"""

from __future__ import annotations

import errno
import os

# the same call can work later: a full disk or quota, a flaky or stale network mount, a busy device
TRANSIENT_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ENOMEM,
})  # fmt: skip


def is_fs_error(err: BaseException) -> bool:
    """An OSError from the file system carries an errno; a closed socket to a scheduler (CommClosedError) does not."""
    return isinstance(err, OSError) and err.errno is not None


def is_transient(err: OSError) -> bool:
    return err.errno in TRANSIENT_ERRNOS


def describe(err: OSError) -> str:
    """`Permission denied (EACCES) on /scratch/jobs/00000003`: the cause, its errno name and the path."""
    code = errno.errorcode.get(err.errno, str(err.errno)) if err.errno is not None else "no errno"
    where = f" on {err.filename}" if err.filename else ""
    if err.filename2:
        where += f" -> {err.filename2}"
    return f"{err.strerror or err} ({code}){where}"


def fix_hint(err: OSError) -> str:
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"let the user running rtlib (uid {os.getuid()}) read the inputs and write the scratch and destination folders"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free space (or quota) on that file system"
    if err.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return "a file stands where a folder is needed (or the reverse); move it away"
    if err.errno in (errno.EIO, errno.ESTALE):
        return "the device or network mount reported an error; check it"
    return "fix the path or the file system"
