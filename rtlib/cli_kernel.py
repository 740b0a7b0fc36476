"""`rtlib kernel install`: the "Python 3 (rtlib)" Jupyter kernel, which loads the %rtlib magics."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

kernel_app = typer.Typer(help="The Jupyter kernel with the %rtlib magics.", no_args_is_help=True)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


@kernel_app.command("install")
def install(
    user: bool = typer.Option(False, "--user", help="for this user only (~/.local/share/jupyter)"),
    sys_prefix: bool = typer.Option(False, "--sys-prefix", help="into this Python environment (a venv, conda env, Binder)"),
    prefix: Optional[Path] = typer.Option(None, "--prefix", help="under PREFIX/share/jupyter (set JUPYTER_PATH=PREFIX/share/jupyter to find it)"),
    name: str = typer.Option("rtlib", help="kernel name, as `papermill -k NAME` takes it"),
) -> None:
    """Install the kernelspec "Python 3 (rtlib)" (ipykernel on this Python, with --ext=jupyter_ext)."""
    from jupyter_ext.kernelspec import install_kernelspec

    if sum((user, sys_prefix, prefix is not None)) > 1:
        err_console.print("[red]error:[/] give at most one of --user, --sys-prefix and --prefix")
        raise typer.Exit(2)
    try:
        path = install_kernelspec(user=user, sys_prefix=sys_prefix, prefix=prefix, name=name)
    except PermissionError as err:
        err_console.print(f"[red]error:[/] cannot write {err.filename}: permission denied; use --user or --sys-prefix")
        raise typer.Exit(2)
    console.print(f"installed kernelspec {name!r} in {path}")
