"""Site config: TOML validated with pydantic.

With no config file, an embedded default describes one workspace directory
holding three beamline endpoints (``aps``, ``als``, ``nsls2``), the
facility scratch (``alcf``), the job store, and a ``local`` site whose
compute is a dask LocalCluster. The config file is looked up in
``--config``, then ``$RTLIB_CONFIG``, then ``./rtlib.toml``.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from . import safetext as st
from .errors import ConfigError

# anchored for pydantic's `pattern=` (Rust regex: `$` is the very end); Python code matches with fullmatch
ACCOUNT_RE = re.compile(rf"^{st.ACCOUNT.regex}$")
DEFAULT_BEAMLINE_ENDPOINTS = ("aps", "als", "nsls2")
MAX_WALLTIME_MIN = 366 * 24 * 60  # a queue limit beyond a year is a typo (and would overflow the walltime text)

# every name and string of the config that can reach a worker job script, checked as it is loaded
Name = Annotated[str, AfterValidator(st.validator(st.NAME))]
AccountName = Annotated[str, AfterValidator(st.validator(st.ACCOUNT))]
SchedulerName = Annotated[str, AfterValidator(st.validator(st.SCHEDULER_NAME))]
Directive = Annotated[str, AfterValidator(st.validator(st.DIRECTIVE))]
ShellLine = Annotated[str, AfterValidator(st.validator(st.SHELL_LINE))]
Word = Annotated[str, AfterValidator(st.validator(st.WORD))]
WordPath = Annotated[Path, AfterValidator(st.validator(st.WORD))]
Host = Annotated[str, AfterValidator(st.validator(st.HOST))]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Facility(_Strict):
    title: str = ""


class Endpoint(_Strict):
    kind: Literal["local", "globus"] = "local"
    facility: str | None = None
    root: Path | None = Field(None, description="directory root of a local endpoint")
    collection_id: str | None = Field(None, description="Globus collection UUID of a globus endpoint")
    base_path: str = "/"
    link_mbps: float | None = Field(None, gt=0, description="shape copies from this endpoint to this rate")
    data_access: bool = Field(False, description="a globus endpoint that is a mapped GCS collection: request its data_access scope")

    @model_validator(mode="after")
    def _kind_fields(self) -> "Endpoint":
        if self.kind == "local" and self.root is None:
            raise ValueError("a local endpoint needs `root` (a directory path)")
        if self.kind == "globus" and not self.collection_id:
            raise ValueError("a globus endpoint needs `collection_id` (a collection UUID)")
        return self


class ServiceAccount(_Strict):
    """A Globus confidential client. The secret comes from an env var or a 0600 file, never the config."""

    client_id: str
    secret_env: str | None = None
    secret_file: Path | None = None
    client_secret: SecretStr | None = Field(None, description="discouraged: prefer secret_env or secret_file")


class Beamline(_Strict):
    facility: str
    endpoint: str
    allowed_endpoints: list[str] | None = Field(
        None,
        description="endpoints its jobs and its service account may use; default its own `endpoint` plus every site's "
        "scratch_endpoint (its own endpoint is always allowed)",
    )
    account: AccountName | None = Field(None, description="project or project::suballocation charged for its jobs")
    service_account: ServiceAccount | None = None


class Queue(_Strict):
    name: Name
    max_nodes: int = Field(1, ge=1, description="most nodes rtlib holds in this queue at once, over all accounts (batch jobs x nodes_per_job)")
    nodes_per_job: int = Field(1, ge=1, description="nodes in each worker batch job; one dask worker runs on each node")
    max_walltime_min: float = Field(60, gt=0, le=MAX_WALLTIME_MIN, allow_inf_nan=False)
    preemptable: bool = False
    scheduler_queue: SchedulerName | None = Field(None, description="the queue/partition name the scheduler knows; default `name`")
    job_walltime_min: float | None = Field(None, gt=0, le=MAX_WALLTIME_MIN, allow_inf_nan=False, description="walltime of each worker batch job; default max_walltime_min")
    queued_limit_s: float = Field(600, gt=0, allow_inf_nan=False, description="a worker batch job still queued after this is cancelled and submitted again")
    max_stuck_resubmits: int = Field(3, ge=0, description="stuck batch jobs cancelled and resubmitted in a row before the waiting jobs fail")
    extra_directives: list[Directive] = Field(default_factory=list, description="more #PBS/#SBATCH lines (without the prefix)")

    @model_validator(mode="after")
    def _job_walltime_fits(self) -> "Queue":
        if self.job_walltime_min is not None and self.job_walltime_min > self.max_walltime_min:
            raise ValueError(f"job_walltime_min {self.job_walltime_min:g} exceeds max_walltime_min {self.max_walltime_min:g} of queue {self.name!r}")
        if self.nodes_per_job > self.max_nodes:
            raise ValueError(f"nodes_per_job {self.nodes_per_job} exceeds max_nodes {self.max_nodes} of queue {self.name!r}: one batch job would not fit")
        return self


class Resources(_Strict):
    """What one analysis task of a workload asks for: checked against the queues and the budget."""

    nodes: int = Field(1, ge=1)
    walltime_min: float = Field(30, gt=0, le=MAX_WALLTIME_MIN, allow_inf_nan=False)


class QueuePolicy(_Strict):
    """Which queue a job goes to when it names none (see rtlib/compute/policy.py)."""

    urgent_min_priority: int = Field(0, description="jobs with priority >= this are real-time (demand queues first); lower ones are bulk (preemptable first)")
    default: Resources = Field(default_factory=Resources)
    workloads: dict[str, Resources] = Field(default_factory=dict, description="per-workload requests overriding `default`")


class JobqueueOptions(_Strict):
    """How dask-jobqueue batch jobs look at a PBS or Slurm site (`nodes_per_job` nodes per batch job, one dask worker per node)."""

    system: Literal["generic", "polaris", "aurora"] = Field("generic", description="adds the PBS resource lines these ALCF systems need")
    cores_per_node: int = Field(1, ge=1, description="dask worker threads per node")
    memory_per_node_gb: float = Field(1.0, gt=0, allow_inf_nan=False)
    prologue: list[ShellLine] = Field(default_factory=list, description="shell lines run before the worker (module load, export ...)")
    filesystems: Word | None = Field(None, description="PBS `-l filesystems=` value, e.g. home:eagle (required on Polaris/Aurora)")
    python: Word | None = Field(None, description="python on the compute nodes; default the agent's interpreter")
    scheduler_host: Host | None = Field(None, description="address the workers connect back to; default dask's choice")
    interface: Host | None = Field(None, description="network interface for workers and scheduler (e.g. hsn0)")
    commands_dir: WordPath | None = Field(None, description="directory holding sbatch/qsub etc.; default PATH")
    log_directory: WordPath | None = None
    idle_timeout_s: float = Field(10, gt=0, allow_inf_nan=False, description="an idle worker leaves (and stops being charged) after this")
    lost_worker_timeout_s: float = Field(2, gt=0, allow_inf_nan=False, description="a vanished worker's batch job is replaced after this")
    submit_retries: int = Field(1, ge=0, description="failed submissions retried before the waiting jobs fail")
    death_timeout_s: float = Field(60, gt=0, allow_inf_nan=False, description="a worker that cannot reach the agent's scheduler exits after this")
    node_launcher: ShellLine | None = Field(None, description="starts the worker once per node of a multi-node batch job, `{nodes}` filled in; "
                                      "default `srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1` (Slurm), "
                                      "`mpiexec -n {nodes} --ppn 1` (PBS)")
    walltime_margin_s: float = Field(60, ge=0, allow_inf_nan=False, description="a worker leaves (dask --lifetime) this long before its batch job's walltime ends")


class Site(_Strict):
    compute: Literal["local", "pbs", "slurm"] = "local"
    scratch_endpoint: str
    workers: int = Field(2, ge=1, description="LocalCluster worker processes")
    threads_per_worker: int = Field(1, ge=1)
    queues: list[Queue] = Field(default_factory=lambda: [Queue(name="demand")])
    policy: QueuePolicy = Field(default_factory=QueuePolicy)
    jobqueue: JobqueueOptions = Field(default_factory=JobqueueOptions)

    def queue(self, name: str) -> Queue:
        for q in self.queues:
            if q.name == name:
                return q
        raise ConfigError(f"this site has no queue {st.shown(name)}; its queues: {', '.join(q.name for q in self.queues)}")


class Account(_Strict):
    node_hours: float = Field(ge=0)
    scheduler_account: SchedulerName | None = Field(None, description="what goes to the scheduler's -A; default the project part of the name")


class AgentSettings(_Strict):
    lease_s: float = Field(30, gt=0, description="a job's lease; another agent may take it after this")
    poll_s: float = Field(0.05, gt=0)
    batch_bytes: int = Field(15 * 10**9, gt=0, description="bytes per transfer batch")
    batch_max_items: int = Field(1000, gt=0)
    transfers_in_flight: int = Field(4, ge=1)
    transfer_retries: int = Field(5, ge=0, description="attempts per file copy after the first")
    max_attempts: int = Field(3, ge=1, description="runs per job before it is FAILED")


class GlobusSettings(_Strict):
    """How the Globus transfer backend polls and gives up; batch sizes are in [agent]."""

    native_client_id: str | None = Field(None, description="native-app client id for `rtlib login` (scientists)")
    token_file: Path | None = Field(None, description="token cache (mode 0600); default <workspace>/globus-tokens.json")
    poll_initial_s: float = Field(2.0, gt=0, description="first wait before polling a task; doubles up to poll_max_s")
    poll_max_s: float = Field(60.0, gt=0)
    stall_limit_s: float = Field(1800.0, gt=0, description="a task paused or without progress this long is cancelled")
    task_retries: int = Field(2, ge=0, description="resubmissions of a cancelled or failed task's unfinished files")
    network_retries: int = Field(5, ge=0, description="retries of a Globus API call after network errors")


class Settings(_Strict):
    workspace: Path
    store_url: str | None = None
    facilities: dict[str, Facility] = Field(default_factory=dict)
    endpoints: dict[str, Endpoint]
    beamlines: dict[Name, Beamline] = Field(default_factory=dict)
    sites: dict[Name, Site]
    accounts: dict[AccountName, Account] = Field(default_factory=dict)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    globus: GlobusSettings = Field(default_factory=GlobusSettings)

    @field_validator("store_url")
    @classmethod
    def _store_url(cls, value: str | None) -> str | None:
        from . import store_url  # sqlalchemy: only when a URL is given

        if value is not None:
            try:
                store_url.check(value)
            except ConfigError as err:  # pydantic reports ValueErrors, with the key (never the URL: `check` does not echo it)
                why = str(err).removeprefix("store_url: ").removeprefix("store_url ")
                raise ValueError(f"{why} (the config's store_url or $RTLIB_STORE_URL)") from None
        return value

    @model_validator(mode="after")
    def _references(self) -> "Settings":
        # every dangling name at once, one per line, so a person fixes the file in one go
        problems = []

        def check(key: str, name: str | None, known: dict, what: str, *, optional_table: bool = False) -> None:
            if name is None or name in known or (optional_table and not known):
                return
            problems.append(f"{key}: unknown {what} {name!r}; known: {', '.join(sorted(known)) or 'none configured'}")

        for name, ep in self.endpoints.items():
            check(f"endpoints.{name}.facility", ep.facility, self.facilities, "facility", optional_table=True)
        for name, bl in self.beamlines.items():
            check(f"beamlines.{name}.facility", bl.facility, self.facilities, "facility", optional_table=True)
            check(f"beamlines.{name}.endpoint", bl.endpoint, self.endpoints, "endpoint")
            for i, ep_name in enumerate(bl.allowed_endpoints or []):
                check(f"beamlines.{name}.allowed_endpoints[{i}]", ep_name, self.endpoints, "endpoint")
            # an unlisted account would refuse every job of the beamline at submit time (jobs.submit)
            check(f"beamlines.{name}.account", bl.account, self.accounts, "account", optional_table=True)
        for name, site in self.sites.items():
            check(f"sites.{name}.scratch_endpoint", site.scratch_endpoint, self.endpoints, "endpoint")
        if problems:
            raise ValueError("\n".join(problems))
        scratch = sorted({site.scratch_endpoint for site in self.sites.values()})
        for bl in self.beamlines.values():  # spell out the default, own endpoint first (shown by `rtlib config show`)
            listed = scratch if bl.allowed_endpoints is None else bl.allowed_endpoints
            bl.allowed_endpoints = list(dict.fromkeys([bl.endpoint, *listed]))
        return self

    def __repr_args__(self):  # repr(settings) in a log or a failed test's output: no store password
        for name, value in super().__repr_args__():
            if name == "store_url" and value:
                from .store_url import redact

                value = redact(value)
            yield name, value

    @property
    def store(self) -> str:
        return self.store_url or f"sqlite:///{self.workspace / 'rtlib.db'}"

    def endpoint(self, name: str) -> Endpoint:
        from .errors import EndpointError

        try:
            return self.endpoints[name]
        except KeyError:
            raise EndpointError(f"unknown endpoint {st.shown(name)}; configured endpoints: {', '.join(sorted(self.endpoints))}") from None

    def site(self, name: str) -> Site:
        try:
            return self.sites[name]
        except KeyError:
            raise ConfigError(f"unknown site {st.shown(name)}; configured sites: {', '.join(sorted(self.sites))}") from None


def default_config(workspace: Path | str | None = None) -> dict:
    """The embedded default, as the raw dict a TOML file would give."""
    ws = Path(workspace or os.environ.get("RTLIB_WORKSPACE") or Path.home() / ".local/share/rtlib").expanduser()
    endpoints = {name: {"kind": "local", "root": str(ws / "endpoints" / name), "facility": name} for name in DEFAULT_BEAMLINE_ENDPOINTS}
    endpoints["alcf"] = {"kind": "local", "root": str(ws / "endpoints" / "alcf"), "facility": "alcf"}
    return {
        "workspace": str(ws),
        "facilities": {
            "aps": {"title": "Advanced Photon Source"},
            "als": {"title": "Advanced Light Source"},
            "nsls2": {"title": "National Synchrotron Light Source II"},
            "alcf": {"title": "Argonne Leadership Computing Facility"},
        },
        "endpoints": endpoints,
        "beamlines": {
            f"{name}-demo": {"facility": name, "endpoint": name, "account": f"rtlib::{name}"}
            for name in DEFAULT_BEAMLINE_ENDPOINTS
        },
        "sites": {
            "local": {
                "compute": "local",
                "scratch_endpoint": "alcf",
                "workers": 2,
                "queues": [
                    {"name": "demand", "max_nodes": 1, "max_walltime_min": 60, "preemptable": False},
                    {"name": "preemptable", "max_nodes": 1, "max_walltime_min": 1440, "preemptable": True},
                ],
            }
        },
        "accounts": {"rtlib": {"node_hours": 1000}} | {f"rtlib::{n}": {"node_hours": 100} for n in DEFAULT_BEAMLINE_ENDPOINTS},
    }


def _key_part(part: str | int) -> str:
    """One step of an error's key; a refused name (a dict key) is shown escaped, never raw."""
    return str(part) if isinstance(part, int) or st.NAME.fullmatch(part) or part == "[key]" else st.shown(part)


def _format_errors(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(_key_part(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key; check its spelling against docs/config.md"
        elif e["type"] == "literal_error" and "expected" in e.get("ctx", {}):
            msg = f"got {st.shown(e['input'])}; allowed: {e['ctx']['expected']}"
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            if not e["loc"]:  # the cross-reference check: each line already starts with its key
                lines += [f"{source}: {line}" for line in msg.splitlines()]
                continue
        lines.append(f"{source}: {key}: {msg}")
    return "invalid config\n" + "\n".join(lines)


def validate(raw: dict, source: str = "<embedded default>") -> Settings:
    try:
        return Settings.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


def config_path(explicit: Path | str | None = None) -> Path | None:
    if explicit:
        return Path(explicit)
    if os.environ.get("RTLIB_CONFIG"):
        return Path(os.environ["RTLIB_CONFIG"])
    local = Path("rtlib.toml")
    return local if local.exists() else None


def load(path: Path | str | None = None, *, workspace: Path | str | None = None) -> Settings:
    """Load the effective config: the file if one is found, else the embedded default.

    ``$RTLIB_STORE_URL`` overrides ``store_url`` (keeps a database password out of the file).
    """
    found = config_path(path)
    store_url = os.environ.get("RTLIB_STORE_URL")
    if found is None:
        raw = default_config(workspace)
        if store_url:
            raw["store_url"] = store_url
        return validate(raw)
    try:
        raw = tomllib.loads(found.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{found}: config file not found; pass an existing file or unset RTLIB_CONFIG") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{found}: not valid TOML: {err}") from None
    if workspace is not None:
        raw["workspace"] = str(workspace)
    raw.setdefault("workspace", default_config()["workspace"])
    if store_url:
        raw["store_url"] = store_url
    return validate(raw, str(found))


def redacted(settings: Settings) -> dict:
    """The effective config as plain data with every secret replaced by '***'."""
    data = settings.model_dump(mode="json")
    for bl in data.get("beamlines", {}).values():
        sa = bl.get("service_account")
        if sa and sa.get("client_secret"):
            sa["client_secret"] = "***"
    if settings.store_url:
        from .store_url import redact

        data["store_url"] = redact(settings.store_url)  # the user info's password and ?password= (psycopg reads both)
    return data


def ensure_workspace(settings: Settings) -> None:
    """Create the workspace and every local endpoint root."""
    settings.workspace.mkdir(parents=True, exist_ok=True)
    for ep in settings.endpoints.values():
        if ep.kind == "local" and ep.root is not None:
            ep.root.mkdir(parents=True, exist_ok=True)
