"""The JupyterLab layer of rtlib: a server extension (REST API), ipywidgets, kernel magics, a kernelspec.

Everything here only wires `rtlib.manager.JobManager`; the rules live in rtlib.
Importing this package is cheap (a kernel loads it with ``--ext=jupyter_ext``):
jupyter_server, ipywidgets and IPython are imported only by the modules that need them.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["_jupyter_labextension_paths", "_jupyter_server_extension_points", "load_ipython_extension", "unload_ipython_extension"]

HERE = Path(__file__).resolve().parent
KERNELSPEC_DIR = HERE / "kernels" / "rtlib"


def _jupyter_server_extension_points() -> list[dict]:
    from .app import RtlibExtensionApp

    return [{"module": "jupyter_ext", "app": RtlibExtensionApp}]


def _jupyter_labextension_paths() -> list[dict]:
    return [{"src": "labextension", "dest": "rtlib-jupyter"}]


def load_ipython_extension(ipython) -> None:
    """`%load_ext jupyter_ext` (or the rtlib kernel's --ext=jupyter_ext): registers the %rtlib magic."""
    from .magics import load_magics

    load_magics(ipython)


def unload_ipython_extension(ipython) -> None:
    from .magics import unload_magics

    unload_magics(ipython)
