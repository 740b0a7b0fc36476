/**
 * The "Launch analysis" dialog.
 *
 * The form has the job's placement (workload, site, queue, account,
 * beamline), its input (endpoint and path) and the workload's parameters,
 * generated from the workload's JSON Schema. Submitting posts the job; when
 * the server refuses it (400) the dialog stays open and shows the server's
 * message at the field it names, or above the form when it names none.
 *
 * It is drawn with JupyterLab's own dialog classes so it looks like every
 * other dialog of the running theme, but it is not an apputils `Dialog`:
 * that one closes on the accept button, before the server has answered.
 */
import { Widget } from '@lumino/widgets';

import {
  ApiError,
  IEndpoint,
  IJob,
  ISite,
  ISubmission,
  IWorkload,
  listEndpoints,
  listJobs,
  listSites,
  listWorkloads,
  submitJob
} from './api';
import { SchemaField, fieldsOf } from './schemaform';

interface IPlainField {
  node: HTMLElement;
  input: HTMLInputElement | HTMLSelectElement;
  message: HTMLElement;
}

function plainField(
  key: string,
  label: string,
  input: HTMLInputElement | HTMLSelectElement,
  help = ''
): IPlainField {
  const node = document.createElement('div');
  node.className = 'rtlib-Field';
  node.dataset.field = key;
  const labelNode = document.createElement('label');
  labelNode.className = 'rtlib-Field-label';
  labelNode.textContent = label;
  input.id = `rtlib-launch-${key}`;
  input.name = key;
  input.classList.add('jp-mod-styled');
  labelNode.htmlFor = input.id;
  const message = document.createElement('div');
  message.className = 'rtlib-Field-message';
  message.setAttribute('role', 'alert');
  node.append(labelNode, input);
  if (help) {
    const helpNode = document.createElement('div');
    helpNode.className = 'rtlib-Field-help';
    helpNode.textContent = help;
    node.append(helpNode);
  }
  node.append(message);
  const clear = () => {
    message.textContent = '';
    node.classList.remove('rtlib-mod-error');
    input.removeAttribute('aria-invalid');
  };
  input.addEventListener('input', clear);
  input.addEventListener('change', clear);
  return { node, input, message };
}

function options(select: HTMLSelectElement, items: Array<[string, string]>): void {
  select.replaceChildren(
    ...items.map(([value, text]) => {
      const option = document.createElement('option');
      option.value = value;
      option.textContent = text;
      return option;
    })
  );
}

export interface ILaunchOptions {
  /** Values to start from (e.g. the workload and input of a job to run again). */
  initial?: Partial<ISubmission>;
}

export class LaunchDialog extends Widget {
  constructor(private readonly launchOptions: ILaunchOptions = {}) {
    super();
    this.addClass('jp-Dialog');
    this.addClass('rtlib-LaunchDialog');
    this.node.setAttribute('role', 'dialog');
    this.node.setAttribute('aria-label', 'Launch analysis');

    const content = document.createElement('div');
    content.className = 'jp-Dialog-content rtlib-LaunchDialog-content';
    const header = document.createElement('div');
    header.className = 'jp-Dialog-header';
    header.textContent = 'Launch analysis';

    this._form = document.createElement('form');
    this._form.className = 'jp-Dialog-body rtlib-LaunchForm';
    this._form.noValidate = true;
    this._form.addEventListener('submit', event => {
      event.preventDefault();
      void this.submit();
    });

    this._general = document.createElement('div');
    this._general.className = 'rtlib-LaunchForm-error';
    this._general.setAttribute('role', 'alert');

    const footer = document.createElement('div');
    footer.className = 'jp-Dialog-footer';
    this._cancelButton = this._button('Cancel', 'jp-mod-reject');
    this._cancelButton.addEventListener('click', () => this.close());
    this._submitButton = this._button('Submit', 'jp-mod-accept');
    this._submitButton.type = 'submit';
    this._submitButton.setAttribute('form', 'rtlib-launch-form');
    this._form.id = 'rtlib-launch-form';
    footer.append(this._cancelButton, this._submitButton);

    content.append(header, this._general, this._form, footer);
    this.node.appendChild(content);
    this.node.addEventListener('keydown', event => {
      if (event.key === 'Escape') {
        event.stopPropagation();
        this.close();
      }
    });
  }

  /** Resolves with the created job, or null when the dialog is closed without one. */
  get done(): Promise<IJob | null> {
    return this._done;
  }

  /** Attach to the page, load the choices, and build the form. */
  async open(): Promise<IJob | null> {
    Widget.attach(this, document.body);
    this._form.textContent = 'Loading…';
    this._submitButton.disabled = true;
    try {
      const [workloads, sites, endpoints, recent] = await Promise.all([
        listWorkloads(),
        listSites(),
        listEndpoints(),
        listJobs({ limit: 100 }).catch(() => null)
      ]);
      this._workloads = workloads;
      this._sites = sites;
      this._build(endpoints, recent?.jobs ?? []);
      this._submitButton.disabled = false;
      this._workload.input.focus();
    } catch (error) {
      this._form.textContent = '';
      this._general.textContent = `Could not load workloads, sites and endpoints: ${(error as Error).message}`;
    }
    return this._done;
  }

  close(): void {
    this._resolve(null);
    this.dispose();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._resolve(null);
    super.dispose();
  }

  /** The request body the form describes. */
  get submission(): ISubmission {
    const params: Record<string, unknown> = {};
    for (const field of this._params) {
      const value = field.value;
      if (value !== undefined) {
        params[field.info.name] = value;
      }
    }
    const body: ISubmission = {
      workload: this._workload.input.value,
      input: { endpoint: this._endpoint.input.value.trim(), path: this._path.input.value.trim() },
      site: this._site.input.value,
      params
    };
    const queue = this._queue.input.value;
    const account = this._account.input.value;
    const beamline = this._beamline.input.value.trim();
    if (queue) {
      body.queue = queue;
    }
    if (account) {
      body.account = account;
    }
    if (beamline) {
      body.beamline = beamline;
    }
    return body;
  }

  async submit(): Promise<void> {
    this._clearErrors();
    if (!this._endpoint.input.value.trim() || !this._path.input.value.trim()) {
      this._showError('input', 'give the input endpoint and the path of the file on it');
      return;
    }
    this._submitButton.disabled = true;
    this._submitButton.classList.add('rtlib-mod-busy');
    try {
      const job = await submitJob(this.submission);
      this._resolve(job);
      this.dispose();
    } catch (error) {
      if (error instanceof ApiError) {
        this._showError(error.field, error.message);
      } else {
        this._showError(null, `Could not reach the server: ${(error as Error).message}`);
      }
    } finally {
      if (!this.isDisposed) {
        this._submitButton.disabled = false;
        this._submitButton.classList.remove('rtlib-mod-busy');
      }
    }
  }

  private _build(endpoints: IEndpoint[], recent: IJob[]): void {
    const initial = this.launchOptions.initial ?? {};
    this._form.textContent = '';

    const workloadSelect = document.createElement('select');
    options(workloadSelect, this._workloads.map(w => [w.name, w.name]));
    this._workload = plainField('workload', 'Workload', workloadSelect);
    this._description = document.createElement('div');
    this._description.className = 'rtlib-Field-help';
    this._workload.node.insertBefore(this._description, this._workload.message);

    const siteSelect = document.createElement('select');
    options(siteSelect, this._sites.map(s => [s.name, `${s.name} (${s.compute})`]));
    this._site = plainField('site', 'Site', siteSelect);
    this._queue = plainField('queue', 'Queue', document.createElement('select'));
    this._account = plainField('account', 'Account', document.createElement('select'), 'node-hours left shown; default: the beamline’s account');

    // Beamlines: those the config gives an endpoint, and those recent jobs used;
    // naming one picks its endpoint as the input's.
    const beamlineInput = document.createElement('input');
    beamlineInput.type = 'text';
    beamlineInput.placeholder = 'optional';
    this._beamline = plainField('beamline', 'Beamline', beamlineInput);
    const owner = new Map<string, string>();
    for (const endpoint of endpoints) {
      for (const beamline of endpoint.beamlines) {
        owner.set(beamline, endpoint.name);
      }
    }
    this._attachList(beamlineInput, 'rtlib-beamlines', [...owner.keys(), ...recent.map(j => j.beamline ?? '')]);

    // The input is on one of the configured endpoints; scratch endpoints are where jobs stage in, not inputs.
    const endpointInput = document.createElement('select');
    const usable = endpoints.filter(e => !e.scratch);
    options(
      endpointInput,
      (usable.length ? usable : endpoints).map(e => {
        const about = [e.facility, e.kind, ...e.beamlines].filter(Boolean);
        return [e.name, about.length ? `${e.name} (${Array.from(new Set(about)).join(', ')})` : e.name];
      })
    );
    this._endpoint = plainField('endpoint', 'Input endpoint', endpointInput);
    beamlineInput.addEventListener('change', () => {
      const endpoint = owner.get(beamlineInput.value.trim());
      if (endpoint) {
        endpointInput.value = endpoint;
      }
    });
    const pathInput = document.createElement('input');
    pathInput.type = 'text';
    pathInput.placeholder = 'path on the endpoint, e.g. raw/scan-001.h5';
    this._path = plainField('input', 'Input path', pathInput);

    const placement = this._fieldset('Job', [
      this._workload.node,
      this._beamline.node,
      this._site.node,
      this._queue.node,
      this._account.node
    ]);
    const input = this._fieldset('Input', [this._endpoint.node, this._path.node]);
    this._paramsBox = document.createElement('div');
    this._paramsBox.className = 'rtlib-LaunchForm-params';
    const params = this._fieldset('Parameters', [this._paramsBox]);
    this._form.append(placement, input, params);

    workloadSelect.addEventListener('change', () => this._renderParams());
    siteSelect.addEventListener('change', () => this._renderSiteChoices());

    if (initial.workload) {
      workloadSelect.value = initial.workload;
    }
    if (initial.site) {
      siteSelect.value = initial.site;
    }
    if (initial.beamline) {
      beamlineInput.value = initial.beamline;
      endpointInput.value = owner.get(initial.beamline) ?? endpointInput.value;
    }
    if (initial.input) {
      endpointInput.value = initial.input.endpoint;
      pathInput.value = initial.input.path;
    }
    this._renderSiteChoices();
    if (initial.queue) {
      this._queue.input.value = initial.queue;
    }
    if (initial.account) {
      this._account.input.value = initial.account;
    }
    this._renderParams(initial.params);
  }

  private _renderSiteChoices(): void {
    const site = this._sites.find(s => s.name === this._site.input.value);
    const queues = site?.queues ?? [];
    options(
      this._queue.input as HTMLSelectElement,
      queues.map(q => [
        q.name,
        `${q.name} — ≤${q.max_nodes} node${q.max_nodes === 1 ? '' : 's'}, ≤${q.max_walltime_min} min${q.preemptable ? ', preemptable' : ''}`
      ])
    );
    const accounts = Object.entries(site?.accounts ?? {});
    options(this._account.input as HTMLSelectElement, [
      ['', 'beamline default'],
      ...accounts.map(([name, hours]) => [name, `${name} (${hours} node-h)`] as [string, string])
    ]);
  }

  private _renderParams(values?: Record<string, unknown>): void {
    const workload = this._workloads.find(w => w.name === this._workload.input.value);
    this._description.textContent = workload?.description ?? '';
    this._params = workload ? fieldsOf(workload.schema).map(info => new SchemaField(info, `params.${info.name}`)) : [];
    this._paramsBox.replaceChildren(...this._params.map(f => f.node));
    if (!this._params.length) {
      this._paramsBox.textContent = 'This workload takes no parameters.';
    }
    for (const field of this._params) {
      const value = values?.[field.info.name];
      if (value === undefined || value === null) {
        continue;
      }
      if (field.info.kind === 'boolean') {
        (field.input as HTMLInputElement).checked = value === true;
      } else if (field.info.kind === 'enum') {
        field.input.value = JSON.stringify(value);
      } else if (Array.isArray(value)) {
        field.input.value = value.join(', ');
      } else {
        field.input.value = typeof value === 'object' ? JSON.stringify(value) : String(value);
      }
    }
  }

  /** Show a message at the named field ("params.x", "source", "site", ...), else above the form. */
  private _showError(field: string | null, message: string): void {
    const target = this._fieldFor(field, message);
    if (target) {
      target.message.textContent = message;
      target.node.classList.add('rtlib-mod-error');
      target.input.setAttribute('aria-invalid', 'true');
      target.node.scrollIntoView({ block: 'nearest' });
      target.input.focus();
    } else {
      this._general.textContent = message;
    }
  }

  private _fieldFor(field: string | null, message = ''): IPlainField | SchemaField | null {
    if (!field) {
      return null;
    }
    if ((field === 'input' || field === 'source') && /^unknown endpoint|configured endpoints/.test(message)) {
      return this._endpoint;
    }
    const byParam = this._params.find(f => f.key === field);
    if (byParam) {
      return byParam;
    }
    if (field === 'params' || field.startsWith('params.')) {
      // A parameter this form does not show: the message goes above the form.
      return null;
    }
    const plain: Record<string, IPlainField> = {
      workload: this._workload,
      site: this._site,
      queue: this._queue,
      account: this._account,
      beamline: this._beamline,
      source: this._path,
      input: this._path,
      'input.path': this._path,
      'input.endpoint': this._endpoint,
      endpoint: this._endpoint
    };
    return plain[field] ?? null;
  }

  private _clearErrors(): void {
    this._general.textContent = '';
    for (const node of Array.from(this._form.querySelectorAll('.rtlib-mod-error'))) {
      node.classList.remove('rtlib-mod-error');
      const message = node.querySelector('.rtlib-Field-message');
      if (message) {
        message.textContent = '';
      }
    }
    for (const input of Array.from(this._form.querySelectorAll('[aria-invalid]'))) {
      input.removeAttribute('aria-invalid');
    }
  }

  private _fieldset(legend: string, children: HTMLElement[]): HTMLFieldSetElement {
    const set = document.createElement('fieldset');
    set.className = 'rtlib-LaunchForm-section';
    const title = document.createElement('legend');
    title.textContent = legend;
    set.append(title, ...children);
    return set;
  }

  private _attachList(input: HTMLInputElement, id: string, values: string[]): void {
    const unique = Array.from(new Set(values.filter(Boolean))).sort();
    if (!unique.length) {
      return;
    }
    const list = document.createElement('datalist');
    list.id = id;
    for (const value of unique) {
      const option = document.createElement('option');
      option.value = value;
      list.appendChild(option);
    }
    input.setAttribute('list', id);
    this.node.appendChild(list);
  }

  private _button(label: string, mod: string): HTMLButtonElement {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = `jp-Dialog-button jp-mod-styled ${mod}`;
    const text = document.createElement('div');
    text.className = 'jp-Dialog-buttonLabel';
    text.textContent = label;
    button.appendChild(text);
    return button;
  }

  private _form: HTMLFormElement;
  private _general: HTMLElement;
  private _cancelButton: HTMLButtonElement;
  private _submitButton: HTMLButtonElement;
  private _description!: HTMLElement;
  private _paramsBox!: HTMLElement;
  private _workload!: IPlainField;
  private _site!: IPlainField;
  private _queue!: IPlainField;
  private _account!: IPlainField;
  private _beamline!: IPlainField;
  private _endpoint!: IPlainField;
  private _path!: IPlainField;
  private _params: SchemaField[] = [];
  private _workloads: IWorkload[] = [];
  private _sites: ISite[] = [];
  private _resolve: (job: IJob | null) => void = () => undefined;
  private _done = new Promise<IJob | null>(resolve => {
    this._resolve = job => {
      resolve(job);
      this._resolve = () => undefined;
    };
  });
}

export function showLaunchDialog(options: ILaunchOptions = {}): Promise<IJob | null> {
  return new LaunchDialog(options).open();
}
