"""ipywidgets for notebooks: launch a job, run an ad-hoc transfer, watch the jobs.

Each widget holds a `rtlib.manager.JobManager` (by default the one of the
usual config) and calls it exactly as the REST API does, so a refusal reads
the same in both places: a bad parameter is reported next to its control.
All work without a browser: set the controls' values and call `.submit()`,
`.start()` or `.refresh()` (what the buttons call).
"""

from __future__ import annotations

import html
import threading
from typing import Any

import ipywidgets as W

from rtlib.manager import ApiError, JobManager
from rtlib.notebooks import parse_cli_value

# the theme's error colour, so a message reads on light and dark themes (JupyterLab sets the variable)
_ERROR_STYLE = "color:var(--jp-error-color1)"


def _manager(manager: JobManager | None) -> JobManager:
    return manager if manager is not None else JobManager.from_config()


def _error_label() -> W.HTML:
    return W.HTML(value="")


def _show_error(label: W.HTML, message: str) -> None:
    label.value = f'<span style="{_ERROR_STYLE}">{html.escape(message)}</span>' if message else ""


# -- parameter controls from a JSON Schema --------------------------------------------
def _alternatives(prop: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The non-null schema of a property and whether null is allowed (pydantic writes Optional as anyOf)."""
    options = prop.get("anyOf") or prop.get("oneOf")
    if not options:
        return prop, prop.get("type") == "null"
    non_null = [o for o in options if o.get("type") != "null"]
    return (non_null[0] if non_null else {}), len(non_null) < len(options)


def _hint(base: dict[str, Any], nullable: bool) -> str:
    parts = []
    low = base.get("minimum", base.get("exclusiveMinimum"))
    high = base.get("maximum", base.get("exclusiveMaximum"))
    if low is not None:
        parts.append(f"{'>' if 'exclusiveMinimum' in base else '≥'} {low}")
    if high is not None:
        parts.append(f"{'<' if 'exclusiveMaximum' in base else '≤'} {high}")
    if nullable:
        parts.append("empty: None")
    return ", ".join(parts)


def control_for(name: str, prop: dict[str, Any]) -> W.Widget:
    """One control for one parameter: by enum, type, and range; nullable numbers are text (empty means None)."""
    base, nullable = _alternatives(prop)
    default = prop.get("default")
    kind, enum = base.get("type"), base.get("enum") or prop.get("enum")
    common = {"description": name, "tooltip": prop.get("description", ""), "style": {"description_width": "180px"},
              "layout": W.Layout(width="420px")}
    if enum:
        return W.Dropdown(options=([None] if nullable else []) + list(enum), value=default, **common)
    if kind == "boolean" and not nullable:
        return W.Checkbox(value=bool(default), indent=False, **common)
    if nullable or kind not in ("integer", "number"):
        value = "" if default is None else str(default)
        return W.Text(value=value, placeholder="None" if nullable else "", **common)
    low, high = base.get("minimum"), base.get("maximum")
    if kind == "integer":
        if low is not None and high is not None:  # a closed range: a slider cannot leave it
            return W.IntSlider(value=default if default is not None else low, min=low, max=high, **common)
        return W.IntText(value=default or 0, **common)
    if low is not None and high is not None:
        return W.FloatSlider(value=default if default is not None else low, min=low, max=high, **common)
    return W.FloatText(value=default or 0.0, **common)


def control_value(control: W.Widget, prop: dict[str, Any]) -> Any:
    """What the control holds, as the parameter value to submit (the server validates it)."""
    if isinstance(control, W.Text):
        base, nullable = _alternatives(prop)
        text = control.value.strip()
        if text == "" and nullable:
            return None
        return text if base.get("type") == "string" else parse_cli_value(text)
    return control.value


# -- launching a job -------------------------------------------------------------------
class LaunchWidget(W.VBox):
    """A form for one job: workload, site, queue, account, beamline, input, and one control per parameter."""

    GENERAL_FIELDS = ("workload", "beamline", "site", "queue", "account", "input")

    def __init__(self, manager: JobManager | None = None, **kwargs):
        self.manager = _manager(manager)
        self.last_job: dict[str, Any] | None = None
        self._workloads = {w["name"]: w for w in self.manager.workloads()}
        self._sites = {s["name"]: s for s in self.manager.sites()}
        settings = self.manager.settings
        style = {"description_width": "180px"}
        lay = W.Layout(width="420px")

        self.workload = W.Dropdown(options=sorted(self._workloads), description="workload", style=style, layout=lay)
        self.beamline = W.Dropdown(options=[("(none)", None)] + [(b, b) for b in sorted(settings.beamlines)], description="beamline",
                                   style=style, layout=lay)
        self.site = W.Dropdown(options=sorted(self._sites), description="site", style=style, layout=lay)
        self.queue = W.Dropdown(description="queue", style=style, layout=lay)
        accounts = sorted(next(iter(self._sites.values()))["accounts"]) if self._sites else []
        self.account = W.Dropdown(options=[("(the beamline's)", None)] + [(a, a) for a in accounts], description="account",
                                  style=style, layout=lay)
        self.input_endpoint = W.Dropdown(options=sorted(settings.endpoints), description="input endpoint", style=style, layout=lay)
        self.input_path = W.Text(description="input path", placeholder="raw/scan-001.h5 (relative to the endpoint root)",
                                 style=style, layout=lay)
        self.errors = {name: _error_label() for name in self.GENERAL_FIELDS}
        self.params: dict[str, W.Widget] = {}
        self.param_errors: dict[str, W.HTML] = {}
        self.params_box = W.VBox()
        self.submit_button = W.Button(description="Submit", button_style="primary", icon="play")
        self.status = W.HTML(value="")

        self.workload.observe(lambda _: self._build_params(), names="value")
        self.site.observe(lambda _: self._fill_queues(), names="value")
        self.submit_button.on_click(lambda _: self.submit())
        self._fill_queues()
        self._build_params()
        rows = [W.HBox([control, self.errors[name]]) for name, control in (
            ("workload", self.workload), ("beamline", self.beamline), ("site", self.site), ("queue", self.queue),
            ("account", self.account))]
        rows.append(W.HBox([W.VBox([self.input_endpoint, self.input_path]), self.errors["input"]]))
        super().__init__(children=[*rows, W.HTML("<b>parameters</b>"), self.params_box, self.submit_button, self.status], **kwargs)

    def _fill_queues(self) -> None:
        site = self._sites.get(self.site.value)
        names = [q["name"] for q in site["queues"]] if site else []
        self.queue.options = [("(the site's first)", None)] + [(n, n) for n in names]
        self.queue.value = None

    def _build_params(self) -> None:
        schema = self._workloads[self.workload.value]["schema"] if self.workload.value else {}
        self._schema = schema.get("properties", {})
        self.params = {name: control_for(name, prop) for name, prop in self._schema.items()}
        self.param_errors = {name: _error_label() for name in self._schema}
        self.params_box.children = [
            W.HBox([control, W.HTML(f"<small>{html.escape(_hint(*_alternatives(self._schema[name])))}</small>"), self.param_errors[name]])
            for name, control in self.params.items()
        ]

    def request_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "workload": self.workload.value,
            "site": self.site.value,
            "input": {"endpoint": self.input_endpoint.value, "path": self.input_path.value.strip()},
            "params": {name: control_value(c, self._schema[name]) for name, c in self.params.items()},
        }
        for key in ("beamline", "queue", "account"):
            if getattr(self, key).value is not None:
                body[key] = getattr(self, key).value
        return body

    def clear_errors(self) -> None:
        for label in [*self.errors.values(), *self.param_errors.values()]:
            _show_error(label, "")
        self.status.value = ""

    def submit(self) -> dict[str, Any] | None:
        """What Submit does: the job as recorded, or None with the refusal shown next to its field."""
        self.clear_errors()
        try:
            job = self.manager.submit(self.request_body())
        except ApiError as err:
            self._show_refusal(err)
            return None
        self.last_job = job
        self.status.value = (f"submitted job <b>{job['id']}</b> ({html.escape(job['workload'])}, "
                             f"queue {html.escape(str(job['queue']))}, account {html.escape(str(job['account']))})")
        return job

    def _show_refusal(self, err: ApiError) -> None:
        field = err.field or ""
        if field.startswith("params.") and field[len("params."):] in self.param_errors:
            _show_error(self.param_errors[field[len("params."):]], err.message)
        elif field in ("input", "source", "inputs"):
            _show_error(self.errors["input"], err.message)
        elif field in self.errors:
            _show_error(self.errors[field], err.message)
        else:
            _show_error(self.status, err.message)


# -- ad-hoc transfers --------------------------------------------------------------------
class TransferWidget(W.VBox):
    """Copy a file or directory between endpoints now; the bar follows the bytes the transfer backend reports."""

    def __init__(self, manager: JobManager | None = None, *, poll_s: float = 0.2, **kwargs):
        self.manager = _manager(manager)
        self.poll_s = poll_s
        self.transfer: dict[str, Any] | None = None
        endpoints = sorted(self.manager.settings.endpoints)
        style, lay = {"description_width": "150px"}, W.Layout(width="420px")
        self.source_endpoint = W.Dropdown(options=endpoints, description="from endpoint", style=style, layout=lay)
        self.source_path = W.Text(description="from path", placeholder="raw/ or raw/scan-001.h5", style=style, layout=lay)
        self.destination_endpoint = W.Dropdown(options=endpoints, description="to endpoint", style=style, layout=lay)
        self.destination_path = W.Text(description="to path", placeholder="end with / to copy into a directory", style=style, layout=lay)
        self.errors = {"source": _error_label(), "destination": _error_label()}
        self.start_button = W.Button(description="Start", button_style="primary", icon="exchange")
        self.progress = W.IntProgress(value=0, min=0, max=1, description="0 %", bar_style="info", layout=W.Layout(width="420px"))
        self.status = W.HTML(value="")
        self._watcher: threading.Thread | None = None
        self.start_button.on_click(lambda _: self.start())
        super().__init__(children=[
            W.HBox([W.VBox([self.source_endpoint, self.source_path]), self.errors["source"]]),
            W.HBox([W.VBox([self.destination_endpoint, self.destination_path]), self.errors["destination"]]),
            self.start_button, self.progress, self.status], **kwargs)

    def start(self) -> dict[str, Any] | None:
        """What Start does: begin the copy and follow it on a thread; None with the refusal shown if refused."""
        for label in self.errors.values():
            _show_error(label, "")
        self.status.value = ""
        try:
            tr = self.manager.start_transfer({
                "source": {"endpoint": self.source_endpoint.value, "path": self.source_path.value.strip()},
                "destination": {"endpoint": self.destination_endpoint.value, "path": self.destination_path.value.strip()}})
        except ApiError as err:
            _show_error(self.errors.get(err.field or "", self.status), err.message)
            return None
        self.transfer = tr
        self.progress.bar_style = "info"
        self.progress.value = 0
        self.progress.max = max(1, tr["bytes_total"])
        self._show(tr)
        self.start_button.disabled = True
        self._watcher = threading.Thread(target=self._follow, args=(tr["id"],), name=f"rtlib-transfer-widget-{tr['id']}", daemon=True)
        self._watcher.start()
        return tr

    def _follow(self, transfer_id: int) -> None:
        try:
            while True:
                tr = self.manager.adhoc.wait(transfer_id, self.poll_s)
                self._show(tr)
                if tr["state"] != "ACTIVE":
                    return
        finally:
            self.start_button.disabled = False

    def _show(self, tr: dict[str, Any]) -> None:
        self.transfer = tr
        self.progress.value = min(tr["bytes_done"], self.progress.max)
        self.progress.description = f"{100 * tr['bytes_done'] / max(1, tr['bytes_total']):.0f} %"
        text = f"{tr['state'].lower()}: {tr['files_done']}/{tr['files_total']} file(s), {tr['bytes_done'] / 1e6:.2f} of {tr['bytes_total'] / 1e6:.2f} MB"
        if tr["state"] == "SUCCEEDED":
            self.progress.bar_style = "success"
            self.progress.value = self.progress.max
        elif tr["state"] == "FAILED":
            self.progress.bar_style = "danger"
            text += "<br>" + "<br>".join(f'<span style="{_ERROR_STYLE}">{html.escape(e)}</span>' for e in tr["errors"][:5])
        self.status.value = text

    def wait(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        """Block until the transfer started last has finished and the bar shows it."""
        if self._watcher is not None:
            self._watcher.join(timeout_s)
        return self.transfer


# -- watching jobs -------------------------------------------------------------------------
class JobMonitor(W.VBox):
    """A table of jobs, refreshed every `interval_s` seconds on a thread once started (`stop()` ends it)."""

    COLUMNS = ("id", "state", "workload", "beamline", "site", "queue", "progress", "age_s", "error")

    def __init__(self, manager: JobManager | None = None, *, interval_s: float = 2.0, limit: int = 100, autostart: bool = True, **kwargs):
        self.manager = _manager(manager)
        self.interval_s = interval_s
        self.limit = limit
        self.rows: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self.refreshes = 0
        self.state = W.Dropdown(options=[("all", None)], description="state")
        self.refresh_button = W.Button(description="Refresh", icon="refresh")
        self.table = W.HTML(value="")
        self.summary = W.HTML(value="")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.refresh_button.on_click(lambda _: self.refresh())
        self.state.observe(lambda _: self.refresh(), names="value")
        super().__init__(children=[W.HBox([self.state, self.refresh_button]), self.summary, self.table], **kwargs)
        self.refresh()
        if autostart:
            self.start()

    def refresh(self) -> list[dict[str, Any]]:
        with self._lock:
            try:
                page = self.manager.list_jobs(state=self.state.value, limit=self.limit)
            except ApiError as err:
                _show_error(self.summary, err.message)
                return self.rows
            except Exception as err:  # the store restarting: keep the last table, say why it is stale
                _show_error(self.summary, f"could not refresh ({type(err).__name__}: {err}); showing the last table")
                return self.rows
            self.rows, self.counts = page["jobs"], page["counts"]
            self.refreshes += 1
            known = sorted(set(self.counts) | {s for _, s in self.state.options if s})
            if [s for _, s in self.state.options if s] != known:
                current = self.state.value
                with self.state.hold_trait_notifications():
                    self.state.options = [("all", None)] + [(s, s) for s in known]
                    self.state.value = current
            self.summary.value = html.escape("  ".join(f"{k}: {v}" for k, v in sorted(self.counts.items())) or "no jobs")
            self.table.value = self._render()
            return self.rows

    def _render(self) -> str:
        head = "".join(f"<th>{c}</th>" for c in self.COLUMNS)
        body = []
        for job in self.rows:
            cells = []
            for c in self.COLUMNS:
                v = job.get(c)
                text = f"{v:.0%}" if c == "progress" else f"{v:.0f}" if c == "age_s" else "" if v is None else str(v)
                cells.append(f"<td>{html.escape(text[:120])}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="rtlib-job-monitor", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
