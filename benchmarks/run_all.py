"""Run every benchmark in turn (`make bench`); each writes its JSON and regenerates docs/benchmarks.md.

Run on a quiet machine: the figures are wall-clock rates. Pass names to run only some:
    python benchmarks/run_all.py overhead pipeline
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = {
    "overhead": ["overhead.py"],
    "pipeline": ["pipeline.py"],
    "pipeline_xpcs": ["pipeline.py", "--workload", "xpcs"],
    "batching": ["batching.py"],
    "xpcs": ["xpcs.py"],
    "xpcs_campaign": ["xpcs_campaign.py"],
    "soak": ["soak.py"],
    "laue": ["laue.py"],
    "em": ["em.py"],
    "hpc": ["hpc.py"],
    "jupyter_api": ["jupyter_api.py"],
    "jupyter_panel": ["panel.py"],
}


def main() -> int:
    chosen = sys.argv[1:] or list(RUNS)
    unknown = [c for c in chosen if c not in RUNS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {', '.join(RUNS)}", file=sys.stderr)
        return 2
    failed = []
    for name in chosen:
        script, *args = RUNS[name]
        print(f"== {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / script), *args]).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
