"""Run a compiled function's tasks on a pool of threads (the function releases the GIL).

numba's ``parallel=True`` would do the same, but it compiles a large parallel
body very slowly: a new process without a cache, or a new input type, would
wait many seconds before its first batch, and a preempted worker pays that
again. A plain compiled function called from Python threads compiles once,
quickly, and caches like any other.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

_pool: ThreadPoolExecutor | None = None
_pool_pid = 0


def thread_count() -> int:
    """numba's thread count (NUMBA_NUM_THREADS, else the cores), so every compiled kernel uses the same."""
    try:
        from numba import get_num_threads

        return get_num_threads()
    except ImportError:  # pragma: no cover - numba is a dependency
        return os.cpu_count() or 1


def run_tasks(fn, tasks: int, *args) -> list:
    """``fn(*args, task, tasks)`` for task 0..tasks-1 on the pool; their results in task order."""
    global _pool, _pool_pid
    if tasks <= 1:
        return [fn(*args, 0, 1)] if tasks == 1 else []
    if _pool is None or _pool_pid != os.getpid():  # a pool does not survive a fork
        _pool = ThreadPoolExecutor(max_workers=thread_count(), thread_name_prefix="rtlib-kernel")
        _pool_pid = os.getpid()
    futures = [_pool.submit(fn, *args, task, tasks) for task in range(tasks)]
    return [f.result() for f in futures]
