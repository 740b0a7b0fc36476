"""One exception type per failure a user can meet. Each message says the cause and the fix."""


class RtlibError(Exception):
    """Base class of every error rtlib raises on purpose."""


class ConfigError(RtlibError):
    """The site config is invalid: names the file, the key and what is allowed."""


class IllegalTransition(RtlibError):
    """A job was asked to move between two states the state machine does not connect."""


class JobNotFound(RtlibError):
    pass


class UnknownWorkload(RtlibError):
    pass


class ParameterError(RtlibError):
    """Workload parameters failed validation (unknown name, wrong type, out of range)."""


class InputDataError(RtlibError):
    """An input file is missing, truncated, corrupt, or lacks the expected dataset."""


class EndpointError(RtlibError):
    """An endpoint name is unknown or a path is not usable on it."""


class PathOutsideRoot(EndpointError):
    """A path resolves outside its endpoint's root directory."""


class TransferError(RtlibError):
    """A file copy failed. `permanent` says whether retrying can help."""

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


class ChecksumMismatch(TransferError):
    """The copy's checksum differs from the source's: the copy was discarded."""


class ComputeStartError(RtlibError):
    """The compute backend could not start its workers."""


class WorkerLost(RtlibError):
    """The compute worker running a job disappeared (preemption, walltime, node failure)."""


class NotebookNotFound(RtlibError):
    """A workload has no pipeline notebook: names the directories that were searched."""


class NotebookExecutionError(RtlibError):
    """A pipeline notebook failed: names the cell, the exception, and the executed notebook to inspect."""

    def __init__(self, message: str, *, notebook_path=None, cell_index=None, ename=None, evalue=None):
        super().__init__(message)
        self.notebook_path = notebook_path
        self.cell_index = cell_index
        self.ename = ename
        self.evalue = evalue


class StoreError(RtlibError):
    """The job store cannot be used as it is: names the store (password hidden), the cause and the fix."""


class StoreReadOnly(StoreError):
    """The job store refuses writes (a read-only file, a database role without INSERT/UPDATE)."""


class StoreLost(StoreError):
    """The job store vanished or was replaced under a running process: going on would write into the void."""


class ResultsRootClaimed(RtlibError):
    """A results folder belongs to another job store, whose job ids this store's ids would collide with."""


class StagedInputChanged(InputDataError):
    """A staged input's bytes changed between stage-in and analysis (its checksum no longer matches)."""
