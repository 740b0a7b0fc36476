"""A workload that does nothing for a given time: measures orchestration overhead."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .base import ProgressFn, Workload


class NoopParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sleep_s: float = Field(0.0, ge=0, description="seconds to wait, standing for the analysis")
    partial_file: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                                     description="a file written before the wait and removed after it: the partial output "
                                                 "of an analysis killed meanwhile (for preemption tests)")  # fmt: skip


def run(params: NoopParams, inputs: list[Path], outdir: Path, progress: ProgressFn) -> dict:
    partial = outdir / params.partial_file if params.partial_file else None
    if partial is not None:
        partial.write_text("partial output of an unfinished attempt\n")
    time.sleep(params.sleep_s)
    if partial is not None:
        partial.unlink()  # a finished analysis leaves only its final outputs
    total = sum(p.stat().st_size for p in inputs)
    (outdir / "noop.txt").write_text(f"{len(inputs)} inputs, {total} bytes\n")
    progress(1.0, "done")
    return {"inputs": len(inputs), "input_bytes": total}


workload = Workload(name="noop", params_model=NoopParams, run=run, description="wait sleep_s seconds; for tests and benchmarks")
