/**
 * rtlib-jupyter: the "Real-time jobs" side panel, the "Launch analysis"
 * dialog, and their command-palette entries.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, Notification } from '@jupyterlab/apputils';
import { PathExt } from '@jupyterlab/coreutils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { Contents } from '@jupyterlab/services';
import { LabIcon } from '@jupyterlab/ui-components';

import { IJob } from './api';
import { showLaunchDialog } from './launch';
import { JobsPanel } from './panel';

export namespace CommandIDs {
  export const showJobs = 'rtlib:show-jobs';
  export const launch = 'rtlib:launch';
}

const PANEL_ID = 'rtlib-jobs';

export const jobsIcon = new LabIcon({
  name: 'rtlib:jobs',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
    '<g class="jp-icon3" fill="#616161">' +
    '<path d="M3 5h12v2H3zM3 11h8v2H3zM3 17h12v2H3z"/>' +
    '<path d="M17 9l5 3-5 3z"/>' +
    '<circle cx="19" cy="6" r="2"/>' +
    '</g></svg>'
});

/** Files a person most likely wants first when a job's results open. */
const RESULT_PREFERENCE = ['.ipynb', '.md', '.csv', '.json', '.txt', '.png', '.svg', '.html'];

/**
 * Candidate paths, relative to the Jupyter root, of a finished job's results:
 * the server's own answer when it gives one (`result_path`), else the
 * endpoint's directory as the embedded rtlib layout places it when JupyterLab
 * runs in the rtlib workspace.
 */
export function resultCandidates(job: IJob): string[] {
  const out = job.output_path
    .replace('{job_id}', String(job.id))
    .replace('{workload}', job.workload)
    .replace(/^\/+/, '');
  const candidates: string[] = [];
  for (const key of ['result_notebook', 'result_path']) {
    const value = job[key];
    if (typeof value === 'string' && value) {
      candidates.push(value.replace(/^\/+/, ''));
    }
  }
  candidates.push(`endpoints/${job.dest_endpoint}/${out}`, `${job.dest_endpoint}/${out}`);
  return candidates;
}

/** The file to open among a result directory's entries. */
export function pickResultFile(entries: Contents.IModel[]): Contents.IModel | null {
  const files = entries.filter(e => e.type !== 'directory');
  for (const ext of RESULT_PREFERENCE) {
    const match = files
      .filter(f => PathExt.extname(f.path).toLowerCase() === ext)
      .sort((a, b) => a.name.localeCompare(b.name));
    if (match.length) {
      return match[0];
    }
  }
  return null;
}

async function openResult(app: JupyterFrontEnd, docManager: IDocumentManager | null, job: IJob): Promise<void> {
  const contents = app.serviceManager.contents;
  for (const candidate of resultCandidates(job)) {
    let model: Contents.IModel;
    try {
      model = await contents.get(candidate, { content: true });
    } catch {
      continue;
    }
    if (model.type !== 'directory') {
      if (docManager) {
        docManager.openOrReveal(model.path);
      } else {
        await app.commands.execute('docmanager:open', { path: model.path });
      }
      return;
    }
    if (app.commands.hasCommand('filebrowser:go-to-path')) {
      await app.commands.execute('filebrowser:go-to-path', { path: model.path, dontShowBrowser: true });
    }
    const file = pickResultFile(model.content as Contents.IModel[]);
    if (file) {
      if (docManager) {
        docManager.openOrReveal(file.path);
      } else {
        await app.commands.execute('docmanager:open', { path: file.path });
      }
    } else if (app.commands.hasCommand('filebrowser:go-to-path')) {
      await app.commands.execute('filebrowser:go-to-path', { path: model.path });
    }
    return;
  }
  Notification.warning(
    `The results of job ${job.id} are at ${job.dest_endpoint}:${job.output_path}, outside the directory JupyterLab serves.`,
    { autoClose: 8000 }
  );
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'rtlib-jupyter:plugin',
  description: 'Real-time jobs panel and launch dialog for rtlib.',
  autoStart: true,
  optional: [ICommandPalette, IDocumentManager, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    docManager: IDocumentManager | null,
    restorer: ILayoutRestorer | null
  ) => {
    let panel: JobsPanel;
    const launch = async (): Promise<IJob | null> => {
      const job = await showLaunchDialog();
      if (job) {
        Notification.success(`Job ${job.id} (${job.workload}) submitted`, { autoClose: 4000 });
        if (!panel.isDisposed) {
          await panel.refresh();
          panel.highlight(job.id);
        }
      }
      return job;
    };
    panel = new JobsPanel({
      openResult: job => openResult(app, docManager, job),
      // The panel refreshes and highlights the job itself after the dialog.
      launch: () => showLaunchDialog()
    });
    panel.id = PANEL_ID;
    panel.title.icon = jobsIcon;
    panel.title.caption = 'Real-time jobs';
    app.shell.add(panel, 'left', { rank: 650 });
    if (restorer) {
      restorer.add(panel, PANEL_ID);
    }

    app.commands.addCommand(CommandIDs.showJobs, {
      label: 'rtlib: Show real-time jobs',
      caption: 'Show the live table of rtlib analysis jobs',
      icon: jobsIcon,
      execute: () => {
        app.shell.activateById(panel.id);
      }
    });
    app.commands.addCommand(CommandIDs.launch, {
      label: 'rtlib: Launch analysis',
      caption: 'Submit an analysis job on a beamline dataset',
      execute: () => launch()
    });
    if (palette) {
      palette.addItem({ command: CommandIDs.showJobs, category: 'rtlib' });
      palette.addItem({ command: CommandIDs.launch, category: 'rtlib' });
    }
  }
};

export default plugin;
