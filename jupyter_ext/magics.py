"""The %rtlib line magic: submit, watch, wait for and cancel jobs from a notebook.

Loaded with ``%load_ext jupyter_ext`` (the "Python 3 (rtlib)" kernel loads it
at start). ``%rtlib --help`` and ``%rtlib SUBCOMMAND --help`` print the usage.
The magics use the usual rtlib config (``$RTLIB_CONFIG``, ``./rtlib.toml``,
else the embedded default in ``$RTLIB_WORKSPACE``); ``%rtlib config`` switches.

Jobs advance only while an agent runs for their site: ``%rtlib agent start``
runs one as a child process of the kernel (``%rtlib agent stop`` ends it, and
it ends with the kernel); ``%rtlib wait`` does not start one by itself.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser

from rtlib.errors import RtlibError
from rtlib.manager import ApiError
from rtlib.states import TERMINAL, State

from .agent_process import AgentProcess


class _HelpShown(Exception):
    """argparse printed the help (or a usage message) and wants to exit: end the magic quietly instead."""


class _Parser(MagicArgumentParser):
    """IPython's magic-argument parser, with plain argparse help (its own formats help for docstrings)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs.setdefault("add_help", True)
        super().__init__(*args, **kwargs)

    def exit(self, status: int = 0, message: str | None = None):  # argparse calls sys.exit here: not in a kernel
        if message:
            print(message, file=sys.stderr)
        raise _HelpShown(status)


def build_parser() -> _Parser:
    parser = _Parser(prog="%rtlib", add_help=True, description="Submit and follow rtlib jobs from a notebook.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("submit", add_help=True, help="record a job (an agent of its site runs it)",
                       description="Record a job; prints and returns its id.")
    p.add_argument("workload", help="workload name, e.g. saxs (see `rtlib workloads`)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE", help="a workload parameter (repeatable)")
    p.add_argument("-i", "--input", action="append", default=[], metavar="ENDPOINT:PATH", required=True,
                   help="an input file or directory (repeatable, one endpoint)")
    p.add_argument("--beamline", help="beamline submitting (its account is charged)")
    p.add_argument("--site", default="local", help="site that runs the job (default: local)")
    p.add_argument("--queue", help="queue of the site (default: its first)")
    p.add_argument("--account", help="project or project::suballocation")
    p.add_argument("--dest", metavar="ENDPOINT:PATH", help="where results go (default: results/<workload>/job-<id> on the input endpoint)")
    p.add_argument("--priority", type=int, default=0)

    p = sub.add_parser("status", add_help=True, help="jobs with their state, or one job with its events")
    p.add_argument("job", nargs="?", type=int, help="one job id")
    p.add_argument("--state", help="only jobs in this state")
    p.add_argument("--limit", type=int, default=50)

    p = sub.add_parser("wait", add_help=True, help="block until a job is DONE, FAILED or CANCELLED",
                       description="Wait for a job (default: the last one submitted here); fails unless it ends DONE.")
    p.add_argument("job", nargs="?", type=int, help="job id (default: the last job submitted from this kernel)")
    p.add_argument("--timeout-s", type=float, default=None, help="give up after this many seconds")
    p.add_argument("--poll-s", type=float, default=0.5, help=argparse_suppress())

    p = sub.add_parser("cancel", add_help=True, help="cancel a job")
    p.add_argument("job", type=int)

    p = sub.add_parser("agent", add_help=True, help="start or stop an rtlib agent in the background of this kernel")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--site", default="local")

    p = sub.add_parser("config", add_help=True, help="choose the site config and workspace the magics use",
                       description="Without options: show which config and store the magics use.")
    p.add_argument("--config", help="site config TOML")
    p.add_argument("--workspace", help="workspace directory")
    return parser


def argparse_suppress() -> str:
    return argparse.SUPPRESS


@magics_class
class RtlibMagics(Magics):
    def __init__(self, shell=None):
        super().__init__(shell)
        self.parser = build_parser()
        self.config_path: str | None = None
        self.workspace: str | None = None
        self._manager = None
        self.agent: AgentProcess | None = None
        self.last_job: int | None = None

    @property
    def manager(self):
        if self._manager is None:
            from rtlib.manager import JobManager

            self._manager = JobManager.from_config(self.config_path, self.workspace)
        return self._manager

    @line_magic
    def rtlib(self, line: str = "") -> Any:
        try:
            args = self.parser.parse_argstring(line)
        except _HelpShown:
            return None
        if args.command is None:
            self.parser.print_help()
            return None
        try:
            return getattr(self, f"_cmd_{args.command}")(args)
        except ApiError as err:
            raise UsageError(f"{err.field}: {err.message}" if err.field else err.message) from None
        except RtlibError as err:
            raise UsageError(str(err)) from None

    rtlib.__doc__ = build_parser().format_help()

    # -- subcommands --------------------------------------------------------------
    def _cmd_submit(self, args) -> int:
        from rtlib.notebooks import parse_cli_params

        try:
            params = parse_cli_params(args.param, args.workload)
        except RtlibError:
            params = parse_cli_params(args.param)  # unknown workload: the manager names it below
        body = {"workload": args.workload, "source": args.input, "params": params, "site": args.site, "priority": args.priority}
        for key in ("beamline", "queue", "account", "dest"):
            if getattr(args, key):
                body[key] = getattr(args, key)
        job = self.manager.submit(body)
        self.last_job = job["id"]
        print(f"submitted job {job['id']} ({job['workload']} on {job['source_endpoint']}:{','.join(job['inputs'])}, "
              f"site {job['site']}, queue {job['queue']})")
        return job["id"]

    def _cmd_status(self, args) -> None:
        if args.job is not None:
            job = self.manager.get_job(args.job)
            print(f"job {job['id']} {job['state']} {job['workload']} attempts {job['attempts']}/{job['max_attempts']} "
                  f"progress {job['progress']:.0%}")
            if job["error"]:
                print(f"error: {job['error']}")
            for e in job["events"]:
                print(f"  {time.strftime('%H:%M:%S', time.localtime(e['time']))}  {e['from_state'] or '':>11} -> {e['state']:<11} {e['reason']}")
            return
        page = self.manager.list_jobs(state=args.state, limit=args.limit)
        print(f"{'id':>5}  {'state':<11} {'workload':<12} {'beamline':<10} {'progress':>8}  error")
        for j in page["jobs"]:
            print(f"{j['id']:>5}  {j['state']:<11} {j['workload']:<12} {j['beamline'] or '':<10} {j['progress']:>8.0%}  {(j['error'] or '')[:80]}")
        print("  ".join(f"{k}: {v}" for k, v in sorted(page["counts"].items())) or "no jobs")

    def _cmd_wait(self, args) -> str:
        job_id = args.job if args.job is not None else self.last_job
        if job_id is None:
            raise UsageError("no job to wait for: give its id (%rtlib wait 12) or submit one first")
        deadline = None if args.timeout_s is None else time.monotonic() + args.timeout_s
        started, seen = time.monotonic(), None
        while True:
            job = self.manager.get_job(job_id)
            if job["state"] != seen:
                seen = job["state"]
                print(f"job {job_id}: {seen} ({time.monotonic() - started:.1f} s)")
            if State(seen) in TERMINAL:
                break
            if self.agent is not None:
                self.agent.check_alive()
            if deadline is not None and time.monotonic() > deadline:
                hint = "" if self.agent is not None and self.agent.running else " Is an agent running? `%rtlib agent start` runs one here."
                raise UsageError(f"job {job_id} is still {seen} after {args.timeout_s:g} s.{hint}")
            time.sleep(args.poll_s)
        if seen != State.DONE.value:
            raise UsageError(f"job {job_id} ended {seen}: {job['error'] or 'no reason recorded'}; "
                             f"`%rtlib status {job_id}` shows its events, `rtlib retry {job_id}` starts it again")
        return seen

    def _cmd_cancel(self, args) -> str:
        job = self.manager.cancel(args.job)
        print(f"job {job['id']} {job['state']}")
        return job["state"]

    def _cmd_agent(self, args) -> None:
        if args.action == "start":
            if self.agent is None or self.agent.site != args.site:
                if self.agent is not None:
                    self.agent.stop()
                self.agent = AgentProcess(self.manager.settings.workspace, config=self.config_path,
                                          workspace_arg=self.workspace, site=args.site)
            pid = self.agent.start()
            print(f"agent for site {args.site!r} running as process {pid}; log: {self.agent.log_path}")
        elif args.action == "stop":
            if self.agent is None or not self.agent.running:
                print("no agent started from this kernel is running")
                return
            code = self.agent.stop()
            print(f"agent stopped (exit status {code})")
        else:
            running = self.agent is not None and self.agent.running
            print(f"agent {'running as process ' + str(self.agent.proc.pid) if running else 'not running'}"
                  + (f"; log: {self.agent.log_path}" if self.agent is not None and self.agent.log_path else ""))

    def _cmd_config(self, args) -> None:
        if args.config is not None or args.workspace is not None:
            if self.agent is not None and self.agent.running:
                raise UsageError("stop the agent first (`%rtlib agent stop`): it uses the current config")
            self.config_path = args.config or self.config_path
            self.workspace = args.workspace or self.workspace
            if self._manager is not None:
                self._manager.close()
                self._manager = None
        m = self.manager
        print(f"workspace {m.settings.workspace}; job store {m.store!r}")

    def close(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        if self._manager is not None:
            self._manager.close()
            self._manager = None


_loaded: dict[int, RtlibMagics] = {}


def load_magics(ipython) -> RtlibMagics:
    magics = RtlibMagics(ipython)
    ipython.register_magics(magics)
    _loaded[id(ipython)] = magics
    return magics


def unload_magics(ipython) -> None:
    magics = _loaded.pop(id(ipython), None)
    if magics is not None:
        magics.close()
