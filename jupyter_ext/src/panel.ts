/**
 * The "Real-time jobs" side panel: a live table of jobs with filters and actions.
 *
 * The table is refreshed from GET /rtlib/api/jobs whenever the event stream
 * reports a state change (a burst of events costs one request), and polled
 * while jobs are active (analysis progress is not an event) or while the
 * stream is down. Job details (transfers, events) are fetched for the jobs
 * whose figures they give: active jobs, finished ones once, and opened rows.
 */
import { Widget } from '@lumino/widgets';

import {
  IJob,
  IJobPage,
  JobEventStream,
  PIPELINE,
  RETRYABLE,
  STATES,
  StreamMode,
  TERMINAL,
  cancelJob,
  eventState,
  eventTime,
  getJob,
  listJobs,
  listWorkloads,
  retryJob
} from './api';

export interface IJobsPanelOptions {
  /** Open the results of a finished job in JupyterLab. */
  openResult: (job: IJob) => Promise<void>;
  /** Open the launch dialog; resolves with the new job, if one was made. */
  launch: () => Promise<IJob | null>;
}

const ACTIVE_POLL_MS = 2000;
const FALLBACK_POLL_MS = 3000;
const EVENT_DEBOUNCE_MS = 150;
const PAGE = 200;
const MAX_DETAIL_FETCHES = 20;

export function formatAge(seconds: number): string {
  if (seconds < 0) {
    seconds = 0;
  }
  if (seconds < 120) {
    return `${Math.round(seconds)}s`;
  }
  if (seconds < 7200) {
    return `${Math.round(seconds / 60)}m`;
  }
  if (seconds < 172800) {
    return `${(seconds / 3600).toFixed(1)}h`;
  }
  return `${Math.round(seconds / 86400)}d`;
}

export function formatRate(bytesPerSecond: number | null): string {
  if (bytesPerSecond === null || !Number.isFinite(bytesPerSecond)) {
    return '—';
  }
  const units = ['B/s', 'kB/s', 'MB/s', 'GB/s'];
  let value = bytesPerSecond;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

function formatBytes(bytes: number): string {
  return formatRate(bytes).replace('/s', '');
}

/** Where a job is on the happy path, 0..1, counting analysis progress inside RUNNING. */
export function stageFraction(job: IJob): number {
  // HELD waits between STAGED_IN and RUNNING: its inputs are staged
  const index = PIPELINE.indexOf(job.state === 'HELD' ? 'STAGED_IN' : job.state);
  if (index < 0) {
    return 0;
  }
  const within = job.state === 'RUNNING' ? Math.max(0, Math.min(1, job.progress || 0)) : 0;
  return Math.min(1, (index + within) / (PIPELINE.length - 1));
}

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

export class JobsPanel extends Widget {
  constructor(private readonly options: IJobsPanelOptions) {
    super();
    this.id = 'rtlib-jobs';
    this.addClass('rtlib-JobsPanel');
    this.title.caption = 'Real-time jobs';

    const header = el('div', 'rtlib-JobsPanel-header');
    header.append(el('h2', 'rtlib-JobsPanel-title', 'Real-time jobs'));
    this._modeBadge = el('span', 'rtlib-StreamBadge', 'connecting');
    this._modeBadge.dataset.mode = 'connecting';
    header.append(this._modeBadge);

    const toolbar = el('div', 'rtlib-JobsPanel-toolbar');
    const launch = el('button', 'jp-mod-styled jp-mod-accept rtlib-LaunchButton', 'Launch…');
    launch.title = 'Launch an analysis job';
    launch.addEventListener('click', () => void this._launch());
    const refresh = el('button', 'jp-mod-styled rtlib-RefreshButton', 'Refresh');
    refresh.addEventListener('click', () => void this.refresh());
    toolbar.append(launch, refresh);

    const filters = el('div', 'rtlib-JobsPanel-filters');
    this._stateFilter = this._filter('state', 'State', STATES);
    this._workloadFilter = this._filter('workload', 'Workload', []);
    this._beamlineFilter = this._filter('beamline', 'Beamline', []);
    filters.append(
      this._stateFilter.parentElement!,
      this._workloadFilter.parentElement!,
      this._beamlineFilter.parentElement!
    );

    this._counts = el('div', 'rtlib-JobsPanel-counts');
    this._error = el('div', 'rtlib-JobsPanel-error');
    this._error.setAttribute('role', 'alert');

    const scroller = el('div', 'rtlib-JobsPanel-scroller');
    this._table = el('table', 'rtlib-JobsTable');
    const head = el('thead');
    const headRow = el('tr');
    for (const [label, title] of [
      ['Job', 'id, workload and beamline'],
      ['State', 'state and progress through stage-in, analysis and stage-out'],
      ['Rate · age', 'input bytes per second of the job’s wall time so far; time since it was submitted'],
      ['', '']
    ]) {
      const th = el('th', '', label);
      th.title = title;
      headRow.append(th);
    }
    head.append(headRow);
    this._body = el('tbody');
    this._table.append(head, this._body);
    this._empty = el('div', 'rtlib-JobsPanel-empty', 'No jobs yet. Launch one.');
    scroller.append(this._table, this._empty);

    this.node.append(header, toolbar, filters, this._counts, this._error, scroller);

    this._stream = new JobEventStream(
      event => {
        const state = eventState(event);
        const cached = this._details.get(event.job_id);
        if (cached && state && cached.state !== state && !TERMINAL.has(cached.state)) {
          this._details.delete(event.job_id);
        }
        if (cached && TERMINAL.has(state)) {
          this._details.delete(event.job_id);
        }
        this._scheduleRefresh();
      },
      mode => this._setMode(mode)
    );
  }

  get jobs(): readonly IJob[] {
    return this._jobs;
  }

  get streamMode(): StreamMode {
    return this._stream.mode;
  }

  /** Load the job list now (coalescing with a refresh already under way). */
  async refresh(): Promise<void> {
    if (this._inFlight) {
      this._again = true;
      return this._inFlight;
    }
    this._inFlight = this._load();
    try {
      await this._inFlight;
    } finally {
      this._inFlight = null;
    }
    if (this._again) {
      this._again = false;
      await this.refresh();
    }
  }

  /** Scroll to a job's row and mark it, e.g. right after it was launched. */
  highlight(jobId: number): void {
    this._highlighted = jobId;
    this._render();
    const row = this._body.querySelector(`tr[data-job-id="${jobId}"]`);
    row?.scrollIntoView({ block: 'nearest' });
  }

  dispose(): void {
    this._stop();
    super.dispose();
  }

  protected onAfterShow(): void {
    this._start();
  }

  protected onAfterAttach(): void {
    if (this.isVisible) {
      this._start();
    }
  }

  protected onBeforeHide(): void {
    this._stop();
  }

  protected onBeforeDetach(): void {
    this._stop();
  }

  private _start(): void {
    if (this._running) {
      return;
    }
    this._running = true;
    this._stream.start();
    void this._loadChoices();
    void this.refresh();
    this._ticker = window.setInterval(() => this._tick(), 1000);
  }

  private _stop(): void {
    this._running = false;
    this._stream.stop();
    window.clearInterval(this._ticker);
    window.clearTimeout(this._pollTimer);
    window.clearTimeout(this._debounce);
  }

  private _scheduleRefresh(): void {
    window.clearTimeout(this._debounce);
    this._debounce = window.setTimeout(() => void this.refresh(), EVENT_DEBOUNCE_MS);
  }

  private _schedulePoll(): void {
    window.clearTimeout(this._pollTimer);
    if (!this._running) {
      return;
    }
    const active = this._jobs.some(j => !TERMINAL.has(j.state));
    let delay = 0;
    if (this._stream.mode !== 'live') {
      delay = active ? ACTIVE_POLL_MS : FALLBACK_POLL_MS;
    } else if (active) {
      delay = ACTIVE_POLL_MS;
    }
    if (delay) {
      this._pollTimer = window.setTimeout(() => void this.refresh(), delay);
    }
  }

  private async _load(): Promise<void> {
    let page: IJobPage;
    try {
      page = await listJobs({
        state: this._stateFilter.value || undefined,
        workload: this._workloadFilter.value || undefined,
        beamline: this._beamlineFilter.value || undefined,
        limit: PAGE,
        order: 'newest'
      });
    } catch (error) {
      this._error.textContent = `Could not load jobs: ${(error as Error).message}`;
      this._schedulePoll();
      return;
    }
    this._error.textContent = '';
    this._jobs = page.jobs;
    this._counts_data = page.counts;
    this._total = page.total ?? page.jobs.length;
    this._loadedAt = Date.now();
    for (const job of page.jobs) {
      this._remember(job);
    }
    this._render();
    await this._loadDetails();
    this._schedulePoll();
  }

  /** Details give the bytes moved (for the rate) and the event history. */
  private async _loadDetails(): Promise<void> {
    const wanted = this._jobs
      .filter(job => {
        const cached = this._details.get(job.id);
        if (this._expanded.has(job.id) || !TERMINAL.has(job.state)) {
          return true;
        }
        return !cached || cached.state !== job.state;
      })
      .slice(0, MAX_DETAIL_FETCHES);
    if (!wanted.length) {
      return;
    }
    const results = await Promise.allSettled(wanted.map(job => getJob(job.id)));
    results.forEach((result, i) => {
      if (result.status === 'fulfilled') {
        this._details.set(wanted[i].id, result.value);
      }
    });
    this._render();
  }

  private async _loadChoices(): Promise<void> {
    try {
      const workloads = await listWorkloads();
      this._setOptions(this._workloadFilter, workloads.map(w => w.name));
    } catch {
      // the filter keeps the names seen in jobs
    }
  }

  private _remember(job: IJob): void {
    if (job.workload && !this._seenWorkloads.has(job.workload)) {
      this._seenWorkloads.add(job.workload);
      this._setOptions(this._workloadFilter, Array.from(this._seenWorkloads));
    }
    if (job.beamline && !this._seenBeamlines.has(job.beamline)) {
      this._seenBeamlines.add(job.beamline);
      this._setOptions(this._beamlineFilter, Array.from(this._seenBeamlines));
    }
  }

  private _setOptions(select: HTMLSelectElement, values: string[]): void {
    const current = select.value;
    const known = new Set(Array.from(select.options).map(o => o.value));
    for (const value of values.sort()) {
      if (!known.has(value)) {
        const option = el('option', '', value);
        option.value = value;
        select.append(option);
      }
    }
    select.value = current;
  }

  private _filter(name: string, label: string, values: string[]): HTMLSelectElement {
    const wrap = el('label', 'rtlib-Filter');
    wrap.append(el('span', 'rtlib-Filter-label', label));
    const select = el('select', 'jp-mod-styled');
    select.name = name;
    select.dataset.filter = name;
    const all = el('option', '', 'all');
    all.value = '';
    select.append(all);
    for (const value of values) {
      const option = el('option', '', value);
      option.value = value;
      select.append(option);
    }
    select.addEventListener('change', () => void this.refresh());
    wrap.append(select);
    return select;
  }

  private _setMode(mode: StreamMode): void {
    this._modeBadge.dataset.mode = mode;
    this._modeBadge.textContent = mode === 'live' ? 'live' : mode === 'polling' ? 'polling' : 'connecting';
    this._modeBadge.title =
      mode === 'live'
        ? 'updated live from the server’s event stream'
        : 'the event stream is not reachable: the list is polled';
    this._schedulePoll();
  }

  private _tick(): void {
    const elapsed = (Date.now() - this._loadedAt) / 1000;
    for (const cell of Array.from(this._body.querySelectorAll<HTMLElement>('.rtlib-JobRow-age'))) {
      const job = this._jobs.find(j => String(j.id) === cell.dataset.jobId);
      if (job && !TERMINAL.has(job.state)) {
        cell.textContent = formatAge(job.age_s + elapsed);
      }
    }
  }

  /** Input bytes over the job's wall time (to now, or to its end once finished). */
  private _rate(job: IJob): number | null {
    const detail = this._details.get(job.id);
    const bytes = (job.transfers ?? detail?.transfers)?.in?.bytes;
    if (!bytes) {
      return null;
    }
    const end = TERMINAL.has(job.state) ? job.updated_at : job.created_at + job.age_s + (Date.now() - this._loadedAt) / 1000;
    const seconds = end - job.created_at;
    return seconds > 0 ? bytes / seconds : null;
  }

  private _render(): void {
    const counts = Object.entries(this._counts_data).filter(([, n]) => n > 0);
    this._counts.replaceChildren(
      ...counts.map(([state, n]) => {
        const chip = el('span', `rtlib-CountChip rtlib-state-${state}`, `${state} ${n}`);
        chip.dataset.state = state;
        return chip;
      })
    );
    if (this._total > this._jobs.length) {
      const more = el('span', 'rtlib-JobsPanel-shown', `newest ${this._jobs.length} of ${this._total} shown`);
      more.dataset.total = String(this._total);
      this._counts.append(more);
    }
    this._empty.style.display = this._jobs.length ? 'none' : '';
    const rows: HTMLElement[] = [];
    for (const job of this._jobs) {
      rows.push(this._row(job));
      if (this._expanded.has(job.id)) {
        rows.push(this._detailRow(job));
      }
    }
    this._body.replaceChildren(...rows);
  }

  private _row(job: IJob): HTMLTableRowElement {
    const row = el('tr', 'rtlib-JobRow');
    row.dataset.jobId = String(job.id);
    row.dataset.state = job.state;
    if (job.id === this._highlighted) {
      row.classList.add('rtlib-mod-highlighted');
    }
    if (this._expanded.has(job.id)) {
      row.classList.add('rtlib-mod-expanded');
    }
    row.addEventListener('click', event => {
      if ((event.target as HTMLElement).closest('button')) {
        return;
      }
      if (this._expanded.has(job.id)) {
        this._expanded.delete(job.id);
      } else {
        this._expanded.add(job.id);
        void this._loadDetails();
      }
      this._render();
    });

    const name = el('td', 'rtlib-JobRow-name');
    name.append(el('span', 'rtlib-JobRow-id', `#${job.id}`), el('span', 'rtlib-JobRow-workload', job.workload));
    if (job.beamline) {
      name.append(el('span', 'rtlib-JobRow-beamline', job.beamline));
    }
    name.title = `${job.source_endpoint}:${job.inputs.join(', ')}`;

    const state = el('td', 'rtlib-JobRow-stage');
    const badge = el('span', `rtlib-StateBadge rtlib-JobRow-state rtlib-state-${job.state}`, job.state);
    state.append(badge);
    const bar = el('div', 'rtlib-StageBar');
    const fill = el('div', 'rtlib-StageBar-fill');
    const fraction = stageFraction(job);
    fill.style.width = `${Math.round(fraction * 100)}%`;
    bar.append(fill);
    bar.setAttribute('role', 'progressbar');
    bar.setAttribute('aria-valuemin', '0');
    bar.setAttribute('aria-valuemax', '100');
    bar.setAttribute('aria-valuenow', String(Math.round(fraction * 100)));
    const index = PIPELINE.indexOf(job.state);
    bar.title =
      index >= 0
        ? `stage ${index + 1} of ${PIPELINE.length}${job.state === 'RUNNING' ? `, analysis ${Math.round((job.progress || 0) * 100)}%` : ''}`
        : job.error ?? job.state;
    state.append(bar);
    if (job.error && (job.state === 'FAILED' || job.state === 'CANCELLED' || job.state === 'HELD')) {
      badge.title = job.error;
    }

    // Rate and age share a cell: the side bar is narrow.
    const figures = el('td', 'rtlib-JobRow-figures');
    const rate = el('span', 'rtlib-JobRow-rate', formatRate(this._rate(job)));
    rate.title = 'input bytes per second of wall time';
    const age = el('span', 'rtlib-JobRow-age', formatAge(job.age_s));
    age.dataset.jobId = String(job.id);
    age.title = `submitted ${new Date(job.created_at * 1000).toLocaleString()}`;
    figures.append(rate, age);

    const actions = el('td', 'rtlib-JobRow-actions');
    if (!TERMINAL.has(job.state)) {
      actions.append(this._action('Cancel', 'rtlib-CancelButton', `Cancel job ${job.id}`, () => cancelJob(job.id)));
    }
    if (RETRYABLE.has(job.state)) {
      actions.append(this._action('Retry', 'rtlib-RetryButton', `Run job ${job.id} again from the start`, () => retryJob(job.id)));
    }
    if (job.state === 'DONE') {
      actions.append(
        this._action('Open', 'rtlib-OpenButton', `Open the results of job ${job.id}`, () =>
          this.options.openResult(this._details.get(job.id) ?? job)
        )
      );
    }
    row.append(name, state, figures, actions);
    return row;
  }

  private _detailRow(job: IJob): HTMLTableRowElement {
    const detail = this._details.get(job.id) ?? job;
    const row = el('tr', 'rtlib-JobDetail');
    row.dataset.jobId = String(job.id);
    const cell = el('td');
    cell.colSpan = 4;
    const list = el('dl', 'rtlib-JobDetail-list');
    const add = (term: string, value: string) => {
      if (value) {
        list.append(el('dt', '', term), el('dd', '', value));
      }
    };
    add('input', `${detail.source_endpoint}:${detail.inputs.join(', ')}`);
    add('results', `${detail.dest_endpoint}:${detail.output_path.replace('{job_id}', String(job.id)).replace('{workload}', job.workload)}`);
    add('site', [detail.site, detail.queue, detail.account].filter(Boolean).join(' · '));
    add('attempts', `${detail.attempts} of ${detail.max_attempts}`);
    const transfers = detail.transfers;
    if (transfers) {
      for (const [direction, t] of Object.entries(transfers)) {
        if (t.files) {
          add(`stage-${direction}`, `${t.done}/${t.files} files, ${formatBytes(t.bytes)}`);
        }
      }
    }
    const params = Object.entries(detail.params ?? {}).filter(([, v]) => v !== null);
    add('params', params.map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(', '));
    if (detail.summary) {
      add('summary', Object.entries(detail.summary).map(([k, v]) => `${k}=${typeof v === 'number' ? Number(v.toPrecision(4)) : JSON.stringify(v)}`).join(', '));
    }
    if (detail.error) {
      const dd = el('dd', 'rtlib-JobDetail-error', detail.error);
      list.append(el('dt', '', 'error'), dd);
    }
    cell.append(list);
    if (detail.events?.length) {
      const events = el('ol', 'rtlib-JobDetail-events');
      for (const event of detail.events.slice(-12)) {
        const item = el('li');
        const when = new Date(eventTime(event) * 1000).toLocaleTimeString([], { hour12: false });
        item.append(el('span', 'rtlib-JobDetail-time', when), el('span', `rtlib-StateBadge rtlib-state-${eventState(event)}`, eventState(event)), el('span', 'rtlib-JobDetail-reason', event.reason));
        events.append(item);
      }
      cell.append(events);
    }
    row.append(cell);
    return row;
  }

  private _action(label: string, className: string, title: string, act: () => Promise<unknown>): HTMLButtonElement {
    const button = el('button', `jp-mod-styled rtlib-ActionButton ${className}`, label);
    button.title = title;
    button.addEventListener('click', async event => {
      event.stopPropagation();
      button.disabled = true;
      try {
        await act();
        this._error.textContent = '';
      } catch (error) {
        this._error.textContent = `${label} failed: ${(error as Error).message}`;
      } finally {
        button.disabled = false;
      }
      void this.refresh();
    });
    return button;
  }

  private async _launch(): Promise<void> {
    const job = await this.options.launch();
    if (job) {
      await this.refresh();
      this.highlight(job.id);
    }
  }

  private _stream: JobEventStream;
  private _modeBadge: HTMLElement;
  private _stateFilter: HTMLSelectElement;
  private _workloadFilter: HTMLSelectElement;
  private _beamlineFilter: HTMLSelectElement;
  private _counts: HTMLElement;
  private _error: HTMLElement;
  private _table: HTMLTableElement;
  private _body: HTMLTableSectionElement;
  private _empty: HTMLElement;
  private _jobs: IJob[] = [];
  private _counts_data: Record<string, number> = {};
  private _total = 0;
  private _details = new Map<number, IJob>();
  private _expanded = new Set<number>();
  private _seenWorkloads = new Set<string>();
  private _seenBeamlines = new Set<string>();
  private _highlighted: number | null = null;
  private _loadedAt = Date.now();
  private _inFlight: Promise<void> | null = null;
  private _again = false;
  private _running = false;
  private _ticker = 0;
  private _pollTimer = 0;
  private _debounce = 0;
}
