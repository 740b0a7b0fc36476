/**
 * The rtlib REST API as typed functions, and the live event stream.
 *
 * Every request goes through ServerConnection.makeRequest, which adds the
 * server token and the XSRF cookie the Jupyter server expects.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export const API_ROOT = 'rtlib/api';

/** The states a job goes through when nothing goes wrong, in order. */
export const PIPELINE = [
  'CREATED',
  'STAGING_IN',
  'STAGED_IN',
  'RUNNING',
  'RUN_DONE',
  'STAGING_OUT',
  'DONE'
];
/** Every state, as the server's OpenAPI Job.state lists them. HELD: staged, waiting for its account's node-hour budget. */
export const STATES = [...PIPELINE, 'HELD', 'PREEMPTED', 'FAILED', 'CANCELLED'];
export const TERMINAL = new Set(['DONE', 'FAILED', 'CANCELLED']);
export const RETRYABLE = new Set(['FAILED', 'CANCELLED']);

export interface IQueue {
  name: string;
  max_nodes: number;
  max_walltime_min: number;
  preemptable: boolean;
  scheduler_queue: string | null;
  job_walltime_min: number | null;
  queued_limit_s: number;
  extra_directives: string[];
}

export interface ISite {
  name: string;
  compute: string;
  scratch_endpoint: string;
  queues: IQueue[];
  accounts: Record<string, number>;
}

/** A JSON Schema, as much of it as the launch form reads. */
export interface ISchema {
  type?: string | string[];
  title?: string;
  description?: string;
  default?: unknown;
  enum?: unknown[];
  const?: unknown;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  items?: ISchema;
  minItems?: number;
  maxItems?: number;
  properties?: Record<string, ISchema>;
  required?: string[];
  anyOf?: ISchema[];
  oneOf?: ISchema[];
  allOf?: ISchema[];
  $ref?: string;
  $defs?: Record<string, ISchema>;
  definitions?: Record<string, ISchema>;
}

export interface IWorkload {
  name: string;
  description: string;
  schema: ISchema;
}

/** An endpoint as GET endpoints lists it: no roots or credentials. */
export interface IEndpoint {
  name: string;
  kind: 'local' | 'globus';
  facility: string | null;
  /** The beamlines whose data is on it. */
  beamlines: string[];
  /** A compute site's scratch: where jobs stage in, not an input. */
  scratch: boolean;
}

export interface ITransferTotals {
  files: number;
  done: number;
  bytes: number;
}

export interface IJobEvent {
  id: number;
  job_id: number;
  /** The state entered; the server sends it as both `state` and `to_state`, the time as `time` and `timestamp`. */
  to_state?: string;
  from_state?: string | null;
  state?: string;
  reason: string;
  agent?: string | null;
  timestamp?: number;
  time?: number;
}

export interface IJob {
  id: number;
  workload: string;
  params: Record<string, unknown>;
  beamline: string | null;
  source_endpoint: string;
  inputs: string[];
  dest_endpoint: string;
  output_path: string;
  site: string;
  queue: string | null;
  account: string | null;
  priority: number;
  state: string;
  attempts: number;
  max_attempts: number;
  created_at: number;
  updated_at: number;
  age_s: number;
  progress: number;
  summary: Record<string, unknown> | null;
  error: string | null;
  transfers?: Record<string, ITransferTotals>;
  events?: IJobEvent[];
  [field: string]: unknown;
}

export interface IJobPage {
  jobs: IJob[];
  limit: number;
  offset: number;
  /** Jobs the filter matches, all pages. */
  total: number;
  counts: Record<string, number>;
}

export interface IJobFilter {
  state?: string;
  workload?: string;
  beamline?: string;
  limit?: number;
  offset?: number;
  order?: 'oldest' | 'newest';
}

export interface ILocation {
  endpoint: string;
  path: string;
}

export interface ISubmission {
  workload: string;
  input: ILocation;
  site?: string;
  queue?: string;
  account?: string;
  beamline?: string;
  params: Record<string, unknown>;
}

/** A refusal from the server, with the request field it names, if any (e.g. "params.num_q_bins"). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly field: string | null = null
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

export function eventState(event: IJobEvent): string {
  return event.to_state ?? event.state ?? '';
}

export function eventTime(event: IJobEvent): number {
  return event.timestamp ?? event.time ?? 0;
}

export async function requestAPI<T>(
  path: string,
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const url = URLExt.join(settings.baseUrl, API_ROOT, path);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }
  const text = await response.text();
  let data: any = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: text };
    }
  }
  if (!response.ok) {
    const message =
      data?.error ?? data?.message ?? `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, String(message), data?.field ?? null);
  }
  return data as T;
}

function post<T>(path: string, body?: unknown): Promise<T> {
  return requestAPI<T>(path, {
    method: 'POST',
    body: body === undefined ? undefined : JSON.stringify(body),
    headers: { 'Content-Type': 'application/json' }
  });
}

/** A list the server sends bare (`[...]`) or wrapped in an object (`{"sites": [...]}`). */
function unwrap<T>(data: T[] | Record<string, T[]>, key: string): T[] {
  return Array.isArray(data) ? data : data?.[key] ?? [];
}

export async function listSites(): Promise<ISite[]> {
  return unwrap(await requestAPI<ISite[] | Record<string, ISite[]>>('sites'), 'sites');
}

export async function listWorkloads(): Promise<IWorkload[]> {
  return unwrap(await requestAPI<IWorkload[] | Record<string, IWorkload[]>>('workloads'), 'workloads');
}

/** The endpoints of the server's config, with the beamlines whose data each holds. */
export async function listEndpoints(): Promise<IEndpoint[]> {
  return unwrap(await requestAPI<IEndpoint[] | Record<string, IEndpoint[]>>('endpoints'), 'endpoints');
}

export function listJobs(filter: IJobFilter = {}): Promise<IJobPage> {
  const query: Record<string, string> = {};
  for (const [key, value] of Object.entries(filter)) {
    if (value !== undefined && value !== null && value !== '') {
      query[key] = String(value);
    }
  }
  return requestAPI<IJobPage>('jobs' + URLExt.objectToQueryString(query));
}

export function getJob(id: number): Promise<IJob> {
  return requestAPI<IJob>(`jobs/${id}`);
}

export function submitJob(body: ISubmission): Promise<IJob> {
  return post<IJob>('jobs', body);
}

export function cancelJob(id: number): Promise<IJob> {
  return post<IJob>(`jobs/${id}/cancel`);
}

export function retryJob(id: number): Promise<IJob> {
  return post<IJob>(`jobs/${id}/retry`);
}

export type StreamMode = 'connecting' | 'live' | 'polling';

/**
 * The server's job events, live over server-sent events.
 *
 * When the stream cannot be opened or drops, the mode turns to 'polling'
 * (the panel then polls the job list) and the stream is opened again after
 * a back-off, from the last event seen, so nothing is missed.
 */
export class JobEventStream {
  constructor(
    private readonly onEvent: (event: IJobEvent) => void,
    private readonly onMode: (mode: StreamMode) => void
  ) {}

  get mode(): StreamMode {
    return this._mode;
  }

  get lastEventId(): number {
    return this._lastId;
  }

  start(since?: number): void {
    if (since !== undefined) {
      this._lastId = since;
    }
    this._stopped = false;
    this._open();
  }

  stop(): void {
    this._stopped = true;
    window.clearTimeout(this._retryTimer);
    this._close();
  }

  private _open(): void {
    this._close();
    if (typeof EventSource === 'undefined') {
      this._setMode('polling');
      return;
    }
    const settings = ServerConnection.makeSettings();
    // With no `since` the server starts at its newest event: only what happens next is sent.
    const query: Record<string, string> = {};
    if (this._lastId > 0) {
      query.since = String(this._lastId);
    }
    if (settings.token) {
      query.token = settings.token;
    }
    const url =
      URLExt.join(settings.baseUrl, API_ROOT, 'events') +
      URLExt.objectToQueryString(query);
    this._setMode(this._mode === 'polling' ? 'polling' : 'connecting');
    const source = new EventSource(url, { withCredentials: true });
    this._source = source;
    source.onopen = () => {
      this._failures = 0;
      this._setMode('live');
    };
    const receive = (message: MessageEvent) => {
      let event: IJobEvent;
      try {
        event = JSON.parse(message.data);
      } catch {
        return; // a keep-alive or a comment
      }
      if (typeof event.id === 'number' && event.id > this._lastId) {
        this._lastId = event.id;
      }
      this.onEvent(event);
    };
    // Unnamed events arrive as 'message'; this server names its events 'job'.
    source.onmessage = receive;
    source.addEventListener('job', receive as EventListener);
    source.onerror = () => {
      // Reopen ourselves rather than let the browser reconnect with the old `since`.
      // The server also ends a stream after a while on purpose: the first reopen
      // is quick and silent; only when that fails too is the panel told to poll.
      this._close();
      if (this._stopped) {
        return;
      }
      this._failures += 1;
      if (this._failures > 1) {
        this._setMode('polling');
      }
      const delay = this._failures === 1 ? 250 : Math.min(30000, 1000 * 2 ** Math.min(this._failures, 5));
      this._retryTimer = window.setTimeout(() => this._open(), delay);
    };
  }

  private _close(): void {
    if (this._source) {
      this._source.onopen = null;
      this._source.onmessage = null;
      this._source.onerror = null;
      this._source.close();
      this._source = null;
    }
  }

  private _setMode(mode: StreamMode): void {
    if (mode !== this._mode) {
      this._mode = mode;
      this.onMode(mode);
    }
  }

  private _source: EventSource | null = null;
  private _mode: StreamMode = 'connecting';
  private _lastId = 0;
  private _failures = 0;
  private _retryTimer = 0;
  private _stopped = true;
}
