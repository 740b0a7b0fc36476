"""A real `jupyter lab` for browser tests, with the rtlib server and lab extensions.

Everything is private to one test: a free loopback port, its own Jupyter
config/data/runtime directories, an rtlib workspace, and the lab extension
built from this working tree (found through JUPYTER_PATH, ahead of any copy
an install put into the environment). The server and an `rtlib agent` are
child processes, stopped by their own PIDs when the test ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from helpers import free_port

REPO = Path(__file__).resolve().parents[1]
EXT_DIR = REPO / "jupyter_ext"
LABEXT_BUILD = EXT_DIR / "labextension"
CHROMIUM = "/usr/bin/chromium"
# Without the networking flags chromium keeps calling home, which floods a closed network.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _newest_mtime(path: Path) -> float:
    return max((p.stat().st_mtime for p in path.rglob("*") if p.is_file()), default=0.0)


def ensure_labextension_built() -> Path:
    """The built lab extension, rebuilt with npm when src/ or style/ is newer than the build."""
    package = LABEXT_BUILD / "package.json"
    sources = max(_newest_mtime(EXT_DIR / "src"), _newest_mtime(EXT_DIR / "style"), (EXT_DIR / "package.json").stat().st_mtime)
    if package.exists() and _newest_mtime(LABEXT_BUILD) >= sources:
        return LABEXT_BUILD
    npm = shutil.which("npm")
    assert npm, "npm is needed to build the lab extension (jupyter_ext/); install Node.js >= 20"
    if not (EXT_DIR / "node_modules").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=EXT_DIR, check=True)
    subprocess.run([npm, "run", "build:prod"], cwd=EXT_DIR, check=True)
    assert package.exists(), f"npm run build:prod did not write {package}"
    return LABEXT_BUILD


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}; log:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except Exception as err:  # not up yet
            last = err
        time.sleep(0.3)
    raise TimeoutError(f"jupyter lab not answering {url} after {timeout_s}s ({last}); log:\n{log.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen | None, timeout_s: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class LabServer:
    """`jupyter lab` on 127.0.0.1:<free port> serving `root_dir`, plus (optionally) an rtlib agent.

    The rtlib workspace is `workspace` (embedded default config: endpoints
    aps, als, nsls2 and scratch alcf under it); the lab's root directory is
    the workspace, so a job's results are files JupyterLab can open.
    """

    def __init__(self, base: Path, *, agent: bool = True, use_built_extension: bool = True):
        self.base = Path(base)
        self.workspace = self.base / "ws"
        self.root_dir = self.workspace
        self.port = free_port()
        self.token = uuid.uuid4().hex
        self.agent = agent
        self.use_built_extension = use_built_extension
        self.lab: subprocess.Popen | None = None
        self.agent_proc: subprocess.Popen | None = None
        self.log = self.base / "jupyter-lab.log"
        self.agent_log = self.base / "rtlib-agent.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lab_url(self, path: str = "lab") -> str:
        return f"{self.url}/{path}?token={self.token}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "RTLIB_"))}
        env.update(
            JUPYTER_CONFIG_DIR=str(self.base / "jupyter-config"),
            JUPYTER_DATA_DIR=str(self.base / "jupyter-data"),
            JUPYTER_RUNTIME_DIR=str(self.base / "jupyter-runtime"),
            JUPYTER_PLATFORM_DIRS="1",
            IPYTHONDIR=str(self.base / "ipython"),
            RTLIB_WORKSPACE=str(self.workspace),
            HOME=str(self.base / "home"),
            PYTHONUNBUFFERED="1",
        )
        if self.use_built_extension:
            env["JUPYTER_PATH"] = str(self.base / "jupyter-path")
        return env

    def _prepare(self) -> None:
        for d in ("jupyter-config", "jupyter-data", "jupyter-runtime", "ipython", "home", "lab-settings", "lab-workspaces"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        self.workspace.mkdir(parents=True, exist_ok=True)
        config = {
            "ServerApp": {"jpserver_extensions": {"jupyter_ext": True}},
            "LabServerApp": {"user_settings_dir": str(self.base / "lab-settings"), "workspaces_dir": str(self.base / "lab-workspaces")},
        }
        (self.base / "jupyter-config" / "jupyter_server_config.json").write_text(json.dumps(config))
        # The lab must not open a "what's new"/news prompt over the panel in screenshots.
        settings = self.base / "lab-settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True, exist_ok=True)
        (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        if self.use_built_extension:
            labext = self.base / "jupyter-path" / "labextensions"
            labext.mkdir(parents=True, exist_ok=True)
            (labext / "rtlib-jupyter").symlink_to(ensure_labextension_built(), target_is_directory=True)

    def start(self) -> "LabServer":
        self._prepare()
        cmd = [
            sys.executable, "-m", "jupyter", "lab", "--no-browser",
            "--ip=127.0.0.1", f"--port={self.port}", "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={self.root_dir}", f"--IdentityProvider.token={self.token}",
            "--LabApp.extension_manager=readonly",  # no PyPI look-ups from a test
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers
            cmd.append("--allow-root")
        with open(self.log, "wb") as out:
            self.lab = subprocess.Popen(cmd, cwd=self.base, env=self.env(), stdout=out, stderr=subprocess.STDOUT)
        _wait_http(f"{self.url}/rtlib/api/sites?token={self.token}", 90, self.lab, self.log)
        if self.agent:
            with open(self.agent_log, "wb") as out:
                self.agent_proc = subprocess.Popen(
                    [sys.executable, "-m", "rtlib.cli", "agent", "--no-progress", "--workspace", str(self.workspace)],
                    cwd=self.base, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                )
        return self

    def api(self, path: str, body: dict | None = None, method: str | None = None) -> tuple[int, object]:
        """Call /rtlib/api/<path> with the token (for setting up and checking, not for what the UI does)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.url}/rtlib/api/{path}", data=data, method=method or ("POST" if data is not None else "GET"),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def stop(self) -> None:
        _stop(self.agent_proc)
        _stop(self.lab)

    def logs(self) -> str:
        parts = []
        for log in (self.log, self.agent_log):
            if log.exists():
                parts.append(f"--- {log.name} ---\n{log.read_text(errors='replace')[-6000:]}")
        return "\n".join(parts)

    def __enter__(self) -> "LabServer":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def launch_chromium(playwright):
    """Chromium from the system (Playwright never downloads a browser here)."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)"
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
