"""`rtlib transfer` (ad-hoc copies between endpoints, local or Globus) and `rtlib login` (native-app Globus login).

The commands only wire library calls: listing and copying go through the
configured TransferBackend (rtlib.transfer.factory), identities through
rtlib.transfer.identity. `rtlib transfer --json` prints one outcome per
file, for the JupyterLab transfer widget.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Collection
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from . import config as cfg
from .errors import RtlibError
from .jobs import parse_location
from .transfer.base import TransferBackend, TransferRequest
from .transfer.destinations import check_destination, scratch_endpoints

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

_ConfigOpt = typer.Option(None, "--config", "-c", help="site config TOML (default: $RTLIB_CONFIG, ./rtlib.toml, else the embedded default)")
_WorkspaceOpt = typer.Option(None, "--workspace", "-w", help="workspace directory (default: $RTLIB_WORKSPACE or ~/.local/share/rtlib)")


def plan_copy(backend: TransferBackend, source: str, destination: str, *, scratch: Collection[str]) -> list[TransferRequest]:
    """One request per file under SOURCE (ENDPOINT:PATH), placed under DESTINATION like `cp -r`.

    A file goes to DESTINATION itself, or into it when DESTINATION ends with '/'. A directory's
    files keep their paths relative to it, under DESTINATION. EndpointError if a file would land in
    the job area of one of the `scratch` endpoints (rtlib.transfer.destinations).
    """
    src_ep, src_path = parse_location(source)
    dst_ep, dst_path = parse_location(destination)
    files = backend.list_files(src_ep, src_path)
    if not files:
        raise RtlibError(f"{source} holds no files; nothing to transfer")
    # listings are relative to the endpoint root (or base_path); SOURCE may be spelled absolute on a collection
    top = posixpath.normpath(src_path).strip("/").removeprefix(".")
    first = files[0][0]
    single = len(files) == 1 and (first == top or top.endswith("/" + first))
    requests = []
    for i, (rel, size) in enumerate(files):
        if single:
            target = posixpath.join(dst_path, posixpath.basename(rel)) if dst_path.endswith("/") else dst_path
        else:
            target = posixpath.join(dst_path, _inside(rel, top))
        check_destination(backend, scratch, dst_ep, target)
        requests.append(TransferRequest(i, src_ep, rel, dst_ep, target, size))
    return requests


def run_as_beamline(settings: cfg.Settings, backend: TransferBackend, beamline: str, src: str, dst: str) -> None:
    """Make every Globus call of `backend` run as `beamline`'s identity; refuse at once endpoints it may not use."""
    from .transfer.globus import GlobusTransferBackend
    from .transfer.identity import check_allowed_endpoints, identity_for_endpoints
    from .transfer.routing import RoutingTransferBackend

    if beamline not in settings.beamlines:
        raise RtlibError(f"unknown beamline {beamline!r}; configured: {', '.join(sorted(settings.beamlines)) or 'none'}")
    check_allowed_endpoints(settings, beamline, src, dst)
    globus = backend.globus if isinstance(backend, RoutingTransferBackend) else backend
    if isinstance(globus, GlobusTransferBackend):
        globus.identity_for = lambda src, dst, job_beamline=None: identity_for_endpoints(settings, src, dst, beamline=job_beamline or beamline)


def _inside(rel: str, top: str) -> str:
    """`rel` relative to the listed directory `top` (whose leading components may be the base_path)."""
    parts = top.split("/") if top else []
    for k in range(len(parts) + 1):
        head = "/".join(parts[k:])
        if not head:
            return rel
        if rel.startswith(head + "/"):
            return rel[len(head) + 1:]
    return rel


def transfer(
    source: str = typer.Argument(..., metavar="SRC_ENDPOINT:PATH", help="a file or a directory (copied recursively)"),
    destination: str = typer.Argument(..., metavar="DST_ENDPOINT:PATH", help="end with '/' to copy a file into a directory"),
    config: Optional[Path] = _ConfigOpt,
    workspace: Optional[Path] = _WorkspaceOpt,
    as_json: bool = typer.Option(False, "--json", help="print one JSON outcome per file instead of a progress bar"),
    beamline: Optional[str] = typer.Option(
        None, "--beamline", help="run as this beamline's service account (on its allowed_endpoints); default: the "
        "service account of the beamline owning SRC or DST, else your `rtlib login` identity"),
) -> None:
    """Copy files between two endpoints now, outside any job: locally, or as one or more Globus tasks."""
    from .transfer.factory import make_transfer_backend

    try:
        settings = cfg.load(config, workspace=workspace)
        cfg.ensure_workspace(settings)
        backend = make_transfer_backend(settings)
        try:
            if beamline is not None:
                run_as_beamline(settings, backend, beamline, parse_location(source)[0], parse_location(destination)[0])
            requests = plan_copy(backend, source, destination, scratch=scratch_endpoints(settings))
            total = sum(r.size_bytes for r in requests)
            if as_json:
                outcomes = backend.transfer_batch(requests)
            else:
                columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
                with Progress(*columns, console=err_console, transient=False) as bar:
                    task = bar.add_task(f"{len(requests)} file(s)", total=total or None)
                    outcomes = backend.transfer_batch(requests, lambda n: bar.advance(task, n))
                    bar.update(task, completed=total)
        finally:
            backend.close()
    except RtlibError as err:
        err_console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2)
    by_id = {r.item_id: r for r in requests}
    failed = [o for o in outcomes if not o.ok]
    if as_json:
        print(json.dumps([
            {**asdict(o), "src": f"{by_id[o.item_id].src_endpoint}:{by_id[o.item_id].src_path}",
             "dst": f"{by_id[o.item_id].dst_endpoint}:{by_id[o.item_id].dst_path}"} for o in outcomes
        ], indent=2))
    else:
        done = len(outcomes) - len(failed)
        console.print(f"{done} of {len(outcomes)} file(s) transferred to {destination}")
        for o in failed:
            r = by_id[o.item_id]
            err_console.print(f"[red]{r.src_endpoint}:{r.src_path}:[/] {o.error}")
    if failed:
        raise typer.Exit(1)


def login(
    config: Optional[Path] = _ConfigOpt,
    workspace: Optional[Path] = _WorkspaceOpt,
    force: bool = typer.Option(False, "--force", help="log in again even if stored tokens look valid"),
    scope: List[str] = typer.Option([], "--scope", help="an extra scope to consent to (repeatable), as an error message names it"),
) -> None:
    """Log in to Globus as yourself (native-app flow); tokens are kept in the workspace, mode 0600."""
    from .transfer.identity import USER_TOKEN_FILE_NAME, UserIdentity, data_access_collections

    try:
        settings = cfg.load(config, workspace=workspace)
        client_id = settings.globus.native_client_id
        if not client_id:
            raise RtlibError(
                "no native-app client id: add `native_client_id = \"<uuid>\"` under [globus] in the site config "
                "(register a native app at https://app.globus.org/settings/developers)"
            )
        settings.workspace.mkdir(parents=True, exist_ok=True)
        user = UserIdentity(client_id, settings.workspace / USER_TOKEN_FILE_NAME, data_access=data_access_collections(settings))
        user.login(force=force, extra_scopes=scope)
    except RtlibError as err:
        err_console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2)
    console.print(f"logged in; tokens stored in {user.token_file}")
