"""The `rtlib` command. It only wires the library; every operation lives in an rtlib module."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import config as cfg
from . import jobs as jobops
from .errors import RtlibError

app = typer.Typer(
    help="Near-real-time analysis of light-source data on a supercomputer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # tracebacks with locals could print secrets
)
config_app = typer.Typer(help="Inspect the site config.", no_args_is_help=True)
synth_app = typer.Typer(help="Write synthetic detector data with known ground truth.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(synth_app, name="synth")
console = Console()
err_console = Console(stderr=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="site config TOML (default: $RTLIB_CONFIG, ./rtlib.toml, else the embedded default)")
WorkspaceOpt = typer.Option(None, "--workspace", "-w", help="workspace directory (default: $RTLIB_WORKSPACE or ~/.local/share/rtlib)")


def _settings(config: Optional[Path], workspace: Optional[Path]) -> cfg.Settings:
    return cfg.load(config, workspace=workspace)


def _store(settings: cfg.Settings):
    from .store import JobStore

    cfg.ensure_workspace(settings)
    return JobStore(settings.store)


# `-p NAME VALUE` (papermill's form) takes two values; typer cannot declare a repeatable pair,
# so the commands that take parameters collect their extra arguments and read them here,
# and say so in their help (PARAM_HELP, shown under the options).
PARAM_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}
PARAM_HELP = ("Workload parameters: -p NAME VALUE, repeatable, papermill's form (e.g. -p num_q_bins 300). "
              "VALUE is read as a bool, None, int or float where it looks like one, else as text. "
              "`rtlib workloads` lists each workload's parameters.")


def _parse_params(args: list[str], workload: str | None = None) -> dict:
    from .notebooks import parse_cli_params

    pairs, i = [], 0
    while i < len(args):
        if args[i] not in ("-p", "--param"):
            raise RtlibError(f"unexpected argument {args[i]!r}; workload parameters are given as -p NAME VALUE")
        if i + 2 >= len(args):
            raise RtlibError(f"{args[i]} needs a NAME and a VALUE, e.g. -p num_q_bins 300")
        pairs.append((args[i + 1], args[i + 2]))
        i += 3
    return parse_cli_params(pairs, workload)


# -- config -----------------------------------------------------------------
@config_app.command("show")
def config_show(config: Optional[Path] = ConfigOpt, workspace: Optional[Path] = WorkspaceOpt, as_json: bool = typer.Option(False, "--json")):
    """Print the effective config with every secret redacted."""
    data = cfg.redacted(_settings(config, workspace))
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        console.print_json(json.dumps(data))


# -- synth ------------------------------------------------------------------
@synth_app.command("detector")
def synth_detector(
    path: Path = typer.Argument(..., help="HDF5 file to write"),
    size_mb: float = typer.Option(10.0, help="approximate file size in MB"),
    height_px: int = typer.Option(256), width_px: int = typer.Option(256),
    seed: int = typer.Option(0),
    compression: Optional[str] = typer.Option(None, help="gzip or lz4"),
):
    """An area-detector file (frames at /entry/data/data) with an isotropic pattern of known I(q)."""
    from .synth.detector import frames_for_size, write_detector_file

    frames = max(1, frames_for_size(int(size_mb * 1e6), height_px, width_px, "uint16"))
    path.parent.mkdir(parents=True, exist_ok=True)
    truth = write_detector_file(path, frames=frames, height=height_px, width=width_px, seed=seed, compression=compression)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {frames} frames)")
    console.print_json(json.dumps(truth, default=str))


# -- jobs -------------------------------------------------------------------
@app.command(context_settings=PARAM_CONTEXT, epilog=PARAM_HELP)
def submit(
    ctx: typer.Context,
    workload: str = typer.Argument(..., help="workload name (see `rtlib workloads`)"),
    source: list[str] = typer.Option(..., "--input", "-i", help="input ENDPOINT:PATH (repeatable, one endpoint)"),
    dest: Optional[str] = typer.Option(None, "--dest", "-d", help="results ENDPOINT:PATH; {job_id} is filled in (default: the input endpoint, results/<workload>/job-<id>)"),
    site: str = typer.Option("local"), queue: Optional[str] = typer.Option(None), account: Optional[str] = typer.Option(None),
    beamline: Optional[str] = typer.Option(None), priority: int = typer.Option(0),
    config: Optional[Path] = ConfigOpt, workspace: Optional[Path] = WorkspaceOpt,
):
    """Record a job; a running `rtlib agent` picks it up. Parameters: -p NAME VALUE (repeatable)."""
    settings = _settings(config, workspace)
    locs = [jobops.parse_location(s) for s in source]
    endpoints = {ep for ep, _ in locs}
    if len(endpoints) != 1:
        raise RtlibError(f"all inputs of one job must be on one endpoint; got {sorted(endpoints)}")
    kwargs = {}
    if dest:
        kwargs["dest_endpoint"], kwargs["output_path"] = jobops.parse_location(dest)
    store = _store(settings)
    job_id = jobops.submit(
        store, settings, workload, source_endpoint=locs[0][0], inputs=[p for _, p in locs], params=_parse_params(ctx.args, workload),
        site=site, queue=queue, account=account, beamline=beamline, priority=priority, **kwargs,
    )
    console.print(f"submitted job {job_id}")


@app.command()
def agent(
    site: str = typer.Option("local"),
    until_idle: bool = typer.Option(False, "--until-idle", help="stop when the site has no active job left"),
    max_seconds: Optional[float] = typer.Option(None, help="stop after this many seconds"),
    link_mbps: Optional[float] = typer.Option(None, help="shape every copy to this many megabits per second"),
    faults: Optional[str] = typer.Option(None, help="inject transfer faults, e.g. fail=0.2,corrupt=0.1,seed=1 (also $RTLIB_FAULTS)"),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="live status line (default: when stderr is a terminal)"),
    max_jobs: int = typer.Option(256, help="most jobs this agent leases at once (several agents share a site's jobs)"),
    store_wait_s: float = typer.Option(300.0, help="at start, wait this long for an unreachable job store"),
    config: Optional[Path] = ConfigOpt, workspace: Optional[Path] = WorkspaceOpt,
):
    """Run the site agent: stage in, analyse, stage out, with leases so a restart resumes."""
    from .runtime import open_runtime

    settings = _settings(config, workspace)
    rt = open_runtime(settings, link_mbps=link_mbps, faults=faults, store_wait_s=store_wait_s)
    try:
        ag = rt.agent(site, max_leased=max_jobs)
        err_console.print(f"agent {ag.agent_id} on site {site!r}, store {rt.store!r}")
        with _live_status(progress if progress is not None else sys.stderr.isatty()) as tick:
            ag.run(until_idle=until_idle, max_seconds=max_seconds, on_tick=tick)
    finally:
        rt.close()


@contextlib.contextmanager
def _live_status(enabled: bool = True):
    """A one-line live view of the site: jobs by state, bytes moved, link rate. Yields the agent's on_tick."""
    from rich.live import Live

    if not enabled:
        yield None
        return
    with Live(console=err_console, refresh_per_second=4, transient=False) as live:

        def tick(ag) -> None:
            counts = ag.store.count_by_state(site=ag.site_name)
            elapsed = max(time.time() - ag.stats.started, 1e-9)
            moved = ag.stats.bytes_in + ag.stats.bytes_out
            states = "  ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
            live.update(f"[bold]{states}[/]   moved {moved / 1e6:.1f} MB at {moved * 8 / elapsed / 1e6:.0f} Mbps   {elapsed:.1f}s")

        yield tick


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _short(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, ending with an ellipsis when cut (`rtlib status ID` shows all of it)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


@app.command()
def status(
    job: Optional[int] = typer.Argument(None, help="one job: show it with its event history"),
    as_json: bool = typer.Option(False, "--json"),
    state: Optional[str] = typer.Option(None, help="only jobs in this state"),
    workload: Optional[str] = typer.Option(None), beamline: Optional[str] = typer.Option(None),
    limit: int = typer.Option(200), config: Optional[Path] = ConfigOpt, workspace: Optional[Path] = WorkspaceOpt,
):
    """Jobs with their state, progress and error (the reason a failed job failed)."""
    store = _store(_settings(config, workspace))
    if job is not None:
        j = store.get_job(job)
        events = [e.__dict__ for e in store.events(job)]
        if as_json:
            print(json.dumps({"job": j.to_dict(), "events": events}, indent=2, default=str))
            return
        console.print(f"job {j.id} [bold]{j.state.value}[/] {j.workload} {j.source_endpoint}:{','.join(j.inputs)} attempts {j.attempts}/{j.max_attempts}")
        if j.error:
            console.print(f"[yellow]{j.error}[/]" if j.state.value == "HELD" else f"[red]error:[/] {j.error}")
        t = Table("time", "from", "to", "reason")
        for e in events:
            t.add_row(time.strftime("%H:%M:%S", time.localtime(e["timestamp"])), e["from_state"] or "", e["to_state"], e["reason"])
        console.print(t)
        return
    rows = store.list_jobs(states=[state.upper()] if state else None, workload=workload, beamline=beamline, limit=limit)
    if as_json:
        print(json.dumps([r.to_dict() for r in rows], indent=2, default=str))
        return
    t = Table("id", "state", "workload", "beamline", "input", "attempts", "progress", "age", "error")
    now = time.time()
    for r in rows:
        t.add_row(str(r.id), r.state.value, r.workload, r.beamline or "", f"{r.source_endpoint}:{','.join(r.inputs)}",
                  f"{r.attempts}/{r.max_attempts}", f"{r.progress:.0%}", _age(now - r.created_at), _short(r.error or "", 300))
    console.print(t)
    counts = store.count_by_state()
    console.print("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no jobs")


@app.command()
def cancel(job_ids: list[int] = typer.Argument(...), config: Optional[Path] = ConfigOpt, workspace: Optional[Path] = WorkspaceOpt):
    """Cancel jobs; partial results never reach the destination."""
    store = _store(_settings(config, workspace))
    for jid in job_ids:
        jobops.cancel(store, jid)
        console.print(f"cancelled job {jid}")


@app.command()
def retry(job_ids: list[int] = typer.Argument(...), config: Optional[Path] = ConfigOpt, workspace: Optional[Path] = WorkspaceOpt):
    """Start FAILED or CANCELLED jobs again from the beginning."""
    store = _store(_settings(config, workspace))
    for jid in job_ids:
        jobops.retry(store, jid)
        console.print(f"job {jid} queued again")


@app.command()
def workloads(as_json: bool = typer.Option(False, "--json")):
    """Installed workloads and their parameters."""
    from .workloads import get_workload, workload_names

    data = {n: {"description": get_workload(n).description, "parameters": get_workload(n).json_schema()} for n in workload_names()}
    if as_json:
        print(json.dumps(data, indent=2))
        return
    for name, d in data.items():
        console.print(f"[bold]{name}[/]: {d['description']}")
        for p, s in d["parameters"].get("properties", {}).items():
            console.print(f"    {p} = {s.get('default', '(required)')!r}  {s.get('description', '')}")


@app.command(context_settings=PARAM_CONTEXT, epilog=PARAM_HELP + " The run itself takes -p input_path FILE -p output_path DIR.")
def run(
    ctx: typer.Context,
    workload: str = typer.Argument(...),
    kernel: Optional[str] = typer.Option(None, help="Jupyter kernel name (default: this Python)"),
):
    """Run a workload's notebook headless with papermill: -p input_path X -p output_path Y -p ...

    Parameters are validated before any kernel starts; the executed notebook is kept with the results.
    """
    from .notebooks import run_notebook

    values = _parse_params(ctx.args)
    missing = [k for k in ("input_path", "output_path") if k not in values]
    if missing:
        raise RtlibError(f"missing {' and '.join(missing)}: give -p input_path FILE -p output_path DIR")
    result = run_notebook(workload, values.pop("input_path"), values.pop("output_path"), values, kernel_name=kernel)
    console.print(f"executed notebook: {result.notebook}")
    console.print_json(json.dumps(result.summary, default=str))


@app.command()
def soak(
    duration_s: float = typer.Option(60.0, help="seconds of data production; then the queue drains"),
    dataset_interval_s: float = typer.Option(1.0, help="seconds between datasets at each of the three endpoints"),
    link_mbps: Optional[float] = typer.Option(276.0, help="shaped link rate (0: unshaped)"),
    fail_rate: float = typer.Option(0.05, help="share of copy attempts that fail"),
    corrupt_rate: float = typer.Option(0.05, help="share of copy attempts that arrive corrupted"),
    kill_every_s: float = typer.Option(20.0, help="mean seconds between agent SIGKILLs (0: never)"),
    preempt_every_s: float = typer.Option(15.0, help="mean seconds between dask worker kills (0: never)"),
    malformed: float = typer.Option(0.05, help="share of datasets written truncated"),
    globus: bool = typer.Option(True, "--globus/--no-globus", help="als and alcf as Globus collections on a loopback emulator (real globus-sdk)"),
    expire_token_every_s: float = typer.Option(30.0, help="mean seconds between revocations of the service account's tokens (0: never; needs --globus)"),
    no_faults: bool = typer.Option(False, "--no-faults", help="the same campaign with no fault at all (the baseline)"),
    steady_s: float = typer.Option(60.0, help="no agent SIGKILL in the last this many seconds of production, so one agent life is long enough to judge its memory"),
    max_datasets: Optional[int] = typer.Option(None, help="stop producing after this many datasets (or at --duration-s)"),
    seed: int = typer.Option(0),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the verdict as JSON here"),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help="default: a new temporary directory"),
):
    """A compressed campaign under faults; prints the verdict and exits non-zero if it is not clean."""
    from .soak import SoakPlan, run_soak

    ws = workspace or Path(tempfile.mkdtemp(prefix="rtlib-soak-"))
    plan = SoakPlan(duration_s=duration_s, dataset_interval_s=dataset_interval_s, link_mbps=link_mbps or None,
                    transfer_fail_rate=fail_rate, transfer_corrupt_rate=corrupt_rate, agent_kill_every_s=kill_every_s or None,
                    preempt_every_s=preempt_every_s or None, malformed_fraction=malformed, seed=seed, globus=globus,
                    token_expire_every_s=(expire_token_every_s or None) if globus else None,
                    agent_steady_s=min(steady_s, duration_s), max_datasets=max_datasets)
    if no_faults:
        plan = plan.without_faults()
    console.print(f"workspace: {ws}")
    verdict = run_soak(cfg.validate(cfg.default_config(ws)), plan)
    t = Table("figure", "value", title="rtlib soak verdict")
    for name in ("datasets", "done", "failed_as_expected", "wall_s", "input_mbps"):
        value = getattr(verdict, name)
        t.add_row(name, f"{value:.1f}" if isinstance(value, float) else str(value))
    for name in ("unexpected_failures", "malformed_not_failed", "stuck", "duplicated_steps", "bad_results"):
        t.add_row(name, str(len(getattr(verdict, name))))
    t.add_row("faults injected", ", ".join(f"{k} {v}" for k, v in verdict.injected.items()) or "none")
    t.add_row("agent RSS MB (settled, last)", " -> ".join(map(str, verdict.agent_rss_mb)))
    t.add_row("agent open fds (settled, last)", " -> ".join(map(str, verdict.agent_fds)))
    if verdict.memory_flat is not None:
        t.add_row(f"longest agent life ({verdict.judged_life_s:.0f} s)",
                  f"RSS {verdict.rss_growth_mb:+.1f} MB ({verdict.rss_slope_mb_per_h:+.1f} MB/h), fds {verdict.fd_growth:+d}: "
                  + ("flat" if verdict.memory_flat else "[red]growing[/]"))
    if verdict.globus:
        t.add_row("globus emulator", ", ".join(f"{k} {v}" for k, v in verdict.globus.items()))
    t.add_row("secret found in", ", ".join(verdict.secret_leaks) or "nowhere")
    t.add_row("not exercised", "; ".join(verdict.not_exercised) or "-")
    t.add_row("verdict", ("[green]clean[/]: " if verdict.ok else "[red]NOT clean[/]: ") + verdict.summary())
    console.print(t)
    if json_out:
        json_out.write_text(verdict.to_json())
    if not verdict.ok:
        err_console.print_json(verdict.to_json())
        raise typer.Exit(1)


@app.command()
def demo(
    jobs: int = typer.Option(12, "--jobs", "-n", help="number of datasets (round robin over aps, als, nsls2)"),
    link_mbps: Optional[float] = typer.Option(276.0, help="shape the link to this many Mbps (0: unshaped); 276 is the published 48-hour average"),
    workload: str = typer.Option("xpcs", help="xpcs (the published campaign's workload), saxs, or noop"),
    size_mb: float = typer.Option(4.0, help="size of each synthetic dataset in MB"),
    bad_inputs: int = typer.Option(0, min=0, help="write the last N datasets truncated, to see how a failed job is reported (xpcs, saxs)"),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help="where to build the demo (default: a new temporary directory)"),
):
    """Build a workspace, produce data at three beamlines, analyse it at 'ALCF', return the results.

    The table and the exit status cover this run's jobs only (a workspace may hold earlier runs);
    the exit status is 1 if any of them did not reach DONE with verified results.
    """
    from .demo import run_demo

    ws = workspace or Path(tempfile.mkdtemp(prefix="rtlib-demo-"))
    settings = cfg.validate(cfg.default_config(ws))
    console.print(f"workspace: {ws}  (link {'unshaped' if not link_mbps else f'{link_mbps:g} Mbps'}, {jobs} jobs of {size_mb:g} MB, workload {workload})")

    with _live_status() as tick:
        result = run_demo(settings, n_jobs=jobs, link_mbps=link_mbps or None, workload=workload, size_mb=size_mb,
                          bad_inputs=bad_inputs, on_tick=tick)
    console.print()

    t = Table("figure", "value", title="rtlib demo")
    for state, n in sorted(result.by_state.items()):
        t.add_row(f"jobs {state}", str(n))
    t.add_row("bytes in / out", f"{result.bytes_in / 1e6:.1f} MB / {result.bytes_out / 1e6:.2f} MB")
    t.add_row("wall time", f"{result.elapsed_s:.1f} s")
    t.add_row("throughput", f"{result.throughput_mbps:.0f} Mbps")
    for stage, med in result.median_latency_s.items():
        t.add_row(f"median {stage}", "-" if med is None else f"{med:.2f} s")
    t.add_row("results verified at the beamlines", str(result.verified_outputs))
    console.print(t)
    console.print(f"results are under {ws}/endpoints/<beamline>/results/; `rtlib status -w {ws}` lists the jobs")
    for jid, why in result.failures.items():
        err_console.print(f"[red]job {jid}:[/] {why}")
    if not result.ok:
        err_console.print(f"[red]{len(result.failures)} job(s) did not finish[/]")
        raise typer.Exit(1)


from .cli_xpcs import synth_xpcs, xpcs_app  # noqa: E402

app.add_typer(xpcs_app, name="xpcs")
synth_app.command("xpcs")(synth_xpcs)

from .cli_laue import laue_app, synth_laue  # noqa: E402

app.add_typer(laue_app, name="laue")
synth_app.command("laue")(synth_laue)

from .cli_em import em_app, synth_em, train_app, view as _view_cmd  # noqa: E402

app.add_typer(em_app, name="em")
app.add_typer(train_app, name="train")
synth_app.command("em")(synth_em)
app.command("view")(_view_cmd)

from .cli_hpc import accounts as _accounts_cmd  # noqa: E402

app.command("accounts")(_accounts_cmd)

from .cli_transfer import login as _login_cmd  # noqa: E402  (commands defined in their own module)
from .cli_transfer import transfer as _transfer_cmd  # noqa: E402

app.command("transfer")(_transfer_cmd)
app.command("login")(_login_cmd)

from .cli_kernel import kernel_app  # noqa: E402

app.add_typer(kernel_app, name="kernel")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import distributed  # noqa: F401  (it configures its loggers on import; quiet them after)

    logging.getLogger("distributed").setLevel(logging.ERROR)  # cluster start/stop chatter
    try:
        app(standalone_mode=True)
    except RtlibError as err:
        err_console.print(f"[red]error:[/] {err}")
        sys.exit(2)


if __name__ == "__main__":
    main()
