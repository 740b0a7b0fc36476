"""`rtlib accounts`: node-hour budget, use, reservations and held jobs per allocation and suballocation.

The command only wires rtlib.accounting; `--set ACCOUNT=HOURS` changes a budget at run time
(kept in the job store, where every agent sees it within a second and releases the jobs it fits).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import config as cfg
from .accounting import accounts_status
from .store import JobStore

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

_ConfigOpt = typer.Option(None, "--config", "-c", help="site config TOML (default: $RTLIB_CONFIG, ./rtlib.toml, else the embedded default)")
_WorkspaceOpt = typer.Option(None, "--workspace", "-w", help="workspace directory (default: $RTLIB_WORKSPACE or ~/.local/share/rtlib)")


def accounts(
    set_budget: Optional[List[str]] = typer.Option(None, "--set", help="ACCOUNT=NODE_HOURS: change a budget (repeatable)"),
    as_json: bool = typer.Option(False, "--json"),
    config: Optional[Path] = _ConfigOpt,
    workspace: Optional[Path] = _WorkspaceOpt,
):
    """Budget, used, reserved and remaining node-hours per account, with the jobs held over budget."""
    settings = cfg.load(config, workspace=workspace)
    cfg.ensure_workspace(settings)
    store = JobStore(settings.store)
    try:
        for item in set_budget or []:
            name, sep, hours = item.partition("=")
            try:
                value = float(hours)
            except ValueError:
                value = -1.0
            if not sep or not 0 <= value < math.inf:  # NaN compares false: it would pass `value < 0`
                err_console.print(f"[red]error:[/] --set {item!r}: give ACCOUNT=NODE_HOURS with a number >= 0, e.g. rtlib::aps=250")
                raise typer.Exit(2)
            if name not in settings.accounts:
                err_console.print(f"[red]error:[/] unknown account {name!r}; configured: {', '.join(sorted(settings.accounts)) or 'none'} (add it under [accounts] first)")
                raise typer.Exit(2)
            store.set_budget(name, value)
        rows = [a.to_dict() for a in accounts_status(settings, store)]
    finally:
        store.close()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table("account", "budget (node-h)", "used", "reserved", "remaining", "running", "held jobs")
    for r in rows:
        t.add_row(r["account"], f"{r['budget_node_hours']:.4g}", f"{r['used_node_hours']:.4g}", f"{r['reserved_node_hours']:.4g}",
                  f"{r['remaining_node_hours']:.4g}", str(r["running_jobs"]), ", ".join(map(str, r["held_jobs"])) or "-")  # fmt: skip
    console.print(t)
