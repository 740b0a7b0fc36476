"""Installing the "Python 3 (rtlib)" kernelspec: ipykernel on this interpreter with the %rtlib magics loaded."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from . import KERNELSPEC_DIR

KERNEL_NAME = "rtlib"


def kernelspec_json(python: str | None = None) -> dict:
    """The shipped kernel.json with its interpreter set to `python` (default: this one)."""
    spec = json.loads((KERNELSPEC_DIR / "kernel.json").read_text())
    spec["argv"][0] = python or sys.executable
    return spec


def install_kernelspec(*, user: bool = False, prefix: str | Path | None = None, sys_prefix: bool = False,
                       name: str = KERNEL_NAME) -> Path:
    """Install the kernelspec through jupyter_client's KernelSpecManager; returns the directory it went to.

    Where: ``user`` (~/.local/share/jupyter), ``prefix`` (PREFIX/share/jupyter), ``sys_prefix`` (this
    environment), else the system-wide location (may need root).
    """
    from jupyter_client.kernelspec import KernelSpecManager

    if sum(map(bool, (user, prefix is not None, sys_prefix))) > 1:
        raise ValueError("choose at most one of user, prefix and sys_prefix")
    if sys_prefix:
        prefix = sys.prefix
    with tempfile.TemporaryDirectory(prefix="rtlib-kernelspec-") as tmp:
        source = Path(tmp) / name
        shutil.copytree(KERNELSPEC_DIR, source)
        (source / "kernel.json").write_text(json.dumps(kernelspec_json(), indent=2) + "\n")
        installed = KernelSpecManager().install_kernel_spec(str(source), kernel_name=name, user=user,
                                                            prefix=str(prefix) if prefix is not None else None)
    return Path(installed)
