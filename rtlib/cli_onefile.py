"""What the one-file commands (`rtlib xpcs analyze`, `rtlib laue reconstruct`, `rtlib em run`) share.

Progress lines on the console, and an empty scratch directory beside OUTPUT
that the workload writes into; the command moves the result to OUTPUT only
once it is complete, so a crash never leaves a half-written result there.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from rich.console import Console


@dataclass
class OneFileRun:
    scratch: Path
    quiet: bool
    console: Console
    started: float = field(default_factory=time.perf_counter)

    def report(self, fraction: float, message: str = "") -> None:
        if not self.quiet:
            self.console.print(f"{fraction:6.1%}  {message}", highlight=False)

    def wall_s(self) -> float:
        return round(time.perf_counter() - self.started, 3)


@contextmanager
def one_file_run(output: Path, *, prefix: str, quiet: bool, console: Console) -> Iterator[OneFileRun]:
    """A scratch directory in OUTPUT's directory (created), removed on the way out."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=prefix) as scratch:
        yield OneFileRun(Path(scratch), quiet, console)
